"""The table format: the check or flow report as rich tables on a terminal, plain text off one.

A run of several targets: each target under a title line (its report, or the error that
stopped it), then a summary table of the targets. A run of one target prints exactly what
`write` prints for its report."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..results import (
    CheckReport,
    FlowReport,
    GraphReport,
    MemoryReport,
    TargetRun,
    worst_exit_code,
)
from ._runs import problem_message, verdict
from .console import make_console

# report type -> the module and function that render it (imported when used)
RENDERERS = {
    CheckReport: ("check_table", "render_check"),
    FlowReport: ("flow_table", "render_flow"),
    MemoryReport: ("memory_table", "render_memory"),
    GraphReport: ("graph_table", "render_graph"),
}

VERDICT_STYLE = {"pass": "green", "FAIL": "bold red", "not judged": "yellow"}


def write(report: CheckReport | FlowReport, out: TextIO, width: int | None = None) -> None:
    _render(report, make_console(file=out, width=width))


def _render(report: CheckReport | FlowReport, console: Console) -> None:
    module, function = RENDERERS[type(report)]
    render = getattr(importlib.import_module(f"{__package__}.{module}"), function)
    render(report, console)


def write_runs(
    runs: Sequence[TargetRun], out: TextIO, width: int | None = None, *, configured: bool = False
) -> None:
    console = make_console(file=out, width=width)
    several = len(runs) > 1 or configured  # a configured run: titles and a summary
    for i, run in enumerate(runs):
        if several:
            if i:
                console.print()
            console.rule(Text(f"{run.command} {run.target}", style="bold"), align="left")
        if run.report is not None:
            _render(run.report, console)
        problem = problem_message(run)
        # a report tells its own interruption and nondeterminism; an error has only this
        if problem and (run.report is None or run.error):
            label = "internal error in gradtool" if run.exit_code == 3 else verdict(run)
            console.print(Text.assemble((f"{label}: ", "bold red"), problem))
    if several:
        console.print()
        console.print(summary_table(runs))


def summary_table(runs: Sequence[TargetRun]) -> Table:
    """One row per target: command, verdict, exit code, seconds; the worst code below."""
    table = Table(pad_edge=False, title="gradtool: summary", title_justify="left")
    table.add_column("target", overflow="fold", ratio=1)
    table.add_column("command")
    table.add_column("result")
    table.add_column("exit", justify="right")
    table.add_column("seconds", justify="right")
    for run in runs:
        word = verdict(run)
        table.add_row(
            Text(run.target),
            run.command,
            Text(word, style=VERDICT_STYLE.get(word, "bold yellow")),
            str(run.exit_code),
            f"{run.seconds:.1f}",
        )
    passed = sum(r.passed for r in runs)
    table.caption = f"{passed} of {len(runs)} passed; exit code {worst_exit_code(runs)}"
    table.caption_justify = "left"
    return table

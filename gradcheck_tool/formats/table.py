"""The table format: the check or flow report as rich tables on a terminal, plain text off one."""

from __future__ import annotations

import importlib
from typing import TextIO

from ..results import CheckReport, FlowReport
from .console import make_console

# report type -> the module and function that render it (imported when used)
RENDERERS = {
    CheckReport: ("check_table", "render_check"),
    FlowReport: ("flow_table", "render_flow"),
}


def write(report: CheckReport | FlowReport, out: TextIO, width: int | None = None) -> None:
    module, function = RENDERERS[type(report)]
    render = getattr(importlib.import_module(f"{__package__}.{module}"), function)
    render(report, make_console(file=out, width=width))


def write_runs(runs, out, width=None):  # PLACEHOLDER until the formats helper's merge
    for run in runs:
        if run.report is not None:
            write(run.report, out, width)

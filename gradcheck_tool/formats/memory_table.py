"""The memory report as text: the modules as a tree in forward order, the totals and the
peak, the checkpointing candidates, and with --apply-checkpoint the advice verified. A pure
function of the result dataclasses; 80 columns without cutting a number or a name: a
module's type goes on a line of its own, below its name, where the two do not fit on one."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..results import MemoryReport, ModuleMemory
from ..stopping import STOPPED_BY

MAX_ROWS = 40  # deeper levels are left out beyond this many modules (the JSON has them all)
LEGEND = (  # two lines at 80 columns
    "saved: bytes its operations saved for the backward; held: bytes its forward made "
    "that are still alive at the backward (each charged to the module that made it)"
)


CANDIDATE_LEGEND = (  # two lines at 80 columns
    "FLOPs: the block's forward, recomputed in the backward (torch's flop counter);\n"
    "extra: of the step's forward+backward FLOPs; ms: its forward, median of 3 steps"
)
TIME_FALLBACK = "*: torch counts no FLOPs for it: extra is its share of the measured time"


def flops(n: int) -> str:
    """A count with an SI prefix, 3 digits: 885k, 75.5M, 1.2G."""
    value = float(n)
    for unit in ("", "k", "M", "G", "T"):
        if value < 999.5 or unit == "T":
            return f"{value:.3g}{unit}" if unit else str(int(value))
        value /= 1000
    return str(n)


def human(n: int | None) -> str:
    """Bytes in B, KiB, MiB or GiB, three significant figures."""
    if n is None:
        return ""
    size = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            # three figures, never an exponent: 1000 MiB is "1000 MiB", not "1e+03 MiB"
            text = f"{size:.0f} {unit}" if unit == "B" or size >= 999.5 else f"{size:.3g} {unit}"
            return ("-" if n < 0 else "") + text
        size /= 1024
    return str(n)  # unreachable


def shown_depth(modules: tuple[ModuleMemory, ...]) -> int | None:
    """The deepest level that keeps the table within MAX_ROWS (None: every level fits)."""
    deepest = max((m.depth for m in modules), default=0)
    for depth in range(deepest, -1, -1):
        if sum(1 for m in modules if m.depth <= depth) <= MAX_ROWS:
            return None if depth == deepest else depth
    return 0


def label(indent: int, name: str, kind: str, width: int) -> str:
    """`name kind` indented; where that is wider than `width`, the kind on a line of its own
    below the name, indented two more (or less, where that makes it fit; a word longer than
    the column is folded by the table, never cut)."""
    one = " " * indent + f"{name} {kind}"
    if len(one) <= width:
        return one
    below = max(min(indent + 2, width - len(kind)), 0)  # less indented where that fits it
    return " " * indent + name + "\n" + " " * below + kind


def _rest_width(rows: list[list[str]], titles: tuple[str, ...]) -> int:
    """The width the right-aligned columns take: each its widest cell and 2 of padding."""
    return sum(
        max([len(title)] + [len(row[i]) for row in rows]) + 2 for i, title in enumerate(titles)
    )


def _table(first: str, width: int, titles: tuple[str, ...]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column(first, overflow="fold", min_width=min(len(first), width), max_width=width)
    for title in titles:
        table.add_column(title, justify="right", no_wrap=True)
    return table


def render_memory(report: MemoryReport, console: Console) -> None:
    console.print(
        Text.assemble(
            ("gradtool memory ", "bold"),
            report.target,
            f"  ({report.found_by})" if report.found_by else "",
        )
    )
    batch = f", batch {report.batch_size}" if report.batch_size is not None else ""
    console.print(f"{report.device}, {report.dtype}{batch}; one training step, train mode")
    depth = shown_depth(report.modules)
    shown = [m for m in report.modules if depth is None or m.depth <= depth]
    titles = ("saved", "held", "params", "fwd ms", "bwd ms")
    numbers = [
        [
            human(m.saved_bytes),
            human(m.held_bytes),
            human(m.param_bytes),
            f"{m.forward_ms:.2f}",
            f"{m.backward_ms:.2f}",
        ]
        for m in shown
    ]
    width = max(console.width - _rest_width(numbers, titles), 12)
    table = _table("module", width, titles)
    for m, row in zip(shown, numbers):
        last = m.name.rpartition(".")[2] if m.name else "(model)"
        table.add_row(label(2 * m.depth, last, m.type, width), *row)
    console.print(table)
    console.print(Text(LEGEND, style="dim"))
    if depth is not None:
        console.print(
            f"[dim]modules to depth {depth} of {max(m.depth for m in report.modules)} "
            f"shown ({MAX_ROWS} rows at most); --format json has every module[/dim]"
        )
    console.print(
        f"saved for the backward {human(report.saved_bytes_total)} "
        f"(by the loss {human(report.loss_saved_bytes)}); held, measured "
        f"{human(report.held_bytes)}"
    )
    console.print(
        f"params {human(report.param_bytes_total)}; grads {human(report.grad_bytes_total)}; "
        f"inputs {human(report.input_bytes)}"
    )
    console.print(f"peak {human(report.peak_bytes)} ({report.peak_source})")
    if report.held_cuda_bytes is not None:
        console.print(f"CUDA memory_allocated over the forward {human(report.held_cuda_bytes)}")
    if report.checkpoint_candidates:
        console.print(Text("checkpointing candidates", style="bold"))
        titles = ("saved", "frees", "FLOPs", "extra", "ms")
        numbers = [
            [
                human(c.saved_bytes),
                human(c.predicted_saving_bytes),
                flops(c.recompute_flops) if c.cost_from == "flops" else "-",
                f"{100 * c.extra_compute:.1f}%" + ("" if c.cost_from == "flops" else "*"),
                f"{c.recompute_ms:.2f}",
            ]
            for c in report.checkpoint_candidates
        ]
        width = max(console.width - _rest_width(numbers, titles), 12)
        cands = _table("block", width, titles)
        for c, row in zip(report.checkpoint_candidates, numbers):
            count = len(c.modules)
            kind = f"{count} × {c.type}" if count > 1 else c.type
            cands.add_row(label(0, c.name, kind, width), *row)
        console.print(cands)
        console.print(Text(CANDIDATE_LEGEND, style="dim"))
        if any(c.cost_from != "flops" for c in report.checkpoint_candidates):
            console.print(Text(TIME_FALLBACK, style="dim"))
    else:
        console.print("no checkpointing candidate: checkpointing no submodule would free memory")
    ck = report.checkpoint
    if ck is not None:
        style = "green" if ck.check_passed else "bold red"
        console.print(Text(f"checkpointed: {', '.join(ck.blocks)}", style="bold"))
        console.print(
            f"saving predicted {human(ck.predicted_saving_bytes)}, measured "
            f"{human(ck.measured_saving_bytes)} (held {human(ck.held_before)} -> "
            f"{human(ck.held_after)})"
        )
        if ck.peak_before is not None:
            console.print(f"peak {human(ck.peak_before)} -> {human(ck.peak_after)}")
        console.print(
            f"step {ck.step_ms_before:.1f} ms -> {ck.step_ms_after:.1f} ms "
            "(measured: median of 5 each, taken in turn)"
        )
        console.print(Text("PASS" if ck.check_passed else "FAIL", style), end=" ")
        for line in ck.check_summary.split("; "):  # a line each: 80 columns
            console.print(Text(line, style))
        if ck.check_seconds is not None:
            share = (
                f" of the run's {report.seconds:.0f} s"
                if report.seconds >= ck.check_seconds
                else ""
            )
            console.print(
                f"gradtool check of the checkpointed copy: {ck.check_seconds:.0f} s{share}"
            )
    for w in report.warnings:
        console.print(Text(f"warning: {w}", style="yellow"))
    if report.interrupted:
        console.print(Text(f"stopped by {STOPPED_BY[report.interrupted]}", style="yellow"))

"""The memory report as text: the modules as a tree in forward order, the totals and the
peak, the checkpointing candidates, and with --apply-checkpoint the advice verified. A pure
function of the result dataclasses; 80 columns without cutting a number."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..results import MemoryReport, ModuleMemory
from ..stopping import STOPPED_BY

MAX_ROWS = 40  # deeper levels are left out beyond this many modules (the JSON has them all)
NAME_WIDTH = 30


def human(n: int | None) -> str:
    """Bytes in B, KiB, MiB or GiB, three significant figures."""
    if n is None:
        return ""
    size = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            text = f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
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


def _label(m: ModuleMemory) -> str:
    last = m.name.rpartition(".")[2] if m.name else "(model)"
    text = "  " * m.depth + f"{last} {m.type}"
    if len(text) > NAME_WIDTH:
        text = text[: NAME_WIDTH - 1] + "…"
    return text


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
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("module", no_wrap=True, max_width=NAME_WIDTH)
    for title in ("saved", "held", "params", "fwd ms", "bwd ms"):
        table.add_column(title, justify="right", no_wrap=True)
    for m in report.modules:
        if depth is not None and m.depth > depth:
            continue
        table.add_row(
            _label(m),
            human(m.saved_bytes),
            human(m.held_bytes),
            human(m.param_bytes),
            f"{m.forward_ms:.2f}",
            f"{m.backward_ms:.2f}",
        )
    console.print(table)
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
        cands = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        cands.add_column("block", no_wrap=True, overflow="fold")
        for title in ("saved", "frees", "recompute", "extra"):
            cands.add_column(title, justify="right", no_wrap=True)
        for c in report.checkpoint_candidates:
            cands.add_row(
                c.name if len(c.name) + len(c.type) > NAME_WIDTH + 5 else f"{c.name} {c.type}",
                human(c.saved_bytes),
                human(c.predicted_saving_bytes),
                f"{c.recompute_ms:.2f} ms",
                f"{100 * c.extra_compute:.1f}%",
            )
        console.print(cands)
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
        console.print(f"step {ck.step_ms_before:.1f} ms -> {ck.step_ms_after:.1f} ms")
        console.print(Text("PASS" if ck.check_passed else "FAIL", style), end=" ")
        for line in ck.check_summary.split("; "):  # a line each: 80 columns
            console.print(Text(line, style))
    for w in report.warnings:
        console.print(Text(f"warning: {w}", style="yellow"))
    if report.interrupted:
        console.print(Text(f"stopped by {STOPPED_BY[report.interrupted]}", style="yellow"))

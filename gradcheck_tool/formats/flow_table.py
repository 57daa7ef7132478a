"""The flow report as text: header, the per-layer table, the trend of a multi-step run, and
the findings panel. Pure functions of the result dataclasses; a finding's colour comes from
its rule's severity in the findings registry."""

from __future__ import annotations

import math

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..engines.flow import findings as finding_rules
from ..engines.flow.findings import Severity
from ..engines.flow.thresholds import FlowThresholds
from ..results import FlowReport, LayerStats

# a finding's colour in the table and the panel comes from its rule's severity
SEVERITY_STYLE = {
    Severity.ERROR: "bold red",
    Severity.WARNING: "yellow",
    Severity.NOTICE: "magenta",
}
BARS = " ▁▂▃▄▅▆▇█"
# a fraction is coloured when it is past (red) or halfway to (yellow) the findings' threshold
THRESHOLDS = FlowThresholds()


def kind_style(kind: str) -> str:
    """The style of a kind of finding ("" for a kind no rule has)."""
    rule = finding_rules.rule_for(kind)
    return SEVERITY_STYLE[rule.severity] if rule is not None else ""


def _is_error(kind: str) -> bool:
    rule = finding_rules.rule_for(kind)
    return rule is not None and rule.severity is Severity.ERROR


def fmt(value: float | None, spec: str = ".2e") -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def fmt_fraction(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _log_bars(rows: list[LayerStats]) -> dict[str, str]:
    """A small bar per layer: its gradient norm on a log scale across the layers shown."""
    logs = {
        r.key: math.log10(r.grad_norm)
        for r in rows
        if r.grad_norm is not None and r.grad_norm > 0 and math.isfinite(r.grad_norm)
    }
    if not logs:
        return {}
    lo, hi = min(logs.values()), max(logs.values())
    span = hi - lo or 1.0
    return {k: BARS[1 + round((v - lo) / span * (len(BARS) - 2))] for k, v in logs.items()}


def _fraction_text(value: float | None, limit: float) -> Text:
    if value is None:
        return Text("")
    style = "bold red" if value > limit else ("yellow" if value > limit / 2 else "")
    return Text(fmt_fraction(value), style=style)


def flow_table(report: FlowReport) -> Table:
    """One row per parameterized layer and per activation call, in forward order."""
    flagged = {f.key for f in report.findings if f.key}
    table = Table(
        title=f"gradtool flow {report.target}"
        + (f" — step {report.steps}" if report.steps > 1 else ""),
        title_justify="left",
        pad_edge=False,
        show_lines=False,
    )
    table.add_column("#", justify="right", style="dim")
    table.add_column("layer", overflow="fold", max_width=36)
    table.add_column("type", style="dim", overflow="fold", max_width=14)
    table.add_column("grad norm", justify="right")
    table.add_column("", justify="left")  # the log-scale bar
    table.add_column("weight norm", justify="right")
    table.add_column("grad/weight", justify="right")
    table.add_column("max |grad|", justify="right")
    table.add_column("dead", justify="right")
    table.add_column("saturated", justify="right")
    notes = any(r.note for r in report.layers)
    if notes:
        table.add_column("note", overflow="fold", max_width=34, style="dim")
    bars = _log_bars([r for r in report.layers if r.kind == "layer"])
    for i, r in enumerate(report.layers, 1):
        name = Text(r.display_name, style="bold red" if r.key in flagged else "")
        if r.kind == "layer":
            cells = [
                Text(fmt(r.grad_norm) or "none", style="bold red" if _bad(r.grad_norm) else ""),
                Text(bars.get(r.key, ""), style="cyan"),
                fmt(r.weight_norm),
                fmt(r.grad_weight_ratio),
                fmt(r.max_abs_grad),
                Text(""),
                Text(""),
            ]
        else:
            dead = _fraction_text(r.dead_fraction, THRESHOLDS.dead_fraction)
            if r.dead_fraction is None and r.inactive_fraction is not None:
                dead = Text(f"~{fmt_fraction(r.inactive_fraction)}", style="dim")
            saturated = _fraction_text(r.saturated_fraction, THRESHOLDS.saturated_fraction)
            cells = [Text(""), Text(""), "", "", "", dead, saturated]
        row = [str(i), name, r.type, *cells]
        if notes:
            row.append(r.note)
        table.add_row(*row)
    return table


def _bad(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)


def trend_table(report: FlowReport) -> Table | None:
    """How each row moved from the first measured step to the last (multi-step runs)."""
    trend = report.trend
    if not trend:
        return None
    first, last = report.history[0].step, report.history[-1].step
    table = Table(title=f"trend, step {first} → {last}", title_justify="left", pad_edge=False)
    table.add_column("layer", overflow="fold", max_width=36)
    table.add_column("grad norm", justify="right")
    table.add_column("change", justify="right")
    table.add_column("dead", justify="right")
    table.add_column("saturated", justify="right")
    for r in report.layers:
        pairs = trend.get(r.key)
        if not pairs:
            continue
        a, b = pairs.get("grad_norm", (None, None))
        change = ""
        if a and b is not None and math.isfinite(a) and math.isfinite(b):
            change = f"×{b / a:.3g}"
        table.add_row(
            r.display_name,
            f"{fmt(a, '.2e')} → {fmt(b, '.2e')}" if r.kind == "layer" else "",
            change,
            _pair(pairs.get("dead_fraction")) or _pair(pairs.get("inactive_fraction"), "~"),
            _pair(pairs.get("saturated_fraction")),
        )
    return table


def _pair(pair: tuple[float | None, float | None] | None, mark: str = "") -> str:
    if pair is None or pair[0] is None or pair[1] is None:
        return ""
    return f"{mark}{fmt_fraction(pair[0])} → {mark}{fmt_fraction(pair[1])}"


def findings_panel(report: FlowReport) -> Panel:
    if not report.findings:
        body = Text(
            "No findings: no vanishing or exploding gradients, dead ReLUs, saturation, "
            "NaN/Inf or parameters without gradient"
            + (" on this batch." if report.steps <= 1 else f" after {report.steps} steps."),
            style="green",
        )
        return Panel(body, title="findings", title_align="left", border_style="green")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for f in report.findings:
        text = Text()
        text.append(f"{f.layer or '(model)'}: ", style="bold")
        text.append(f.message)
        text.append(f"\nfix: {f.fix}", style="dim")
        # consequences (what this finding explains) under it; the lead's layout will replace
        # this minimal list
        for c in f.consequences:
            text.append(f"\nthen {c.kind} in {c.layer or '(model)'}: {c.message}", style="dim")
        grid.add_row(Text(f.kind, style=kind_style(f.kind)), text)
    severe = any(_is_error(f.kind) for f in report.findings)
    return Panel(
        grid,
        title=f"findings ({len(report.findings)})",
        title_align="left",
        border_style="red" if severe else "yellow",
    )


def header_lines(report: FlowReport) -> list[str]:
    loss = {
        "projection": "a seeded random projection of the output (no loss_fn in the file)",
        "loss_fn": "loss_fn(output, *inputs)",
        "user": "your training loop's",
    }.get(report.loss, report.loss)
    lines = [
        f"target: {report.target}" + (f"  (found by: {report.found_by})" if report.found_by else "")
    ]
    batch = f", batch {report.batch_size}" if report.batch_size is not None else ""
    lines.append(
        f"model in {report.dtype} on {report.device}, {report.mode} mode{batch}; loss: {loss}"
    )
    if report.source == "monitor":
        lines.append(
            f"monitor: {report.steps} step(s) recorded, every {report.every}, "
            f"of {report.steps_seen} seen"
        )
    elif report.steps_requested > 1:
        lines.append(
            f"trained a copy for {report.steps} of {report.steps_requested} step(s) on this "
            f"batch with {report.optimizer}, lr={report.lr:g}; the table shows the last step"
        )
    return lines


def render_flow(report: FlowReport, console: Console) -> None:
    for line in header_lines(report):
        console.print(Text(line))
    for w in report.warnings:
        console.print(Text(f"warning: {w}", style="yellow"))
    console.print(flow_table(report))
    trend = trend_table(report)
    if trend is not None:
        console.print(trend)
    console.print(
        Text(
            "dead: units that output 0 for every example of the batch (per channel for conv "
            "maps); ~: leaky/smooth units negative for every example; saturated: outputs "
            "within 1% of an asymptote",
            style="dim",
        )
    )
    console.print(findings_panel(report))
    if report.overfit is not None:
        style = {True: "green", False: "yellow", None: "dim"}[report.overfit.reached]
        console.print(Text(f"overfit one batch: {report.overfit.message}", style=style))
    console.print(Text(f"{report.seconds:.2f}s", style="dim"))

"""The flow report as text: header, the per-layer table, the trend of a multi-step run, and
the findings panel. Pure functions of the result dataclasses; a finding's colour comes from
its rule's severity in the findings registry."""

from __future__ import annotations

import io
import math
from collections.abc import Callable

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..engines.flow import findings as finding_rules
from ..engines.flow.findings import Severity
from ..engines.flow.thresholds import FlowThresholds
from ..results import Finding, FlowReport, LayerStats
from ..stopping import STOPPED_BY

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


# The per-layer table's columns, and the order they are left out in when the terminal is too
# narrow for them all: numbers are never cut, columns go instead (the JSON has them all).
COLUMNS = (
    "#",
    "layer",
    "type",
    "grad norm",
    "bar",
    "weight norm",
    "grad/weight",
    "update/weight",
    "max |grad|",
    "dead",
    "saturated",
    "note",
)
DROP_ORDER = ("note", "max |grad|", "type", "bar", "weight norm", "#", "update/weight")
HEADERS = {  # two short lines each, so that a header never needs cutting either
    "grad norm": "grad\nnorm",
    "weight norm": "weight\nnorm",
    "grad/weight": "grad/\nweight",
    "update/weight": "update/\nweight",
    "max |grad|": "max\n|grad|",
    "saturated": "satur-\nated",
}


def _present(report: FlowReport) -> list[str]:
    """The columns this report has something for."""
    columns = list(COLUMNS)
    if not any(r.note for r in report.layers):
        columns.remove("note")
    if not any(r.update_ratio is not None for r in report.layers):
        columns.remove("update/weight")
    return columns


def flow_table(report: FlowReport, drop: tuple[str, ...] = ()) -> Table:
    """One row per parameterized layer and per activation call, in forward order; the
    columns in `drop` left out."""
    flagged = {f.key for f in report.findings if f.key}
    table = Table(
        title=f"gradtool flow {report.target}"
        + (f" — step {report.history[-1].step}" if report.history else ""),
        title_justify="left",
        pad_edge=False,
        show_lines=False,
    )
    columns = [c for c in _present(report) if c not in drop]
    # names fold onto more lines, but not into slivers: then a column goes instead
    longest = max((len(r.display_name) for r in report.layers), default=5)
    longest_type = max((len(r.type) for r in report.layers), default=4)
    for c in columns:
        header = HEADERS.get(c, "" if c == "bar" else c)
        if c == "layer":
            table.add_column(header, overflow="fold", max_width=36, min_width=min(longest, 16))
        elif c == "type":
            table.add_column(
                header, style="dim", overflow="fold", max_width=14, min_width=min(longest_type, 10)
            )
        elif c == "note":
            table.add_column(header, style="dim", overflow="fold", max_width=34, min_width=12)
        elif c == "bar":
            table.add_column(header, justify="left", no_wrap=True)
        else:
            table.add_column(header, justify="right", no_wrap=True, style="dim" if c == "#" else "")
    bars = _log_bars([r for r in report.layers if r.kind == "layer"])
    for i, r in enumerate(report.layers, 1):
        cells = _cells(r, i, bars, r.key in flagged)
        table.add_row(*(cells.get(c, "") for c in columns))
    return table


def _cells(r: LayerStats, i: int, bars: dict[str, str], flagged: bool) -> dict[str, Text | str]:
    cells: dict[str, Text | str] = {
        "#": str(i),
        "layer": Text(r.display_name, style="bold red" if flagged else ""),
        "type": Text(r.type),  # Text, not str: brackets in names are not rich markup
        "note": Text(r.note),
    }
    if r.kind == "layer":
        cells["grad norm"] = Text(
            fmt(r.grad_norm) or "none", style="bold red" if _bad(r.grad_norm) else ""
        )
        cells["bar"] = Text(bars.get(r.key, ""), style="cyan")
        cells["weight norm"] = fmt(r.weight_norm)
        cells["grad/weight"] = fmt(r.grad_weight_ratio)
        cells["update/weight"] = fmt(r.update_ratio)
        cells["max |grad|"] = fmt(r.max_abs_grad)
    else:
        dead = _fraction_text(r.dead_fraction, THRESHOLDS.dead_fraction)
        if r.dead_fraction is None and r.inactive_fraction is not None:
            dead = Text(f"~{fmt_fraction(r.inactive_fraction)}", style="dim")
        cells["dead"] = dead
        cells["saturated"] = _fraction_text(r.saturated_fraction, THRESHOLDS.saturated_fraction)
    return cells


def fitted_flow_table(report: FlowReport, width: int) -> tuple[Table, tuple[str, ...]]:
    """The per-layer table for a terminal `width` columns wide, and the columns it left out
    (in DROP_ORDER) so that no number or header is cut."""
    present = _present(report)
    order = tuple(c for c in DROP_ORDER if c in present)
    table, drop = _fit(lambda drop: flow_table(report, drop), order, width)
    assert table is not None
    return table, drop


def _fit(
    build: Callable[[tuple[str, ...]], Table | None], order: tuple[str, ...], width: int
) -> tuple[Table | None, tuple[str, ...]]:
    """`build(drop)` with the fewest columns of `order` left out (in that order) that fits
    `width` uncut; with all of them left out if nothing fits."""
    for n in range(len(order) + 1):
        drop = order[:n]
        table = build(drop)
        if table is None or not _cut(table, width):
            return table, drop
    return table, drop


def _cut(table: Table, width: int) -> bool:
    """Whether `table` needs more than `width` columns, or rendering it there cuts a cell
    (rich marks that with …)."""
    wide = Console(width=10_000, file=io.StringIO(), color_system=None, legacy_windows=False)
    if wide.measure(table).minimum > width:  # measured at `width`, rich would clip to it
        return True
    probe = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    with probe.capture() as captured:
        probe.print(table)
    return any(len(line) > width or "…" in line for line in captured.get().splitlines())


def _bad(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)


TREND_DROP_ORDER = ("change", "saturated", "dead")


def trend_table(report: FlowReport, drop: tuple[str, ...] = ()) -> Table | None:
    """How each row moved from the first measured step to the last (multi-step runs); the
    columns in `drop`, and those with nothing in them, left out. A "first → last" pair may
    wrap at its arrow; a number is never cut."""
    trend = report.trend
    if not trend:
        return None
    rows = []
    for r in report.layers:
        pairs = trend.get(r.key)
        if not pairs:
            continue
        a, b = pairs.get("grad_norm", (None, None))
        change = ""
        if a and b is not None and math.isfinite(a) and math.isfinite(b):
            change = f"×{b / a:.3g}"
        rows.append(
            {
                "layer": Text(r.display_name),  # a Text: "[call 1/2]" is not rich markup
                "grad norm": f"{fmt(a, '.2e')} → {fmt(b, '.2e')}" if r.kind == "layer" else "",
                "change": change,
                "dead": _pair(pairs.get("dead_fraction"))
                or _pair(pairs.get("inactive_fraction"), "~"),
                "saturated": _pair(pairs.get("saturated_fraction")),
            }
        )
    first, last = report.history[0].step, report.history[-1].step
    table = Table(title=f"trend, step {first} → {last}", title_justify="left", pad_edge=False)
    longest = max((len(row["layer"]) for row in rows), default=5)
    columns = [
        c
        for c in ("layer", "grad norm", "change", "dead", "saturated")
        if c not in drop and (c == "layer" or any(row[c] for row in rows))
    ]
    for c in columns:
        if c == "layer":
            table.add_column(c, overflow="fold", max_width=36, min_width=min(longest, 16))
        elif c == "change":
            table.add_column(c, justify="right", no_wrap=True)
        else:
            table.add_column(HEADERS.get(c, c), justify="right", min_width=9)
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


def fitted_trend_table(report: FlowReport, width: int) -> tuple[Table | None, tuple[str, ...]]:
    """The trend table for a terminal `width` columns wide, and the columns it left out."""
    return _fit(lambda drop: trend_table(report, drop), TREND_DROP_ORDER, width)


def _pair(pair: tuple[float | None, float | None] | None, mark: str = "") -> str:
    if pair is None or pair[0] is None or pair[1] is None:
        return ""
    return f"{mark}{fmt_fraction(pair[0])} → {mark}{fmt_fraction(pair[1])}"


def _no_findings(report: FlowReport) -> str:
    """What "no findings" means for this report: what was looked for."""
    text = (
        "No findings: gradients reach every trainable parameter at a healthy scale (not "
        "vanishing, not exploding), no layer with more dead or saturated units than chance "
        "explains, no NaN/Inf"
    )
    if report.source == "monitor":
        return (
            text + f"; over {report.steps} recorded step(s) the loop zeroed its gradients, "
            "every update was applied and its size stayed in the healthy range."
        )
    if report.steps > 1 and report.loss == "projection":
        return (
            text + f"; gradient and update sizes judged at step 1 only: the {report.steps} "
            "steps trained a random projection of the output, which has no minimum (define "
            "loss_fn for a real --steps run)."
        )
    if report.steps > 1:
        return (
            text + f"; over {report.steps} steps the loss did not diverge and the updates "
            "stayed in the healthy range."
        )
    return text + " on this batch."


def findings_panel(report: FlowReport) -> Panel:
    if not report.findings:
        body = Text(_no_findings(report), style="green")
        return Panel(body, title="findings", title_align="left", border_style="green")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for f in report.findings:
        text = Text()
        text.append(f"{f.layer or '(model)'}: ", style="bold")
        text.append(f.message)
        evidence = evidence_text(f)
        if evidence:
            text.append(f"\nevidence: {evidence}")
        for kind, first, others in _grouped(f.consequences):
            text.append(f"\nthen {kind} ", style=kind_style(kind))
            text.append(f"in {first.layer or '(model)'}: {first.message}", style="dim")
            if others:
                layers = ", ".join(o.layer or "(model)" for o in others)
                text.append(f"; the same in {layers}", style="dim")
        text.append(f"\nfix: {f.fix}", style="dim")
        grid.add_row(Text(f.kind, style=kind_style(f.kind)), text)
    severe = any(_is_error(f.kind) for f in report.findings)
    return Panel(
        grid,
        title=f"findings ({len(report.findings)})",
        title_align="left",
        border_style="red" if severe else "yellow",
    )


def _grouped(findings: tuple[Finding, ...]) -> list[tuple[str, Finding, list[Finding]]]:
    """Consequences by kind, in order: the first one's message, the others' layers only (a
    blow-up can leave a dozen layers without gradient)."""
    groups: dict[str, list[Finding]] = {}
    for c in findings:
        groups.setdefault(c.kind, []).append(c)
    return [(kind, items[0], items[1:]) for kind, items in groups.items()]


def evidence_text(f: Finding) -> str:
    """`growth 3.03e+33 (threshold 100), lr 0.5, ...`: the numbers a finding rests on; the
    threshold goes with the first, the number a rule compares with it."""
    parts = [f"{name} {_number(value)}" for name, value in f.evidence]
    if f.threshold is not None:
        mark = f"(threshold {_number(f.threshold)})"
        parts = [f"{parts[0]} {mark}", *parts[1:]] if parts else [mark]
    return ", ".join(parts)


def _number(value: float) -> str:
    """Plain for the magnitudes people read at a glance, scientific beyond them."""
    if math.isfinite(value) and (value == 0 or 1e-3 <= abs(value) < 1e4):
        return format(value, ".3g")
    return fmt(value)


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
    processes = f" in {report.processes} processes (DDP)" if report.processes > 1 else ""
    lines.append(
        f"model in {report.dtype} on {report.device}{processes}, {report.mode} mode{batch}; "
        f"loss: {loss}"
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
    table, dropped = fitted_flow_table(report, console.width)
    console.print(table)
    if dropped:
        shown = ", ".join(c for c in dropped if c != "bar") or "the bars"
        console.print(
            Text(
                f"(left out at {console.width} columns: {shown}; --json has every column)",
                style="dim",
            )
        )
    trend, dropped = fitted_trend_table(report, console.width)
    if trend is not None:
        console.print(trend)
        if dropped:
            console.print(
                Text(f"(left out at {console.width} columns: {', '.join(dropped)})", style="dim")
            )
    console.print(
        Text(
            "dead: units that output 0 for every example of the batch (per channel for conv "
            "maps); ~: leaky/smooth units negative for every example; saturated: outputs "
            "within 1% of an asymptote"
            + (
                "; update/weight: ‖Δw‖/‖w‖ of the last optimizer step measured (healthy ≈ 1e-3)"
                if any(r.update_ratio is not None for r in report.layers)
                else ""
            ),
            style="dim",
        )
    )
    console.print(findings_panel(report))
    if report.overfit is not None:
        style = {True: "green", False: "yellow", None: "dim"}[report.overfit.reached]
        console.print(Text(f"overfit one batch: {report.overfit.message}", style=style))
    if report.interrupted:
        by = STOPPED_BY.get(report.interrupted, report.interrupted)
        console.print(
            Text(
                f"INTERRUPTED: partial report, {report.steps} of {report.steps_requested} "
                f"step(s) measured before {by}",
                style="bold yellow",
            )
        )
    console.print(Text(f"{report.seconds:.2f}s", style="dim"))

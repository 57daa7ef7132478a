"""FlowReport -> rich table, findings panel, and (lazily) the matplotlib figure.

Pure functions of the result dataclasses: nothing here measures anything, and matplotlib is
imported only inside `plot_flow`, so it stays an optional extra (`pip install gradtool[plot]`).
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .engines.flow import findings as finding_rules
from .engines.flow.findings import Severity
from .errors import GradtoolError, InputError
from .results import FlowReport, LayerStats

# a finding's colour in the table and the panel comes from its rule's severity
SEVERITY_STYLE = {
    Severity.ERROR: "bold red",
    Severity.WARNING: "yellow",
    Severity.NOTICE: "magenta",
}
BARS = " ▁▂▃▄▅▆▇█"
DEAD_LIMIT = 0.5  # for colouring only; the findings use the engine's thresholds


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
            dead = _fraction_text(r.dead_fraction, DEAD_LIMIT)
            if r.dead_fraction is None and r.inactive_fraction is not None:
                dead = Text(f"~{fmt_fraction(r.inactive_fraction)}", style="dim")
            saturated = _fraction_text(r.saturated_fraction, DEAD_LIMIT)
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


# --- the figure ------------------------------------------------------------------------------

PLOT_SUFFIXES = (".png", ".svg")


def plot_flow(report: FlowReport, path: str | Path) -> Path:
    """The tutorial's figure: gradient norm per layer (log scale), and dead/saturated
    fractions per activation, both in forward order. Writes .png or .svg."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"--plot writes .png or .svg files; got {path.name!r}")
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise GradtoolError(
            "--plot needs matplotlib, which is not installed",
            hint="pip install gradtool[plot]",
        ) from None

    layers = [r for r in report.layers if r.kind == "layer"]
    acts = [r for r in report.layers if r.kind == "activation"]
    flagged = {f.key: f.kind for f in report.findings if f.key}
    marked = {rule.kind for rule in finding_rules.RULES if rule.marks_layer_gradient}
    width = max(8.0, 0.45 * max(len(layers), len(acts), 1) + 3)
    fig = Figure(figsize=(width, 8.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 2))

    # gradient norms (bars) and max |grad| (dots); first step as a line when trained
    xs = list(range(len(layers)))
    norms = [_positive(r.grad_norm) for r in layers]
    colors = ["#d62728" if flagged.get(r.key) in marked else "#1f77b4" for r in layers]
    top.bar(xs, [n or 0 for n in norms], color=colors, alpha=0.8, label="gradient norm")
    top.plot(
        xs,
        [_positive(r.max_abs_grad) for r in layers],
        "o",
        color="#ff7f0e",
        markersize=4,
        label="max |grad|",
    )
    if len(report.history) > 1:
        first = report.history[0]
        before = [_positive(getattr(first.row(r.key), "grad_norm", None)) for r in layers]
        top.plot(xs, before, "--", color="#7f7f7f", marker=".", label="gradient norm, step 1")
    for x, (r, n) in enumerate(zip(layers, norms)):
        if n is None:
            top.annotate(
                "no grad" if r.grad_norm is None else fmt(r.grad_norm, ".1g"),
                (x, 0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                fontsize=7,
                color="#d62728",
                rotation=90,
            )
    shown = [v for r, n in zip(layers, norms) for v in (n, _positive(r.max_abs_grad)) if v]
    if len(report.history) > 1:
        shown += [v for v in before if v]
    if shown:
        top.set_yscale("log")
        # whole decades, at least two, so the log axis always reads as orders of magnitude
        low = math.floor(math.log10(min(shown)))
        high = max(math.ceil(math.log10(max(shown))), low + 2)
        top.set_ylim(10.0**low, 10.0**high)
    top.set_xticks(xs, [r.name or "(model)" for r in layers], rotation=60, ha="right", fontsize=8)
    top.set_xlim(-0.6, max(len(layers), 1) - 0.4)
    top.set_ylabel("gradient norm (log scale)")
    step = f"step {report.steps}" if report.steps > 1 else "one batch"
    top.set_title(
        f"gradient flow — {report.target} ({step}), layers in forward order",
        loc="left",
        fontsize=10,
    )
    top.grid(axis="y", which="major", alpha=0.3)
    if layers:
        # the bars' colours vary (flagged layers are red): say so with proxy patches
        handles, labels = top.get_legend_handles_labels()
        keep = [(h, lab) for h, lab in zip(handles, labels) if lab != "gradient norm"]
        proxies = [Patch(color="#1f77b4", alpha=0.8, label="gradient norm")]
        if "#d62728" in colors:
            proxies.append(Patch(color="#d62728", alpha=0.8, label="where a finding points"))
        top.legend(handles=proxies + [h for h, _ in keep], fontsize=8, loc="best")

    # activations: dead / saturated / inactive fractions
    xa = list(range(len(acts)))
    w = 0.38
    dead = [r.dead_fraction if r.dead_fraction is not None else 0.0 for r in acts]
    sat = [r.saturated_fraction if r.saturated_fraction is not None else 0.0 for r in acts]
    inactive = [r.inactive_fraction if r.inactive_fraction is not None else 0.0 for r in acts]
    bottom.bar(
        [x - w / 2 for x in xa], dead, w, color="#d62728", label="dead (0 for every example)"
    )
    if any(r.inactive_fraction is not None for r in acts):
        bottom.bar(
            [x - w / 2 for x in xa],
            inactive,
            w,
            color="#bbbbbb",
            hatch="//",
            edgecolor="#888888",
            label="negative for every example (leaky/smooth)",
        )
    bottom.bar([x + w / 2 for x in xa], sat, w, color="#ff7f0e", label="saturated")
    if acts:
        bottom.axhline(0.5, color="#555555", linestyle="--", linewidth=1)
        bottom.text(
            1.0,
            0.5,
            " 50%",
            transform=bottom.get_yaxis_transform(),
            va="center",
            fontsize=7,
            color="#555555",
        )
    for x, r in zip(xa, acts):
        # the value over each bar, so that 0% reads as measured, not missing
        dead_value = r.dead_fraction if r.dead_fraction is not None else r.inactive_fraction
        for dx, value, prefix in (
            (-w / 2, dead_value, "" if r.dead_fraction is not None else "~"),
            (w / 2, r.saturated_fraction, ""),
        ):
            if value is not None:
                bottom.text(
                    x + dx,
                    value + 0.015,
                    f"{prefix}{100 * value:.0f}%",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="#333333",
                )
        if dead_value is None and r.saturated_fraction is None:
            bottom.text(x, 0.02, "n/a", ha="center", fontsize=7, color="#777777")
    bottom.set_ylim(0, 1.05)
    bottom.set_xticks(xa, [r.display_name for r in acts], rotation=60, ha="right", fontsize=8)
    bottom.set_xlim(-0.6, max(len(acts), 1) - 0.4)
    bottom.set_ylabel("fraction")
    bottom.set_title("activations: dead units and saturated outputs", loc="left", fontsize=10)
    bottom.grid(axis="y", alpha=0.3)
    if acts:
        bottom.legend(fontsize=8, loc="upper left")
    else:
        bottom.text(
            0.5,
            0.5,
            "no activations measured",
            ha="center",
            va="center",
            transform=bottom.transAxes,
            color="#777777",
        )

    kinds = ", ".join(f"{f.kind} ({f.layer or '(model)'})" for f in report.findings[:6])
    fig.suptitle(
        f"findings: {kinds}" if kinds else "no findings",
        fontsize=9,
        color="#d62728" if kinds else "#2ca02c",
        x=0.01,
        ha="left",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=path.suffix.lower().lstrip("."), dpi=120)
    return path


def _positive(value: float | None) -> float | None:
    """Values a log axis can show; 0, NaN and Inf are annotated instead."""
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return value


# --- CLI helpers -----------------------------------------------------------------------------


def parse_fail_on(text: str | None) -> set[str]:
    """`nan,exploding` -> {"nan", "exploding"}; "all" is every kind; unknown kinds are errors."""
    if not text:
        return set()
    known = finding_rules.finding_kinds()
    kinds = {k.strip().lower() for k in text.split(",") if k.strip()}
    if "all" in kinds:
        return set(known)
    unknown = sorted(kinds - set(known))
    if unknown:
        raise InputError(
            f"--fail-on: unknown finding kind(s) {', '.join(unknown)}",
            hint=f"Use any of: {', '.join(known)} (comma-separated), or all.",
        )
    return kinds


def check_plot_path(path: str | Path) -> None:
    """Fail before the run, not after it, on a bad --plot path or a missing matplotlib."""
    import importlib.util

    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"--plot writes .png or .svg files; got {Path(path).name!r}")
    if importlib.util.find_spec("matplotlib") is None:
        raise GradtoolError(
            "--plot needs matplotlib, which is not installed", hint="pip install gradtool[plot]"
        )

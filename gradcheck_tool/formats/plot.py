"""The tutorial's gradient-flow figure (matplotlib, imported only here: an optional extra,
`pip install gradtool[plot]`)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from ..engines.flow import findings as finding_rules
from ..errors import OptionError
from ..results import FlowReport, LayerStats, MemoryReport, ModuleMemory
from .flow_table import fmt

PLOT_SUFFIXES = (".png", ".svg")


def plot_flow(report: FlowReport, path: str | Path) -> Path:
    """The tutorial's figure: gradient norm per layer (log scale), and dead/saturated
    fractions per activation, both in forward order. Writes .png or .svg."""
    check_plot_path(path)
    path = Path(path)
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    layers = [r for r in report.layers if r.kind == "layer"]
    acts = [r for r in report.layers if r.kind == "activation"]
    width = max(8.0, 0.45 * max(len(layers), len(acts), 1) + 3)
    fig = Figure(figsize=(width, 8.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 2))
    _gradient_panel(top, report, layers, Patch)
    _activation_panel(bottom, acts)
    kinds = ", ".join(f"{f.kind} ({f.layer or '(model)'})" for f in report.findings[:6])
    fig.suptitle(
        f"findings: {kinds}" if kinds else "no findings",
        fontsize=9,
        color="#d62728" if kinds else "#2ca02c",
        x=0.01,
        ha="left",
    )
    _save(fig, path)
    return path


def _gradient_panel(top: Any, report: FlowReport, layers: list[LayerStats], Patch: Any) -> None:
    """Gradient norms (bars, red where a finding points) and max |grad| (dots) per layer;
    the first step as a dashed line when trained."""
    flagged = {f.key: f.kind for f in report.findings if f.key}
    marked = {rule.kind for rule in finding_rules.RULES if rule.marks_layer_gradient}
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


def _activation_panel(bottom: Any, acts: list[LayerStats]) -> None:
    """Dead (or inactive) and saturated fractions per activation call, against the 50% line."""
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


def plot_memory(report: MemoryReport, path: str | Path) -> Path:
    """Memory per module in forward order, in MiB, by each module's own operations (its
    submodules have bars of their own): saved for the backward, and what its forward leaves
    alive for the backward (the held measurement), before and with --apply-checkpoint after
    checkpointing. Modules with nothing of their own are left out."""
    check_plot_path(path)
    path = Path(path)
    from matplotlib.figure import Figure

    before = _own_held(report.modules)
    after = _own_held(report.checkpoint.modules) if report.checkpoint is not None else None
    rows = [
        m
        for m in report.modules
        if m.own_saved_bytes or before.get(m.name) or (after and after.get(m.name))
    ][:60]
    mib = 1024.0**2
    x = list(range(len(rows)))
    series = [
        ("saved for the backward", [m.own_saved_bytes / mib for m in rows], "#1f77b4"),
        ("held before checkpointing", [before.get(m.name, 0) / mib for m in rows], "#ff7f0e"),
    ]
    if after is not None:
        values = [after.get(m.name, 0) / mib for m in rows]
        series.append(("held after checkpointing", values, "#2ca02c"))
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(8.0, 0.35 * len(rows) + 3), 5.5), layout="constrained")
    ax = fig.subplots()
    for i, (label, values, color) in enumerate(series):
        shifted = [v + (i - (len(series) - 1) / 2) * width for v in x]
        ax.bar(shifted, values, width, label=label, color=color)
    ax.set_xticks(x, [m.name or "(model)" for m in rows], rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("MiB (the module's own operations)")
    ax.legend(fontsize=8)
    title = f"{report.target}: saved {report.saved_bytes_total / mib:.2f} MiB"
    if report.checkpoint is not None:
        ck = report.checkpoint
        title += (
            f"; checkpointing {', '.join(ck.blocks)} saves {ck.measured_saving_bytes / mib:.2f}"
            f" MiB (predicted {ck.predicted_saving_bytes / mib:.2f})"
        )
    ax.set_title(title, fontsize=9, loc="left")
    _save(fig, path)
    return path


def _own_held(modules: tuple[ModuleMemory, ...]) -> dict[str, int]:
    """A module's held bytes less its children's: the held measurement charges each
    storage to one module, so these add up."""
    names = {m.name for m in modules}
    own = {m.name: m.held_bytes for m in modules}
    for m in modules:
        if m.name:
            parent = m.name.rpartition(".")[0]
            while parent not in names and parent:
                parent = parent.rpartition(".")[0]
            own[parent] = own.get(parent, 0) - m.held_bytes
    return own


def _positive(value: float | None) -> float | None:
    """Values a log axis can show; 0, NaN and Inf are annotated instead."""
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return value


def check_plot_path(path: str | Path) -> None:
    """Fail before the run, not after it, on a bad path (a folder that does not exist is
    not made: a typo would leave one behind), or a missing matplotlib."""
    from .json import check_path

    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise OptionError("plot", f"writes .png or .svg files; got {Path(path).name!r}")
    check_path(str(path), "plot")
    target = Path(path)
    if not target.exists():  # a folder the permission bits allow but that takes no file (/proc)
        try:
            target.open("xb").close()
        except OSError as exc:
            raise OptionError("plot", f"{path}: cannot be written: {exc.strerror or exc}") from None
        target.unlink()
    if importlib.util.find_spec("matplotlib") is None:
        raise OptionError(
            "plot", "needs matplotlib, which is not installed", hint="pip install gradtool[plot]"
        )


def _save(fig: Any, path: Path) -> None:
    """Write the figure; a path that became unwritable since check_plot_path is the user's."""
    try:
        fig.savefig(path, format=path.suffix.lower().lstrip("."), dpi=120)
    except OSError as exc:
        raise OptionError("plot", f"{path}: could not write: {exc.strerror or exc}") from None

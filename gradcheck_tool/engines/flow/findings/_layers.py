"""What the vanishing and exploding rules both read: the layers they compare, their roles
(the same parameter in repeated blocks), trends across depth, and the size of the update an
optimizer step would make. No torch: pure over the measured numbers.

Note [like with like]: a gradient's size depends on what the layer is (a fresh attention
query in BERT gets a gradient 1e3× smaller than its feed-forward layers, because attention
is near-uniform at init, and layer 1's too), so a trend across depth compares one *role*
with itself: the layers whose names differ only in their numbers
(`encoder.layer.0.attention.self.query`, `encoder.layer.1...`), of one type. A trend is the
geometric mean of a role's first quarter over its last quarter, and counts only when it is
steady: most of the change in log size, layer to layer, goes one way (a zigzag is not a
trend).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import NamedTuple

from ....results import LayerStats
from ..samples import label
from ._rule import Detection, Evidence


def compared_layers(ev: Evidence) -> list[LayerStats]:
    """The last step's trainable weight matrices, in forward order."""
    return [
        r
        for r in ev.last.rows
        if r.kind == "layer" and r.key in ev.comparable_keys and not r.frozen
    ]


def rms(row: LayerStats) -> float | None:
    if row.grad_norm is None or not row.numel:
        return None
    return row.grad_norm / math.sqrt(row.numel)


def signal_rms(row: LayerStats) -> float | None:
    """RMS of the gradient reaching the layer's output (the backward signal)."""
    if not row.output_grad_norm or not row.output_numel:
        return None
    return row.output_grad_norm / math.sqrt(row.output_numel)


def role(row: LayerStats) -> tuple[str, str]:
    """What a layer is, apart from where: its name with the numbers taken out, and its type
    (Note [like with like]). Sizes may differ (a stage of a ResNet, the first and last
    Linear of an nn.Sequential): RMS gradients compare across sizes."""
    return re.sub(r"\d+", "#", row.name), row.type


def sequences(rows: list[LayerStats]) -> list[list[LayerStats]]:
    """The runs a trend is measured on: each role that repeats (2+ layers, forward order);
    where no role repeats, all the layers as one run."""
    by_role: dict[tuple[str, str], list[LayerStats]] = {}
    for r in rows:
        by_role.setdefault(role(r), []).append(r)
    repeated = [run for run in by_role.values() if len(run) >= 2]
    return repeated or ([rows] if len(rows) >= 2 else [])


class Trend(NamedTuple):
    ratio: float  # the run's first layers over its last (geometric means of quarters)
    steadiness: float  # |net change of log size| / total |change|: 1 = monotone, 0 = zigzag
    layers: int  # in the run
    head: str  # the first layers, as a message names them
    tail: str  # the last layers
    row: LayerStats  # the first layer: the one a finding points at


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def trend(values: list[tuple[LayerStats, float]]) -> Trend | None:
    """The trend of one run's (row, positive value) pairs, in forward order."""
    if len(values) < 2:
        return None
    k = max(1, len(values) // 4)
    early, late = values[:k], values[-k:]
    ratio = _geomean([v for _, v in early]) / _geomean([v for _, v in late])
    logs = [math.log(v) for _, v in values]
    steps = [b - a for a, b in zip(logs, logs[1:])]
    total = sum(abs(s) for s in steps)
    steadiness = abs(sum(steps)) / total if total else 0.0
    if k == 1:
        head, tail = label(early[0][0].name), label(late[0][0].name)
    else:
        names = ", ".join(label(r.name) for r, _ in early)
        head, tail = f"the first {k} layers ({names})", f"the last {k}"
    return Trend(ratio, steadiness, len(values), head, tail, early[0][0])


def trends(ev: Evidence, measure: Callable[[LayerStats], float | None]) -> list[Trend]:
    """The trend of `measure` along each run of the compared layers (finite, nonzero values)."""
    found = []
    for run in sequences(compared_layers(ev)):
        values = [(r, v) for r in run if (v := measure(r)) and math.isfinite(v)]
        t = trend(values)
        if t is not None:
            found.append(t)
    return found


def steady(trends_: list[Trend], min_steadiness: float) -> list[Trend]:
    return [t for t in trends_ if t.steadiness >= min_steadiness]


def grad_weight(row: LayerStats) -> float | None:
    """‖g‖/‖w‖ of a layer, None where the weight is zero (a zero-initialised layer)."""
    if row.grad_norm is None or not row.weight_norm or not math.isfinite(row.weight_norm):
        return None
    return row.grad_norm / row.weight_norm


def is_norm(row: LayerStats) -> bool:
    """A normalisation layer (BatchNorm2d, LayerNorm, timm's BatchNormAct2d, LlamaRMSNorm)."""
    return "Norm" in row.type


def normalised_next(ev: Evidence) -> set[str]:
    """Keys of the layers whose next layer (forward order) is a normalisation layer.

    Note [scale-free layers]: a layer whose output is normalised next (a conv before its
    BatchNorm) computes the same function at any scale of its weight; its gradient is
    orthogonal to the weight and shrinks as the weight grows, so even a step larger than
    the weight only turns it, and the next steps are smaller. At init with small batches
    such layers get steps of ~1× their size in healthy models (timm's MobileNetV3 and
    EfficientNet stems, benchmarks/flow_calibration.py); they say nothing of explosion."""
    layers = [r for r in ev.last.rows if r.kind == "layer"]
    return {a.key for a, b in zip(layers, layers[1:]) if is_norm(b) and not is_norm(a)}


def at_last_step(
    ev: Evidence,
    row: LayerStats,
    message: str,
    value: float,
    evidence: tuple[tuple[str, float], ...] = (),
    threshold: float | None = None,
) -> Detection:
    """A detection about one layer row of the last step, with the numbers behind it."""
    last = ev.last
    return Detection(
        row.name,
        message + ev.at(last),
        key=row.key,
        value=value,
        step=last.step,
        evidence=evidence,
        threshold=threshold,
    )


def trend_detection(
    ev: Evidence, worst: Trend, message: str, name: str, threshold: float
) -> Detection:
    """A detection about a steady trend along a role (vanishing, exploding): `message` is
    formatted with the trend's ratio, its first and last layers, their count and type;
    the evidence is the ratio (as `name`), the steadiness and the number of layers."""
    text = message.format(
        head=worst.head,
        tail=worst.tail,
        ratio=worst.ratio,
        layers=worst.layers,
        type=worst.row.type,
    )
    return at_last_step(
        ev,
        worst.row,
        text,
        worst.ratio,
        evidence=(
            (name, worst.ratio),
            ("steadiness", worst.steadiness),
            ("layers", float(worst.layers)),
        ),
        threshold=threshold,
    )

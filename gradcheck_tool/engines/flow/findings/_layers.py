"""What the vanishing and exploding rules both read: the layers they compare, RMS gradients,
and the ratio of the earliest layers to the latest."""

from __future__ import annotations

import math
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


def weight_rms(ev: Evidence) -> list[tuple[LayerStats, float]]:
    """Each compared layer's RMS weight gradient (finite, nonzero ones only)."""
    return [(r, v) for r in compared_layers(ev) if (v := rms(r)) and math.isfinite(v)]


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


class EarlyLate(NamedTuple):
    ratio: float  # earliest layers / latest layers
    head: str  # the earliest layers, as a message names them
    tail: str  # the latest layers
    row: LayerStats  # the earliest layer: the one a finding points at


def early_late(values: list[tuple[LayerStats, float]]) -> EarlyLate | None:
    """Geometric mean of the first quarter over the last quarter (at least one layer each)."""
    if len(values) < 2:
        return None
    k = max(1, len(values) // 4)
    early, late = values[:k], values[-k:]
    ratio = _geomean([v for _, v in early]) / _geomean([v for _, v in late])
    if k == 1:
        return EarlyLate(ratio, label(early[0][0].name), label(late[0][0].name), early[0][0])
    names = ", ".join(label(r.name) for r, _ in early)
    return EarlyLate(ratio, f"the first {k} layers ({names})", f"the last {k}", early[0][0])


def at_last_step(ev: Evidence, row: LayerStats, message: str, value: float) -> Detection:
    """A detection about one layer row of the last step."""
    last = ev.last
    return Detection(row.name, message + ev.at(last), key=row.key, value=value, step=last.step)

"""update_too_small: the optimizer barely moves a layer's weights at most steps (‖Δw‖/‖w‖ far
below the ~1e-3 rule of thumb): the learning rate is too low for this layer to learn."""

from __future__ import annotations

from collections.abc import Iterator

from ._rule import Detection, Evidence, FindingRule, Severity
from ._updates import far_from_healthy

FIX = (
    "Raise the learning rate (about 1e-3 of the weights per step is healthy); check the "
    "scheduler is not stuck near 0 and that the weights are not scaled up far beyond their "
    "initialization."
)


def detect(ev: Evidence) -> Iterator[Detection]:
    limit = ev.thresholds.update_too_small
    yield from far_from_healthy(ev, limit, lambda r: r < limit, "small")


RULE = FindingRule("update_too_small", Severity.WARNING, {"": FIX}, detect)

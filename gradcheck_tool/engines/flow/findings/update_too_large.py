"""update_too_large: the optimizer changes a layer's weights by a large fraction of their norm
at most steps (‖Δw‖/‖w‖ far above the ~1e-3 rule of thumb): the learning rate is too high."""

from __future__ import annotations

from collections.abc import Iterator

from ._rule import Detection, Evidence, FindingRule, Severity
from ._updates import far_from_healthy

FIX = (
    "Lower the learning rate (about 1e-3 of the weights per step is healthy), or add "
    "warm-up and gradient clipping (torch.nn.utils.clip_grad_norm_)."
)


def detect(ev: Evidence) -> Iterator[Detection]:
    limit = ev.thresholds.update_too_large
    yield from far_from_healthy(ev, limit, lambda r: r > limit, "large")


RULE = FindingRule("update_too_large", Severity.WARNING, {"": FIX}, detect)

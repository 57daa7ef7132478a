"""vanishing: the weight gradients of one role (the same layer in repeated blocks) shrink
steadily toward the input, by orders of magnitude (Note [like with like] in _layers.py)."""

from __future__ import annotations

from collections.abc import Iterator

from ._layers import rms, steady, trend_detection, trends
from ._rule import Detection, Evidence, FindingRule, Severity

FIX = (
    "Use ReLU-family activations instead of sigmoid/tanh in hidden layers, He "
    "(kaiming) initialization, residual connections, and normalization (BatchNorm/LayerNorm)."
)


def detect(ev: Evidence) -> Iterator[Detection]:
    if ev.last.nan is not None:
        return  # after a NaN the norms say nothing
    th = ev.thresholds
    found = steady(trends(ev, rms), th.trend_steadiness)
    worst = min(found, key=lambda t: t.ratio, default=None)
    if worst is not None and worst.ratio < th.vanishing_ratio:
        yield trend_detection(
            ev,
            worst,
            "gradients vanish toward the input: the RMS gradient of {head} is {ratio:.1e}× "
            "that of {tail} (a steady decline over {layers} {type} layers)",
            "first/last RMS gradient",
            th.vanishing_ratio,
        )


RULE = FindingRule("vanishing", Severity.WARNING, {"": FIX}, detect, marks_layer_gradient=True)

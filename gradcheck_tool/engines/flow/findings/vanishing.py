"""vanishing: the earliest layers' RMS weight gradient is a tiny fraction of the latest
layers' (the tutorial's plot of gradient norm against depth)."""

from __future__ import annotations

from collections.abc import Iterator

from ._layers import at_last_step, early_late, weight_rms
from ._rule import Detection, Evidence, FindingRule, Severity

FIX = (
    "Use ReLU-family activations instead of sigmoid/tanh in hidden layers, He "
    "(kaiming) initialization, residual connections, and normalization (BatchNorm/LayerNorm)."
)


def detect(ev: Evidence) -> Iterator[Detection]:
    if ev.last.nan is not None:
        return  # after a NaN the norms say nothing
    compared = early_late(weight_rms(ev))
    if compared is not None and compared.ratio < ev.thresholds.vanishing_ratio:
        yield at_last_step(
            ev,
            compared.row,
            f"gradients vanish toward the input: the RMS gradient of {compared.head} "
            f"is {compared.ratio:.1e}× that of {compared.tail}",
            compared.ratio,
        )


RULE = FindingRule("vanishing", Severity.WARNING, {"": FIX}, detect, marks_layer_gradient=True)

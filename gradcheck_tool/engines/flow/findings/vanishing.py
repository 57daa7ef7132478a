"""vanishing: the weight gradients of one role (the same layer in repeated blocks) shrink
steadily toward the input, by orders of magnitude (Note [like with like] in _layers.py)."""

from __future__ import annotations

from collections.abc import Iterator

from ._layers import at_last_step, rms, steady, trends
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
        yield at_last_step(
            ev,
            worst.row,
            f"gradients vanish toward the input: the RMS gradient of {worst.head} "
            f"is {worst.ratio:.1e}× that of {worst.tail} (a steady decline over "
            f"{worst.layers} {worst.row.type} layers)",
            worst.ratio,
            evidence=(
                ("first/last RMS gradient", worst.ratio),
                ("steadiness", worst.steadiness),
                ("layers", float(worst.layers)),
            ),
            threshold=th.vanishing_ratio,
        )


RULE = FindingRule("vanishing", Severity.WARNING, {"": FIX}, detect, marks_layer_gradient=True)

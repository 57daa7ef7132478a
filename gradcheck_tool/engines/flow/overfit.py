"""The overfit-one-batch verdict (the tutorial's check) from the loss over `--steps`. No torch."""

from __future__ import annotations

import math

from ...results import OverfitVerdict
from .samples import StepSample
from .thresholds import FlowThresholds


def overfit_verdict(
    samples: list[StepSample],
    loss_kind: str,
    th: FlowThresholds,
    requested: int,
    *,
    cut_short: bool = False,
) -> OverfitVerdict | None:
    """Did the loss go near zero in `requested` steps on one batch? None for a single step.
    A run `cut_short` (interrupted) is judged only where its steps already tell: the loss
    reached near zero, or became non-finite; else it is not judged."""
    if requested < 2:
        return None
    losses = [s.loss for s in samples if s.loss is not None]
    if loss_kind == "projection":
        return OverfitVerdict(
            False,
            None,
            losses[0] if losses else None,
            losses[-1] if losses else None,
            min(losses) if losses else None,
            "not judged: without loss_fn the loss is a random projection of the output, which "
            "has no minimum; define loss_fn(output, *inputs) to run the overfit-one-batch check",
        )
    first, last = losses[0], losses[-1]
    finite = [x for x in losses if math.isfinite(x)]
    low = min(finite) if finite else None

    def verdict(applicable: bool, reached: bool | None, message: str) -> OverfitVerdict:
        return OverfitVerdict(applicable, reached, first, last, low, message)

    if not math.isfinite(last):
        bad = next(s.step for s in samples if s.loss is not None and not math.isfinite(s.loss))
        return verdict(True, False, f"the loss became non-finite at step {bad}: lower --lr")
    if first <= 0:
        return verdict(False, None, f"not judged: the loss starts at {first:.3g}, not above zero")
    n = len(samples)
    if last <= max(th.overfit_absolute, th.overfit_fraction * first):
        return verdict(
            True,
            True,
            f"the loss went from {first:.3g} to {last:.3g} in {n} steps: the "
            "model can overfit one batch",
        )
    if cut_short:
        return verdict(
            False,
            None,
            f"not judged: the run was interrupted after {n} of {requested} steps (the loss "
            f"went from {first:.3g} to {last:.3g})",
        )
    if last < first:
        return verdict(
            True,
            False,
            f"the loss went from {first:.3g} to {last:.3g} ({last / first:.0%} of the start) in "
            f"{n} steps, not near zero: train longer (--steps) or raise --lr; a model that "
            "cannot memorize one batch has a bug (targets, a cut graph, a frozen layer) or too "
            "little capacity",
        )
    return verdict(
        True,
        False,
        f"the loss did not fall ({first:.3g} → {last:.3g} in {n} steps): lower --lr if it "
        "rose, raise it if it stalled; check that the loss depends on the parameters",
    )

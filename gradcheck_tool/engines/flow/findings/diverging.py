"""diverging: the loss grew by orders of magnitude, or became non-finite after growing
(Note [divergence] in _divergence.py). The root cause the NaN, the saturated units and the
zero gradients that follow it come from; they are attached to it as its consequences."""

from __future__ import annotations

import math
from collections.abc import Iterator

from ..samples import label
from ._divergence import BlowUp, find_blow_up, first_large_update, number
from ._rule import Detection, Evidence, FindingRule, Severity

FIX = (
    "Lower the learning rate (10× to start with), warm it up over the first steps, clip "
    "gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)), and normalise "
    "(LayerNorm/BatchNorm) so that one large step cannot blow the activations up."
)


# how sure an update size is (_divergence.update_ratios): exact, an estimate, a lower bound
APPROX = {"measured": "=", "sgd": "=", "adam": "≈", "weights": "≥"}


def _how_much(b: BlowUp) -> str:
    if b.by_update:
        return f"the weights blew up: the loss was {number(b.low_loss)} at step {b.low.step}"
    return (
        f"the loss diverged: it rose from {number(b.low_loss)} at step {b.low.step} to "
        f"{number(b.peak_loss)} at step {b.peak.step} ({b.growth:.1e}×)"
    )


def detect(ev: Evidence) -> Iterator[Detection]:
    if not ev.multi:
        return
    b = find_blow_up(ev)
    if b is None:
        return
    text = _how_much(b)
    if b.nonfinite is not None:
        loss = b.nonfinite.loss
        bad = f"the loss was {loss}" if loss is not None and not math.isfinite(loss) else None
        text += f", then {bad or 'a value became NaN/Inf'} at step {b.nonfinite.step}"
    # the number the threshold is for first: the loss's growth, or the update before the NaN
    evidence: list[tuple[str, float]] = (
        [("largest update/weight", b.update), ("low loss", b.low_loss)]
        if b.by_update and b.update is not None
        else [("growth", b.growth), ("low loss", b.low_loss), ("peak loss", b.peak_loss)]
    )
    if ev.lr is not None:
        text += f"; {ev.optimizer or 'optimizer'} at lr {ev.lr:g}"
        evidence.append(("lr", ev.lr))
    first = first_large_update(ev, b)
    layer, key = "(loss)", None
    if first is not None:
        layer, key = first.row.name, first.row.key
        which = "first layer to take a huge step" if first.huge else "largest step then"
        text += (
            f". The {which}: {label(first.row.name)}, ‖Δw‖/‖w‖ {APPROX[first.how]} "
            f"{number(first.ratio)} after step {first.sample.step} (healthy ≈ 1e-3)"
        )
        evidence.append(("update/weight", first.ratio))
    yield Detection(
        layer,
        text,
        key=key,
        value=b.growth if not b.by_update else (first.ratio if first else None),
        step=b.crossed.step,
        evidence=tuple(evidence),
        threshold=b.threshold,
    )


RULE = FindingRule("diverging", Severity.ERROR, {"": FIX}, detect)

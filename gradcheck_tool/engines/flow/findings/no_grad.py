"""no_grad: a trainable parameter got no gradient (or exactly zero) at the last step before
any NaN/Inf (a non-finite step's gradients say nothing). After a divergence, parameters whose
gradient only became zero after the blow-up are its consequences (consequences.py).

Not a finding: a gradient exactly zero because a later layer's weights are all zero and
that layer itself gets a gradient (zero-initialised residual branches, timm's and
torchvision's `zero_init_last`): by design, the first step moves that layer and the
gradient flows from then on."""

from __future__ import annotations

from collections.abc import Iterator

from ..samples import ROOT, ZERO_GRADIENT, StepSample
from ._divergence import first_nonfinite
from ._rule import Detection, Evidence, FindingRule, Severity

FIX = (
    "Use the parameter in forward without cutting the graph (.detach(), .data, "
    "torch.no_grad(), a round trip through .item()/.numpy()); if it is meant to be frozen, "
    "call requires_grad_(False) on it."
)


def _zero_init_after(sample: StepSample, layer: str) -> bool:
    """A layer after `layer` (forward order) whose weights are all zero gets a gradient."""
    rows = [r for r in sample.rows if r.kind == "layer"]
    order = next((r.order for r in rows if r.name == layer), None)
    return order is not None and any(
        r.order > order and r.weight_norm == 0 and r.grad_norm and not r.frozen for r in rows
    )


def detect(ev: Evidence) -> Iterator[Detection]:
    bad = first_nonfinite(ev)
    last = ev.samples[bad - 1] if bad else ev.last
    for layer, params, why in last.no_grad:
        if why == ZERO_GRADIENT and _zero_init_after(last, layer):
            continue
        yield Detection(
            layer,
            f"{', '.join(params)} receive{'s' if len(params) == 1 else ''} no gradient: "
            f"{why}{ev.at(last)}",
            key=layer or ROOT,
            step=last.step,
        )


RULE = FindingRule("no_grad", Severity.NOTICE, {"": FIX}, detect)

"""no_grad: a trainable parameter got no gradient (or exactly zero) at the last step before
any NaN/Inf (a non-finite step's gradients say nothing). After a divergence, parameters whose
gradient only became zero after the blow-up are its consequences (consequences.py).

Not a finding: a gradient exactly zero because a later layer's weights are all zero and
that layer itself gets a gradient (Note [zero-initialised branches] in _zero_init.py)."""

from __future__ import annotations

from collections.abc import Iterator

from ..samples import ROOT
from ._divergence import first_nonfinite
from ._rule import Detection, Evidence, FindingRule, Severity
from ._zero_init import without_gradient

FIX = (
    "Use the parameter in forward without cutting the graph (.detach(), .data, "
    "torch.no_grad(), a round trip through .item()/.numpy()); if it is meant to be frozen, "
    "call requires_grad_(False) on it."
)


def detect(ev: Evidence) -> Iterator[Detection]:
    bad = first_nonfinite(ev)
    last = ev.samples[bad - 1] if bad else ev.last
    for layer, params, why in without_gradient(last):
        yield Detection(
            layer,
            f"{', '.join(params)} receive{'s' if len(params) == 1 else ''} no gradient: "
            f"{why}{ev.at(last)}",
            key=layer or ROOT,
            step=last.step,
        )


RULE = FindingRule("no_grad", Severity.NOTICE, {"": FIX}, detect)

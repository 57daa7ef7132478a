"""grad_not_zeroed: the backward adds to the previous optimizer step's gradient (the loop never
calls zero_grad()), seen at the recorded steps that directly follow an optimizer step
(Note [observing optimizer steps] in optim_watch.py). Several backward calls per optimizer
step, zeroed after each step, are intended accumulation and pass."""

from __future__ import annotations

from collections.abc import Iterator

from ..samples import ROOT
from ._rule import Detection, Evidence, FindingRule, Severity

FIX = (
    "Call optimizer.zero_grad() (or model.zero_grad()) once per optimizer step, after "
    "step() and before the next backward(); to accumulate over micro-batches, zero after "
    "each optimizer step, not after each backward."
)


def _layers_of(ev: Evidence, params: set[str]) -> list[str]:
    """The layers owning `params`, in forward order."""
    return [r.name for r in ev.last.rows if r.kind == "layer" and params & set(r.params)]


def detect(ev: Evidence) -> Iterator[Detection]:
    checked = [s for s in ev.samples if s.zeroing_checked]
    stale = [s for s in checked if s.stale_grads]
    if not stale or len(stale) < ev.thresholds.grad_not_zeroed_fraction * len(checked):
        return
    params = {p for s in stale for p in s.stale_grads}
    layers = _layers_of(ev, params)
    everywhere = len(layers) == sum(1 for r in ev.last.rows if r.kind == "layer" and not r.frozen)
    where = "every layer" if everywhere else ", ".join(n or ROOT for n in layers)
    first = stale[0]
    yield Detection(
        "" if everywhere or not layers else layers[0],
        f"gradients are never zeroed: at {len(stale)} of {len(checked)} checked steps "
        f"(first at step {first.step}) the backward added to the gradients the previous "
        f"optimizer step had used, in {where} ({len(params)} parameters): each step applies "
        "the sum of all past gradients",
        key=None if everywhere or not layers else layers[0] or ROOT,
        value=len(stale) / len(checked),
        step=first.step,
        evidence=(
            ("steps with stale gradients", float(len(stale))),
            ("steps checked", float(len(checked))),
            ("parameters", float(len(params))),
        ),
        threshold=ev.thresholds.grad_not_zeroed_fraction,
    )


RULE = FindingRule("grad_not_zeroed", Severity.ERROR, {"": FIX}, detect)

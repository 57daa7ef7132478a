"""nan: the first non-finite value (NaN/Inf), at whatever step it appeared, and where: the
forward, the loss, the backward or the inputs themselves."""

from __future__ import annotations

from collections.abc import Iterator

from ..samples import ROOT
from ._rule import Detection, Evidence, FindingRule, Severity

FIXES = {
    "": "Guard the operation: clamp what goes into log/sqrt/pow (x.clamp_min(eps)), add eps "
    "to denominators, use log_softmax / BCEWithLogitsLoss rather than log(softmax) / "
    "log(sigmoid); if it appears only after some steps, lower the learning rate.",
    "backward": "Its derivative is infinite there (sqrt or pow(x, p<1) at 0, log at 0, "
    "the norm of a zero vector, acos/asin at ±1): add eps inside the op or clamp its input.",
    "inputs": "Clean the inputs (torch.nan_to_num, or drop the bad examples) before they "
    "reach the model.",
}


def detect(ev: Evidence) -> Iterator[Detection]:
    sample = next((s for s in ev.samples if s.nan is not None), None)
    if sample is None:
        return
    site = sample.nan
    yield Detection(
        site.layer,
        site.message + ev.at(sample),
        key=site.layer or ROOT,
        step=sample.step,
        where=site.where,
        fix_for=site.where if site.where in FIXES else "",
    )


RULE = FindingRule("nan", Severity.ERROR, FIXES, detect, marks_layer_gradient=True)

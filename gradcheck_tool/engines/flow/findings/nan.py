"""nan: the first non-finite value (NaN/Inf), at whatever step it appeared, and where: the
forward, the loss, the backward or the inputs themselves."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..samples import ROOT, StepSample
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


def skipped_steps(samples: Sequence[StepSample]) -> list[StepSample]:
    """Steps whose non-finite gradients no optimizer applied, followed by a finite step: what
    mixed precision's GradScaler does on an overflow (it skips `optimizer.step()` and lowers
    its scale), by design and often in the first steps. Not from the inputs or the forward:
    those are the model's or the data's, skipped or not."""
    finite_after = [False] * len(samples)
    seen = False
    for i in range(len(samples) - 1, -1, -1):
        finite_after[i] = seen
        seen = seen or samples[i].nan is None
    return [
        s
        for i, s in enumerate(samples)
        if s.nan is not None
        and s.nan.where in ("backward", "loss")
        and s.stepped is False
        and finite_after[i]
    ]


def detect(ev: Evidence) -> Iterator[Detection]:
    skipped = {id(s) for s in skipped_steps(ev.samples)}
    sample = next((s for s in ev.samples if s.nan is not None and id(s) not in skipped), None)
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

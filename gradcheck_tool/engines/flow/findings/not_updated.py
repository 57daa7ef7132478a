"""not_updated: parameters that receive a nonzero gradient but that the optimizer steps do
not move: not in any param group, a param group with lr 0, or an update that leaves them
unchanged (Note [observing optimizer steps] in optim_watch.py). Frozen parameters
(requires_grad=False) get no gradient and are not this."""

from __future__ import annotations

from collections.abc import Iterator

from ..samples import ROOT, UpdateStatus
from ._rule import Detection, Evidence, FindingRule, Severity

FIXES = {
    "": "Something undoes the update: a gradient hook or mask that zeroes it, zero_grad() "
    "between backward() and step(), or an update too small for the parameter's dtype.",
    UpdateStatus.NOT_IN_OPTIMIZER.value: "Give these parameters to the optimizer: build it "
    "after the model is complete, from model.parameters() (layers added or replaced later "
    "are not in it), or add them with optimizer.add_param_group({'params': ...}); if they "
    "are meant to stay fixed, call requires_grad_(False) on them.",
    UpdateStatus.LR_ZERO.value: "Give that param group a learning rate above 0 (check the "
    "per-group lr and the scheduler), or freeze its parameters with requires_grad_(False).",
    UpdateStatus.GRAD_GONE.value: "Call zero_grad() before backward() (or after step()), "
    "not between backward() and step(): the step finds no gradient.",
}

WHY = {
    UpdateStatus.NOT_IN_OPTIMIZER: "in no optimizer's param groups",
    UpdateStatus.LR_ZERO: "in param group {group}, whose learning rate is 0",
    UpdateStatus.GRAD_GONE: "no .grad left when the optimizer stepped",
    UpdateStatus.UNCHANGED: "unchanged by the optimizer step",
}


def detect(ev: Evidence) -> Iterator[Detection]:
    history: dict[str, list[tuple[UpdateStatus, int | None]]] = {}
    for s in ev.samples:
        for name, status in s.param_updates.items():
            history.setdefault(name, []).append(status)
    # a parameter is stuck when no observed step moved it, for long enough: one step shows
    # it is in no param group; a zero lr or no update could be a warm-up's first step
    stuck: dict[tuple[UpdateStatus, int | None], list[str]] = {}
    for name, seen in history.items():
        if any(status is UpdateStatus.UPDATED for status, _ in seen):
            continue
        structural = seen[-1][0] is UpdateStatus.NOT_IN_OPTIMIZER
        needed = 1 if structural else ev.thresholds.not_updated_steps
        if len(seen) >= needed:
            stuck.setdefault(seen[-1], []).append(name)
    last, th_steps = ev.last, ev.thresholds.not_updated_steps
    for row in (r for r in last.rows if r.kind == "layer"):
        for (status, group), names in stuck.items():
            params = [p for p in row.params if p in names]
            if not params:
                continue
            steps = min(len(history[p]) for p in params)
            verb_s = "s" if len(params) == 1 else ""
            evidence: tuple[tuple[str, float], ...] = (("optimizer steps seen", float(steps)),)
            if row.grad_norm is not None:
                evidence += (("gradient norm", row.grad_norm),)
            if group is not None:
                evidence += (("param group", float(group)),)
            if status is UpdateStatus.LR_ZERO:
                evidence += (("lr", 0.0),)
            yield Detection(
                row.name,
                f"{', '.join(params)} receive{verb_s} gradients but never change{verb_s}: "
                f"{WHY[status].format(group=group)} ({steps} optimizer "
                f"step{'s' if steps != 1 else ''} seen)",
                key=row.key or ROOT,
                value=0.0,
                step=last.step,
                fix_for=status.value if status.value in FIXES else "",
                evidence=evidence,
                threshold=1.0 if status is UpdateStatus.NOT_IN_OPTIMIZER else float(th_steps),
            )


# a warning: training runs, without these layers (or on purpose: a head-only fine-tune that
# forgot requires_grad_(False), which the fix names)
RULE = FindingRule("not_updated", Severity.WARNING, FIXES, detect)

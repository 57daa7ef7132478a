"""not_updated: parameters that receive a nonzero gradient but that the optimizer steps do
not move: not in any param group, a param group with lr 0, or an update that leaves them
unchanged although lr·max|g| was representable next to max|w| in their dtype (Note
[observing optimizer steps] in optim_watch.py). One finding per reason, naming its layers.
Frozen parameters (requires_grad=False) get no gradient and are not this; updates below the
dtype's resolution (UpdateStatus.BELOW_RESOLUTION) are not a warning."""

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
            # an update below the dtype's resolution says nothing either way (a bias before
            # a norm layer, a branch behind a tiny LayerScale): not a step that failed
            if status[0] is not UpdateStatus.BELOW_RESOLUTION:
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
    layer_rows = [r for r in last.rows if r.kind == "layer"]
    # one finding per reason, naming its layers in forward order
    for (status, group), names in stuck.items():
        rows = [r for r in layer_rows if set(r.params) & set(names)]
        if not rows:
            continue
        params = [p for r in rows for p in r.params if p in names]
        steps = min(len(history[p]) for p in params)
        verb_s = "s" if len(params) == 1 else ""
        evidence: tuple[tuple[str, float], ...] = (("optimizer steps seen", float(steps)),)
        if len(rows) == 1:
            what = ", ".join(params)
            if rows[0].grad_norm is not None:
                evidence += (("gradient norm", rows[0].grad_norm),)
        else:
            layers = ", ".join(r.name or ROOT for r in rows)
            what = f"{len(params)} parameters in {len(rows)} layers ({layers})"
            evidence += (("layers", float(len(rows))), ("parameters", float(len(params))))
        if group is not None:
            evidence += (("param group", float(group)),)
        if status is UpdateStatus.LR_ZERO:
            evidence += (("lr", 0.0),)
        yield Detection(
            rows[0].name,
            f"{what} receive{verb_s} gradients but never change{verb_s}: "
            f"{WHY[status].format(group=group)} ({steps} optimizer "
            f"step{'s' if steps != 1 else ''} seen)",
            key=(rows[0].key or ROOT) if len(rows) == 1 else None,
            value=0.0,
            step=last.step,
            fix_for=status.value if status.value in FIXES else "",
            evidence=evidence,
            threshold=1.0 if status is UpdateStatus.NOT_IN_OPTIMIZER else float(th_steps),
        )


# a warning: training runs, without these layers (or on purpose: a head-only fine-tune that
# forgot requires_grad_(False), which the fix names)
RULE = FindingRule("not_updated", Severity.WARNING, FIXES, detect)

"""dead_relu: most units of a ReLU-like activation output 0 for every example of the batch
(so their gradient is 0 too), at the last step measured."""

from __future__ import annotations

from collections.abc import Iterator

from ._rule import Detection, Evidence, FindingRule, Severity, percent

FIX = (
    "Lower the learning rate, use He (kaiming) initialization, or switch to "
    "LeakyReLU so that negative inputs still pass a gradient."
)


def detect(ev: Evidence) -> Iterator[Detection]:
    last, limit = ev.last, ev.thresholds.dead_fraction
    examples = f"all {ev.batch} examples" if ev.batch else "every example"
    for r in last.rows:
        if r.kind == "activation" and r.dead_fraction is not None and r.dead_fraction > limit:
            yield Detection(
                r.name,
                f"{percent(r.dead_fraction)} of the {r.units} {r.unit}s of {r.display_name} are "
                f"dead: zero for {examples}{ev.at(last)}{ev.was(r.key, 'dead_fraction')}",
                key=r.key,
                value=r.dead_fraction,
                step=last.step,
                evidence=(("dead fraction", r.dead_fraction),),
                threshold=limit,
            )


RULE = FindingRule("dead_relu", Severity.WARNING, {"": FIX}, detect)

"""dead_relu: most units of a ReLU-like activation output 0 for every example of the batch
(so their gradient is 0 too), at the last step measured.

In a layer of a few units "most" must be more than a coin flip per unit gives: at init a
ReLU after pooled, mostly positive features (a squeeze-excitation block: timm's MobileNetV3
has 8 such units) is dead for every example in about half its units, by the sign of each
unit's weights. So the dead fraction must pass the threshold by one binomial standard
deviation, √(p(1-p)/n): 5 of 8 dead (62.5%) is not a finding, 6 of 8 is; for 100 units
the margin is 5 points."""

from __future__ import annotations

import math
from collections.abc import Iterator

from ._rule import Detection, Evidence, FindingRule, Severity, percent

FIX = (
    "Lower the learning rate, use He (kaiming) initialization, or switch to "
    "LeakyReLU so that negative inputs still pass a gradient."
)


def _margin(limit: float, units: int | None) -> float:
    """One binomial standard deviation of a fraction of `units` around `limit`."""
    return math.sqrt(limit * (1 - limit) / units) if units else 0.0


def detect(ev: Evidence) -> Iterator[Detection]:
    last, limit = ev.last, ev.thresholds.dead_fraction
    examples = f"all {ev.batch} examples" if ev.batch else "every example"
    for r in last.rows:
        if r.kind != "activation" or r.dead_fraction is None:
            continue
        above = limit + _margin(limit, r.units)
        if r.dead_fraction > above:
            yield Detection(
                r.name,
                f"{percent(r.dead_fraction)} of the {r.units} {r.unit}s of {r.display_name} are "
                f"dead: zero for {examples}{ev.at(last)}{ev.was(r.key, 'dead_fraction')}",
                key=r.key,
                value=r.dead_fraction,
                step=last.step,
                evidence=(("dead fraction", r.dead_fraction), ("units", float(r.units or 0))),
                threshold=above,
            )


RULE = FindingRule("dead_relu", Severity.WARNING, {"": FIX}, detect)

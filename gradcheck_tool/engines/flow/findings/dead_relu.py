"""dead_relu: most units of a ReLU-like activation output 0 for every example of the batch
(so their gradient is 0 too), at the last step measured.

In a layer of a few units "most" must be more than coin flips give: at init a ReLU after
pooled, mostly positive features (a squeeze-excitation block) is dead for every example in
about half its units, by the sign of each unit's weights: timm's MobileNetV3-Small has one
of 8 units with 6 dead at any image size. So the count of dead units must be one a coin
per unit (dead with the threshold's probability) would reach less than 1% of the time:
above n·p + 2.33·√(n·p(1-p)) + ½ (the normal approximation of the binomial tail, with its
continuity correction). With p = 50%: 8 of 8 units, 24 of 32, 63 of 100, 53.7% of 4096."""

from __future__ import annotations

import math
from collections.abc import Iterator

from ._rule import Detection, Evidence, FindingRule, Severity, percent

FIX = (
    "Lower the learning rate, use He (kaiming) initialization, or switch to "
    "LeakyReLU so that negative inputs still pass a gradient."
)


Z_ONE_PERCENT = 2.33  # the one-sided 1% point of the normal distribution


def beyond_chance(limit: float, units: int | None) -> float:
    """The dead fraction of `units` that coin flips (dead with probability `limit`) pass less
    than 1% of the time; just `limit` where the units are unknown."""
    if not units:
        return limit
    return limit + (Z_ONE_PERCENT * math.sqrt(units * limit * (1 - limit)) + 0.5) / units


def detect(ev: Evidence) -> Iterator[Detection]:
    last, limit = ev.last, ev.thresholds.dead_fraction
    examples = f"all {ev.batch} examples" if ev.batch else "every example"
    for r in last.rows:
        if r.kind != "activation" or r.dead_fraction is None:
            continue
        above = beyond_chance(limit, r.units)
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

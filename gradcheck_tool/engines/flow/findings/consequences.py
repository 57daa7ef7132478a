"""Root cause first: what a divergence explains is attached to it, not listed beside it.

The rule: when `diverging` fires, a finding of any other kind becomes one of its
`consequences` unless the same kind was already seen on the same row before anything went
wrong, i.e. unless its rule also finds it on the steps up to the lowest loss before the
blow-up (Note [divergence]). So a NaN, tanh units that saturate, ReLUs that die, gradients
that explode or become exactly zero after the loss took off are consequences; a tanh that was
saturated from the first step, or a parameter that never got a gradient, stays a finding of
its own; and a finding made on those earlier steps that the wreck hides at the end (exploding
gradients at the first step, silent once the last step is NaN) is reported as seen then.
Without a divergence the findings are returned as they are. No torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ....results import Finding
from ._divergence import before_trouble, find_blow_up
from ._rule import Evidence, FindingRule

CAUSE = "diverging"


def attach_consequences(
    findings: list[Finding], ev: Evidence, rules: Sequence[FindingRule]
) -> list[Finding]:
    """`findings` (in panel order) with those a divergence explains moved under it."""
    cause = next((f for f in findings if f.kind == CAUSE), None)
    if cause is None or find_blow_up(ev) is None:
        return findings
    # the steps before anything went wrong, judged by the same rules, without the verdicts
    # that need the whole run
    before = dataclasses.replace(ev, samples=before_trouble(ev), overfit=None)
    found_before = [f for rule in rules if rule.kind != CAUSE for f in rule.findings(before)]
    seen_before = {(f.kind, f.key) for f in found_before}
    kept: list[Finding] = []
    explained: list[Finding] = []
    for f in findings:
        if f is cause:
            continue
        (kept if (f.kind, f.key) in seen_before else explained).append(f)
    # what was true before the blow-up but the wreck hides (exploding gradients at the first
    # step go unreported once the last step is NaN): reported as seen then
    seen_after = {(f.kind, f.key) for f in findings}
    kept += [f for f in found_before if (f.kind, f.key) not in seen_after]
    order = {rule.kind: i for i, rule in enumerate(rules)}
    kept.sort(key=lambda f: order.get(f.kind, len(order)))  # stable: panel order
    return [dataclasses.replace(cause, consequences=tuple(explained)), *kept]

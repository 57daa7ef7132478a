"""Root cause first: what a divergence explains is attached to it, not listed beside it.

The rule: when `diverging` fires, a finding of any other kind becomes one of its
`consequences` unless the same kind was already seen on the same row before anything went
wrong, i.e. unless its rule also finds it on the steps up to the lowest loss before the
blow-up (Note [divergence]). So a NaN, tanh units that saturate, ReLUs that die, gradients
that explode or become exactly zero after the loss took off are consequences; a tanh that was
saturated from the first step, or a parameter that never got a gradient, stays a finding of
its own; and a finding made on those earlier steps that the wreck hides at the end (exploding
gradients at the first step, silent once the last step is NaN) is reported as seen then.

A loop that never zeroes its gradients (`grad_not_zeroed`) makes each update the sum of all
past ones: with it, too large updates and what they did go under the loop bug.

Without a divergence, updates too large for the weights (`update_too_large`) are the cause
in the same way, with the model as it was before its first update as "before": units that
died, gradients that vanished or exploded, a loss that stopped falling, all absent at the
first step, are what those steps did (a post-LN Transformer without warm-up: its first Adam
steps change layers by 20-200% of their weights and kill its ReLUs). Without either, the
findings are returned as they are. No torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ....results import Finding
from ._divergence import before_trouble, find_blow_up
from ._rule import Evidence, FindingRule
from ._updates import EARLY

DIVERGING, LARGE_UPDATES, SMALL_UPDATES = "diverging", "update_too_large", "update_too_small"
LOOP_BUG, EXPLODING = "grad_not_zeroed", "exploding"
ROOT_CAUSES = frozenset({LOOP_BUG, "not_updated"})  # training-loop bugs


def _under(findings: list[Finding], cause_kind: str, kind: str) -> list[Finding]:
    """The findings of `kind` moved under the first finding of `cause_kind`."""
    # flattened: the findings of `kind`, then what they explained
    moved = tuple(
        g
        for f in findings
        if f.kind == kind
        for g in (dataclasses.replace(f, consequences=()), *f.consequences)
    )
    out = []
    for f in findings:
        if f.kind == kind:
            continue
        if f.kind == cause_kind and moved:
            f = dataclasses.replace(f, consequences=(*f.consequences, *moved))
            moved = ()
        out.append(f)
    return out


def attach_consequences(
    findings: list[Finding], ev: Evidence, rules: Sequence[FindingRule]
) -> list[Finding]:
    """`findings` (in panel order) with those a divergence, or failing that too large
    updates, explain moved under it."""
    kinds = {f.kind for f in findings}
    large = LARGE_UPDATES in kinds and ev.multi
    loop_bug = large and LOOP_BUG in kinds  # it, not the divergence, is then the cause
    if DIVERGING in kinds and not loop_bug and find_blow_up(ev) is not None:
        # the update sizes over a run that blew up restate the cause, which the divergence
        # names with its largest update (too large), or describe the wreck (too small:
        # saturated layers stop moving): neither is a finding of its own
        restated = {LARGE_UPDATES, SMALL_UPDATES}
        findings = [f for f in findings if f.kind not in restated]
        return _attach(findings, ev, rules, DIVERGING, before_trouble(ev), hidden=True)
    if not large:
        return [f for f in findings if not _early(f)]
    attached = _attach(findings, ev, rules, LARGE_UPDATES, ev.samples[:1], hidden=False)
    if loop_bug:
        # gradients summed over every past step make each update as large as all of them
        # together: the large updates, and the damage they did, are what the loop bug does
        return _under(attached, LOOP_BUG, LARGE_UPDATES)
    # a run of large first steps is a finding only through the damage it did
    return [f for f in attached if not (_early(f) and not f.consequences)]


def _early(f: Finding) -> bool:
    return f.kind == LARGE_UPDATES and f.where == EARLY


def _attach(
    findings: list[Finding],
    ev: Evidence,
    rules: Sequence[FindingRule],
    kind: str,
    samples: Sequence,
    *,
    hidden: bool,
) -> list[Finding]:
    """Findings the rules do not also make on `samples` (the steps before the cause acted)
    go under the first finding of `kind`; with `hidden`, what those steps showed and the end
    does not is reported as seen then."""
    cause = next(f for f in findings if f.kind == kind)
    # the steps before anything went wrong, judged by the same rules, without the verdicts
    # that need the whole run
    before = dataclasses.replace(ev, samples=samples, overfit=None)
    found_before = [f for rule in rules if rule.kind != kind for f in rule.findings(before)]
    seen_before = {(f.kind, f.key) for f in found_before}
    kept: list[Finding] = []
    explained: list[Finding] = []
    for f in findings:
        if f is cause:
            continue
        # a loop bug is a cause, never a consequence (it cannot show before an optimizer
        # step, so "absent at the first step" says nothing about it)
        caused = (f.kind, f.key) not in seen_before and f.kind not in ROOT_CAUSES
        (explained if caused else kept).append(f)
    if hidden:
        # what was true before the blow-up but the wreck hides (exploding gradients at the
        # first step go unreported once the last step is NaN): reported as seen then
        seen_after = {(f.kind, f.key) for f in findings}
        kept += [f for f in found_before if (f.kind, f.key) not in seen_after]
    order = {rule.kind: i for i, rule in enumerate(rules)}
    kept.sort(key=lambda f: order.get(f.kind, len(order)))  # stable: panel order
    # the cause at its place in panel order among what stays (root causes come first there);
    # gradients already exploding before the first update go before a divergence they caused
    at = _position(kept, cause, order)
    if hidden:
        start = dataclasses.replace(ev, samples=ev.samples[:1], overfit=None)
        at_start = {
            (f.kind, f.key)
            for rule in rules
            if rule.kind == EXPLODING
            for f in rule.findings(start)
        }
        first = [f for f in kept if (f.kind, f.key) in at_start]
        kept = first + [f for f in kept if f not in first]
        at = max(at, len(first))
    return [*kept[:at], dataclasses.replace(cause, consequences=tuple(explained)), *kept[at:]]


def _position(kept: list[Finding], cause: Finding, order: dict[str, int]) -> int:
    """Where `cause` goes among `kept` in panel order."""
    rank = order.get(cause.kind, len(order))
    return next((i for i, f in enumerate(kept) if order.get(f.kind, len(order)) > rank), len(kept))

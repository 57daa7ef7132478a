'''The findings registry: one rule per kind of finding, one file each, in the order the
findings panel shows them. `FINDING_KINDS`, the `--fail-on` choices, the table styles and the
plot's highlights are all read from `RULES`.

A rule (`FindingRule`) is a kind, a `Severity`, its fix text(s) and a detection function over
the measured steps (`Evidence`: the `StepSample`s, oldest first, and the `FlowThresholds`). The
function yields a `Detection` per thing it saw; the rule turns each into a `Finding` with its
kind and fix. Rules are independent: each reads the evidence, none reads another's result;
after them one pass (consequences.py) attaches to a `diverging` finding the findings it
explains (root cause first).

Adding a kind of finding, e.g. a loss that is already enormous, is one file,
`findings/huge_loss.py`:

    """huge_loss: the loss itself is enormous: the targets or the loss are mis-scaled."""

    from collections.abc import Iterator

    from ._rule import Detection, Evidence, FindingRule, Severity

    FIX = "Scale the targets, or average the loss over the batch instead of summing it."


    def detect(ev: Evidence) -> Iterator[Detection]:
        last = ev.last
        if last.loss is not None and last.loss > 1e6:
            yield Detection("(loss)", f"the loss is {last.loss:.2e}{ev.at(last)}",
                            value=last.loss, step=last.step)


    RULE = FindingRule("huge_loss", Severity.WARNING, {"": FIX}, detect)

and one line here: `huge_loss.RULE` in `RULES`, where the panel should show it. `--fail-on
huge_loss`, its colour in the table (from its severity) and `FlowReport.kinds` follow. A
threshold belongs in `FlowThresholds`; a rule with several fixes keys them by case and names
the case in `Detection.fix_for` (see nan.py).
'''

from __future__ import annotations

from collections.abc import Sequence, Set

from ....errors import OptionError
from ....results import Finding, OverfitVerdict
from ..samples import StepSample
from ..thresholds import FlowThresholds
from . import (
    dead_relu,
    diverging,
    exploding,
    grad_not_zeroed,
    nan,
    no_grad,
    not_learning,
    not_updated,
    saturation,
    update_too_large,
    update_too_small,
    vanishing,
)
from ._rule import Detection, Evidence, FindingRule, Severity
from .consequences import attach_consequences

RULES: tuple[FindingRule, ...] = (
    # root causes first: a training loop that never zeroes or never updates, then a
    # divergence, which the findings below it may be consequences of (consequences.py)
    grad_not_zeroed.RULE,
    not_updated.RULE,
    diverging.RULE,
    nan.RULE,
    exploding.RULE,
    vanishing.RULE,
    update_too_large.RULE,
    update_too_small.RULE,
    dead_relu.RULE,
    saturation.RULE,
    not_learning.RULE,  # after the causes it may name, before the notices
    no_grad.RULE,
)

# Every kind of finding `gradtool flow` can report, in the order the findings panel shows them.
FINDING_KINDS: tuple[str, ...] = tuple(rule.kind for rule in RULES)


def finding_kinds() -> tuple[str, ...]:
    """The kinds of the registered rules, in panel order (read when called)."""
    return tuple(rule.kind for rule in RULES)


def rule_for(kind: str) -> FindingRule | None:
    """The rule of a kind of finding; None for a kind no rule has."""
    return next((rule for rule in RULES if rule.kind == kind), None)


def parse_fail_on(text: str | None) -> set[str]:
    """`nan,exploding` -> {"nan", "exploding"}; "all" is every kind; unknown kinds are errors."""
    if not text:
        return set()
    known = finding_kinds()
    kinds = {k.strip().lower() for k in text.split(",") if k.strip()}
    if "all" in kinds:
        return set(known)
    unknown = sorted(kinds - set(known))
    if unknown:
        raise OptionError(
            "fail_on",
            f"names unknown finding kind(s) {', '.join(unknown)}",
            hint=f"Use any of: {', '.join(known)} (comma-separated), or all.",
        )
    return kinds


def detect_findings(
    samples: Sequence[StepSample],
    thresholds: FlowThresholds,
    batch: int | None,
    comparable_keys: Set[str],
    *,
    optimizer: str | None = None,
    lr: float | None = None,
    overfit: OverfitVerdict | None = None,
    loss: str | None = None,
) -> list[Finding]:
    """Findings from the last step (dead units and norms develop while training), plus the
    first non-finite value at whatever step it appeared; rule by rule, in panel order; then
    what a divergence explains is attached to it (consequences.py)."""
    evidence = Evidence(
        samples, thresholds, batch, comparable_keys, optimizer, lr, overfit=overfit, loss=loss
    )
    found = [finding for rule in RULES for finding in rule.findings(evidence)]
    return attach_consequences(found, evidence, RULES)


__all__ = [
    "FINDING_KINDS",
    "RULES",
    "Detection",
    "Evidence",
    "FindingRule",
    "Severity",
    "detect_findings",
    "finding_kinds",
    "parse_fail_on",
    "rule_for",
]

"""What a finding rule is, and what every rule reads. No torch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Callable

from ....results import Finding, LayerStats, OverfitVerdict
from ..samples import StepSample
from ..thresholds import FlowThresholds


class Severity(str, Enum):
    """How bad a kind of finding is; the table, the panel and the plot colour by it."""

    ERROR = "error"  # training cannot work: NaN/Inf, exploding gradients
    WARNING = "warning"  # training works badly: vanishing gradients, dead or saturated units
    NOTICE = "notice"  # worth a look: a parameter without gradient may be meant to be frozen


@dataclass(frozen=True)
class Evidence:
    """What every rule reads: the measured steps, oldest first, and the thresholds."""

    samples: Sequence[StepSample]  # at least one
    thresholds: FlowThresholds
    batch: int | None = None  # examples in the batch, when known (flow(), not the Monitor)
    # rows whose RMS gradients compare across depth (weight matrices; see comparable_keys)
    comparable_keys: Set[str] = frozenset()
    # the optimizer the steps were (or would be) taken with: flow's --optimizer/--lr, the
    # Monitor's real optimizer once it has seen one step; None where unknown
    optimizer: str | None = None
    lr: float | None = None
    # the overfit-one-batch verdict of a --steps run with loss_fn (None elsewhere)
    overfit: OverfitVerdict | None = None
    # "loss_fn" (the user's loss), "projection" (flow's random projection of the output: its
    # scale says nothing about a real step's size), None where unknown (the Monitor: real)
    loss: str | None = None

    @property
    def first(self) -> StepSample:
        return self.samples[0]

    @property
    def last(self) -> StepSample:
        return self.samples[-1]

    @property
    def multi(self) -> bool:
        """Several steps were measured (--steps, the Monitor): messages name the step."""
        return len(self.samples) > 1

    def at(self, sample: StepSample) -> str:
        return f" at step {sample.step}" if self.multi else ""

    @cached_property
    def first_rows(self) -> dict[str, LayerStats]:
        return {r.key: r for r in self.first.rows}

    def was(self, key: str, fraction: str) -> str:
        """ " (was 12.5% at step 1)": a row's fraction at the first step, when trained."""
        before = self.first_rows.get(key)
        value = getattr(before, fraction) if before is not None else None
        if not self.multi or value is None:
            return ""
        return f" (was {percent(value)} at step {self.first.step})"


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


@dataclass(frozen=True)
class Detection:
    """What a rule saw once: where, the message, and the numbers its Finding carries."""

    layer: str  # named_modules() name ("" = the model), or "(loss)" / "(inputs)"
    message: str
    key: str | None = None  # the row it is about, when it is about one row
    value: float | None = None
    step: int | None = None
    where: str | None = None
    fix_for: str = ""  # which of the rule's fixes applies; "" is its default
    # the numbers that triggered it, by name ("grad/weight": 1.2e5), and the threshold
    evidence: tuple[tuple[str, float], ...] = ()
    threshold: float | None = None


@dataclass(frozen=True)
class FindingRule:
    """One kind of finding: its name, how bad it is, its fixes, and how to detect it."""

    kind: str  # the name in reports, in --fail-on, in the panel
    severity: Severity
    fixes: Mapping[str, str]  # fix text by case; "" is the default
    detect: Callable[[Evidence], Iterable[Detection]]
    # the plot draws the gradient bar of the layer a finding of this kind points at in red
    marks_layer_gradient: bool = False

    def __post_init__(self) -> None:
        if "" not in self.fixes:
            raise ValueError(f"finding rule {self.kind!r} needs a default fix (key '')")

    def findings(self, evidence: Evidence) -> list[Finding]:
        return [
            Finding(
                self.kind,
                d.layer,
                d.message,
                self.fixes[d.fix_for],
                key=d.key,
                value=d.value,
                step=d.step,
                where=d.where,
                evidence=d.evidence,
                threshold=d.threshold,
            )
            for d in self.detect(evidence)
        ]

"""The scalars a recorded step gives a dashboard: per layer, the gradient norm and the
optimizer step's update/weight ratio; per activation, the dead, inactive and saturated
fractions; per report, the number of findings. One naming for every sink (TensorBoard,
Lightning's loggers, the Hugging Face Trainer's logs). No torch."""

from __future__ import annotations

from collections.abc import Iterable, Set
from typing import Protocol

from ..results import FlowReport, LayerStats

PREFIX = "gradtool"
FINDINGS_TAG = f"{PREFIX}/findings"  # findings in the report, consequences not counted
ERRORS_TAG = f"{PREFIX}/error_findings"  # those of them whose kind is an error

# tag group -> the LayerStats field it reads, for rows of that kind
LAYER_FIELDS = {"grad_norm": "grad_norm", "update_ratio": "update_ratio"}
ACTIVATION_FIELDS = {
    "dead_fraction": "dead_fraction",
    "inactive_fraction": "inactive_fraction",
    "saturated_fraction": "saturated_fraction",
}


def tag(group: str, key: str) -> str:
    """`gradtool/grad_norm/encoder.fc1`: one chart per quantity group in TensorBoard."""
    return f"{PREFIX}/{group}/{key}"


# measured by the optimizer step after the step: known once that step has been read back
AFTER_STEP = frozenset({"update_ratio"})
IN_STEP = frozenset({*LAYER_FIELDS, *ACTIVATION_FIELDS}) - AFTER_STEP


def step_scalars(rows: Iterable[LayerStats], groups: Set[str] | None = None) -> dict[str, float]:
    """Every measured number of one step's rows (of `groups` only, if given), by tag (a
    quantity not measured, e.g. the update ratio of a step no optimizer followed, has no
    tag). NaN/Inf are kept: a dashboard should show a gradient that became NaN."""
    out: dict[str, float] = {}
    for row in rows:
        fields = LAYER_FIELDS if row.kind == "layer" else ACTIVATION_FIELDS
        for group, name in fields.items():
            if groups is not None and group not in groups:
                continue
            value = getattr(row, name)
            if value is not None:
                out[tag(group, row.key)] = float(value)
    return out


def findings_scalars(report: FlowReport) -> dict[str, float]:
    """How many findings the report has, and how many of them are errors."""
    from ..engines.flow.findings import rule_for
    from ..engines.flow.findings._rule import Severity

    errors = 0
    for f in report.findings:
        rule = rule_for(f.kind)
        errors += rule is not None and rule.severity is Severity.ERROR
    return {FINDINGS_TAG: float(len(report.findings)), ERRORS_TAG: float(errors)}


class ScalarSink(Protocol):
    """Where a Monitor's scalars go: one call per recorded step, at its step number."""

    def write_step(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...

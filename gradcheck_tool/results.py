"""Plain frozen dataclasses that every engine returns and every renderer reads.

Nothing here imports torch: reports can be built by hand in tests of the renderers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# The tutorial's bands for the relative error |a - n| / (|a| + |n|).
RATING_BANDS: tuple[tuple[float, str], ...] = (
    (1e-7, "excellent"),
    (1e-5, "acceptable"),
    (1e-3, "suspicious"),
)


def rating_for(rel_error: float) -> str:
    """Name the tutorial's band for a relative error; NaN/Inf is always a bug."""
    if not math.isfinite(rel_error):
        return "bug"
    for limit, name in RATING_BANDS:
        if rel_error <= limit:
            return name
    return "bug"


def _json_float(value: float | None) -> float | str | None:
    """JSON has no NaN/Inf: write them as strings so the file stays valid."""
    if value is None or math.isfinite(value):
        return value
    return str(value)  # "nan", "inf", "-inf"


@dataclass(frozen=True)
class WorstEntry:
    """One coordinate of a tensor where analytic and numeric gradients disagree most."""

    index: tuple[int, ...]
    analytic: float
    numeric: float

    @property
    def abs_error(self) -> float:
        return abs(self.analytic - self.numeric)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": list(self.index),
            "analytic": _json_float(self.analytic),
            "numeric": _json_float(self.numeric),
            "abs_error": _json_float(self.abs_error),
        }


@dataclass(frozen=True)
class SweepPoint:
    """Relative error of one tensor at one finite-difference step size."""

    eps: float
    rel_error: float

    def to_dict(self) -> dict[str, Any]:
        return {"eps": self.eps, "rel_error": _json_float(self.rel_error)}


@dataclass(frozen=True)
class TensorResult:
    """The verdict for one checked tensor (a parameter or an input)."""

    name: str
    kind: str  # "parameter" | "input"
    shape: tuple[int, ...]
    numel: int
    checked: int
    rel_error: float
    rating: str
    passed: bool
    note: str = ""
    worst: tuple[WorstEntry, ...] = ()
    kinks: int = 0
    hint: str | None = None
    direction_error: float | None = None
    sweep: tuple[SweepPoint, ...] = ()
    sweep_verdict: str | None = None

    @property
    def coverage(self) -> float:
        return self.checked / self.numel if self.numel else 1.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "numel": self.numel,
            "checked": self.checked,
            "rel_error": _json_float(self.rel_error),
            "rating": self.rating,
            "passed": self.passed,
            "note": self.note,
            "worst": [w.to_dict() for w in self.worst],
            "kinks": self.kinks,
            "hint": self.hint,
            "direction_rel_error": _json_float(self.direction_error),
        }
        if self.sweep:
            out["sweep"] = [p.to_dict() for p in self.sweep]
            out["sweep_verdict"] = self.sweep_verdict
        return out


@dataclass(frozen=True)
class CheckReport:
    """Everything `gradtool check` found about one target."""

    target: str
    found_by: str
    tolerance: float
    eps: float
    results: tuple[TensorResult, ...]
    version: str
    dtype: str = "float64"
    evaluation: str = "serial"  # "batched" (vmap) or "serial"
    fallback_reason: str | None = None
    warnings: tuple[str, ...] = ()
    nondeterministic: bool = False
    noise: float | None = None
    interrupted: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            not self.interrupted
            and not self.nondeterministic
            and all(r.passed for r in self.results)
        )

    @property
    def failures(self) -> tuple[TensorResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def result(self, name: str) -> TensorResult:
        """The result named `name`; KeyError lists the names there are."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no result named {name!r}; have {[r.name for r in self.results]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "gradtool",
            "version": self.version,
            "command": "check",
            "target": self.target,
            "found_by": self.found_by,
            "passed": self.passed,
            "tolerance": self.tolerance,
            "eps": self.eps,
            "dtype": self.dtype,
            "evaluation": self.evaluation,
            "fallback_reason": self.fallback_reason,
            "nondeterministic": self.nondeterministic,
            "noise": _json_float(self.noise),
            "interrupted": self.interrupted,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
            "results": [r.to_dict() for r in self.results],
        }

"""Plain frozen dataclasses that every engine returns and every renderer reads.

Nothing here imports torch: reports can be built by hand in tests of the renderers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._paths import shown_path

# The tutorial's bands for the relative error |a - n| / (|a| + |n|).
RATING_BANDS: tuple[tuple[float, str], ...] = (
    (1e-7, "excellent"),
    (1e-5, "acceptable"),
    (1e-3, "suspicious"),
)


# The exit code of a run that was cut short, by its reason (a report's `interrupted`).
EXIT_STOPPED = {"timeout": 124, "interrupt": 130, "terminated": 143}


def rating_for(rel_error: float, scale: float = 1.0) -> str:
    """Name the tutorial's band for a relative error; NaN/Inf is always a bug.

    `scale` stretches the bands for weaker checks (float32: tolerance 1e-2 → scale 1000).
    """
    if not math.isfinite(rel_error):
        return "bug"
    for limit, name in RATING_BANDS:
        if rel_error <= limit * scale:
            return name
    return "bug"


def _json_float(value: float | None) -> float | str | None:
    """JSON has no NaN/Inf: write them as strings so the file stays valid."""
    if value is None or math.isfinite(value):
        return value
    return str(value)  # "nan", "inf", "-inf"


@dataclass(frozen=True)
class SourceLocation:
    """Where in the user's code a verdict points: the line of a Function's `backward`, of
    the module class that owns a parameter, or of the `forward` that uses it. `file` is an
    absolute path; `to_dict` writes it relative to the working directory when it lies
    under it (as CI annotations need)."""

    file: str
    line: int
    what: str  # e.g. "MyFn.backward", "class Block", "Net.forward"

    @property
    def display_file(self) -> str:
        return shown_path(self.file)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.display_file, "line": self.line, "what": self.what}


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
    """Relative error of one tensor at one finite-difference step size (NaN: unresolved)."""

    eps: float
    rel_error: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "rel_error": None if math.isnan(self.rel_error) else _json_float(self.rel_error),
        }


@dataclass(frozen=True)
class Unchecked:
    """A tensor that could carry a gradient but was not checked, and why."""

    name: str
    kind: str  # "parameter" | "buffer" | "input"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class TensorResult:
    """The verdict for one checked tensor (a parameter, a buffer or an input).

    `status`: "pass" (verified to the tolerance, or a gradient that is zero where the loss
    does not move either), "fail", "inconclusive" (finite differences could not resolve the
    gradient at any step tried: neither verified nor refuted), or "not judged" (a
    nondeterministic forward)."""

    name: str
    kind: str  # "parameter" | "buffer" | "input"
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
    inconclusive: bool = False
    complex: bool = False  # a complex tensor, checked as (real, imaginary) pairs: shape (..., 2)
    judged_eps: float | None = None  # the step of the verdict, when not the default one
    verified_to: float | None = None  # a pass only to this precision, coarser than tolerance
    zero: bool = False  # passed as a zero gradient (the loss does not move either)
    directions: int = 0  # random directions compared (each moves every entry at once)
    serial_reason: str | None = None  # why its points were evaluated one at a time
    source: SourceLocation | None = None  # where in the user's code this gradient is made

    @property
    def status(self) -> str:
        if self.inconclusive:
            return "inconclusive"
        if self.passed:
            return "pass"
        return "not judged" if self.rating == "n/a" else "fail"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "complex": self.complex,
            "zero_gradient": self.zero,
            "judged_eps": self.judged_eps,
            "verified_to": self.verified_to,
            "shape": list(self.shape),
            "numel": self.numel,
            "checked": self.checked,
            "directions": self.directions,
            "serial_reason": self.serial_reason,
            "rel_error": _json_float(self.rel_error),
            "rating": self.rating,
            "passed": self.passed,
            "note": self.note,
            "worst": [w.to_dict() for w in self.worst],
            "kinks": self.kinks,
            "hint": self.hint,
            "direction_rel_error": _json_float(self.direction_error),
            "source": self.source.to_dict() if self.source is not None else None,
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
    device: str = "cpu"  # where the evaluations ran, e.g. "cuda:0"
    evaluation: str = "serial"  # "batched" (vmap) or "serial"
    fallback_reason: str | None = None
    warnings: tuple[str, ...] = ()
    nondeterministic: bool = False
    noise: float | None = None
    # why the run was cut short: "interrupt" (Ctrl-C), "terminated" (SIGTERM), "timeout"
    # (--timeout); None when it ran to the end. A partial report then.
    interrupted: str | None = None
    seconds: float = 0.0
    unchecked: tuple[Unchecked, ...] = ()  # tensors that could carry a gradient, left out
    left_out_outputs: tuple[str, ...] = ()  # outputs autograd marks non-differentiable
    lower_precision: tuple[str, ...] = ()  # where the forward computes below the check dtype
    default_dtype: str | None = None  # torch's default dtype while the user's code ran

    @property
    def passed(self) -> bool:
        """Every tensor verified: none failed, none inconclusive, nothing interrupted."""
        return (
            not self.interrupted
            and not self.nondeterministic
            and all(r.passed for r in self.results)
        )

    @property
    def exit_code(self) -> int:
        """As `gradtool check` exits on this report: the stop's code when it was cut short,
        2 for a forward that can't be judged (nondeterministic), else 0 or 1."""
        if self.interrupted:
            return EXIT_STOPPED.get(self.interrupted, EXIT_STOPPED["interrupt"])
        if self.nondeterministic:
            return 2
        return 0 if self.passed else 1

    @property
    def failures(self) -> tuple[TensorResult, ...]:
        return tuple(r for r in self.results if not r.passed and not r.inconclusive)

    @property
    def inconclusive(self) -> tuple[TensorResult, ...]:
        return tuple(r for r in self.results if r.inconclusive)

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
            "device": self.device,
            "evaluation": self.evaluation,
            "fallback_reason": self.fallback_reason,
            "nondeterministic": self.nondeterministic,
            "noise": _json_float(self.noise),
            "interrupted": self.interrupted,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
            "counts": {
                status: sum(r.status == status for r in self.results)
                for status in ("pass", "fail", "inconclusive", "not judged")
            },
            "results": [r.to_dict() for r in self.results],
            "unchecked": [u.to_dict() for u in self.unchecked],
            "left_out_outputs": list(self.left_out_outputs),
            "lower_precision": list(self.lower_precision),
            "default_dtype": self.default_dtype,
        }


# --- gradtool flow -------------------------------------------------------------------------


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    if denominator == 0:
        return math.inf if numerator > 0 else (math.nan if numerator != numerator else 0.0)
    return numerator / denominator


@dataclass(frozen=True)
class LayerStats:
    """One row of `gradtool flow`, in forward execution order.

    kind "layer": a module that owns parameters; the norms are over its own parameters.
    kind "activation": one call of an activation, either a module (`nn.ReLU`) or a functional
    call (`torch.relu`, `F.gelu`) attributed to the module whose forward made it (`via`).
    """

    name: str  # named_modules() name; "" is the model itself
    type: str  # module class name ("Linear", "ReLU"), or the activation of a functional call
    kind: str  # "layer" | "activation"
    key: str  # unique row id: "fc1", "act#2" (second call), "block:relu" (functional)
    order: int
    calls: int = 1  # how often the module ran (layers) / how many rows share `name` (activations)
    call: int | None = None  # activations: which call this row is, 1-based
    via: str | None = None  # functional activation that produced it, e.g. "torch.relu"
    params: tuple[str, ...] = ()
    numel: int = 0
    grad_norm: float | None = None
    weight_norm: float | None = None
    max_abs_grad: float | None = None
    output_grad_norm: float | None = None  # norm of the gradient reaching the layer's output
    output_numel: int | None = None  # elements of that output (all calls)
    frozen: bool = False
    units: int | None = None
    unit: str | None = None  # "feature" | "channel" | "element"
    dead_fraction: float | None = None  # zero for every example (ReLU-like)
    inactive_fraction: float | None = None  # negative for every example (leaky/smooth)
    saturated_fraction: float | None = None  # outputs within the margin of an asymptote
    # ‖Δw‖/‖w‖ of the optimizer step after this step (None: no step observed, or none of the
    # layer's parameters was updated by one)
    update_ratio: float | None = None
    note: str = ""

    @property
    def grad_weight_ratio(self) -> float | None:
        return _ratio(self.grad_norm, self.weight_norm)

    @property
    def display_name(self) -> str:
        """`fc1`, `(model) · torch.relu`, `act [call 2/3]`."""
        text = self.name or "(model)"
        if self.via:
            text += f" · {self.via}"
        if self.kind == "activation" and self.calls > 1 and self.call is not None:
            text += f" [call {self.call}/{self.calls}]"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "kind": self.kind,
            "key": self.key,
            "order": self.order,
            "calls": self.calls,
            "call": self.call,
            "via": self.via,
            "params": list(self.params),
            "numel": self.numel,
            "grad_norm": _json_float(self.grad_norm),
            "weight_norm": _json_float(self.weight_norm),
            "grad_weight_ratio": _json_float(self.grad_weight_ratio),
            "max_abs_grad": _json_float(self.max_abs_grad),
            "output_grad_norm": _json_float(self.output_grad_norm),
            "frozen": self.frozen,
            "units": self.units,
            "unit": self.unit,
            "dead_fraction": _json_float(self.dead_fraction),
            "inactive_fraction": _json_float(self.inactive_fraction),
            "saturated_fraction": _json_float(self.saturated_fraction),
            "update_ratio": _json_float(self.update_ratio),
            "note": self.note,
        }


@dataclass(frozen=True)
class Finding:
    """One diagnosis: what (`kind`), where (`layer`), a one-line message and the fix."""

    kind: str  # a finding rule's kind (engines/flow/findings: nan, exploding, ...)
    layer: str  # named_modules() name ("" = the model), or "(loss)" / "(inputs)"
    message: str
    fix: str
    key: str | None = None  # the row of `layers` it is about, when it is about one row
    value: float | None = None  # the measured quantity (fraction, ratio, norm)
    step: int | None = None  # the training step it was seen at (1-based)
    # nan: "forward" | "backward" | "loss" | "inputs"; update_too_large: "early steps" (a run
    # of large first steps, reported for the damage it did)
    where: str | None = None
    # the numbers that triggered it, by name, and the threshold they crossed
    evidence: tuple[tuple[str, float], ...] = ()
    threshold: float | None = None
    # findings this one explains (e.g. NaN and saturation after the loss diverged): shown
    # under it, not as causes of their own
    consequences: tuple[Finding, ...] = ()
    source: SourceLocation | None = None  # the layer's module class in the user's code

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "message": self.message,
            "fix": self.fix,
            "key": self.key,
            "value": _json_float(self.value),
            "step": self.step,
            "where": self.where,
            "evidence": {name: _json_float(v) for name, v in self.evidence},
            "threshold": _json_float(self.threshold),
            "consequences": [c.to_dict() for c in self.consequences],
            "source": self.source.to_dict() if self.source is not None else None,
        }


@dataclass(frozen=True)
class RowSample:
    """The per-step numbers of one row, for the history."""

    grad_norm: float | None = None
    weight_norm: float | None = None
    max_abs_grad: float | None = None
    dead_fraction: float | None = None
    inactive_fraction: float | None = None
    saturated_fraction: float | None = None
    update_ratio: float | None = None  # ‖Δw‖/‖w‖ of the optimizer step after this step

    def to_dict(self) -> dict[str, Any]:
        return {
            name: _json_float(value)
            for name, value in (
                ("grad_norm", self.grad_norm),
                ("weight_norm", self.weight_norm),
                ("max_abs_grad", self.max_abs_grad),
                ("dead_fraction", self.dead_fraction),
                ("inactive_fraction", self.inactive_fraction),
                ("saturated_fraction", self.saturated_fraction),
                ("update_ratio", self.update_ratio),
            )
            if value is not None
        }


@dataclass(frozen=True)
class StepRecord:
    """One measured training step: its loss and every row's numbers, keyed by row key."""

    step: int
    loss: float | None
    rows: tuple[tuple[str, RowSample], ...]

    def row(self, key: str) -> RowSample | None:
        for k, sample in self.rows:
            if k == key:
                return sample
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "loss": _json_float(self.loss),
            "rows": {k: s.to_dict() for k, s in self.rows},
        }


@dataclass(frozen=True)
class OverfitVerdict:
    """The tutorial's "overfit one batch" check, from the loss over `--steps`."""

    applicable: bool
    reached: bool | None  # did the loss go near zero (None when not applicable)
    first_loss: float | None
    last_loss: float | None
    min_loss: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "applicable": self.applicable,
            "reached": self.reached,
            "first_loss": _json_float(self.first_loss),
            "last_loss": _json_float(self.last_loss),
            "min_loss": _json_float(self.min_loss),
            "message": self.message,
        }


# The quantities whose first and last values make the "trend" of a multi-step run.
TREND_FIELDS: tuple[str, ...] = (
    "grad_norm",
    "weight_norm",
    "dead_fraction",
    "inactive_fraction",
    "saturated_fraction",
)


@dataclass(frozen=True)
class FlowReport:
    """Everything `gradtool flow` (or a `Monitor`) measured and concluded about one model."""

    target: str
    version: str
    layers: tuple[LayerStats, ...]
    findings: tuple[Finding, ...]
    found_by: str = ""
    source: str = "flow"  # "flow" (gradtool flow / flow()) | "monitor"
    dtype: str = ""
    device: str = ""
    mode: str = "train"
    batch_size: int | None = None
    loss: str = "projection"  # "projection" (seeded random projection) | "loss_fn" | "user"
    steps: int = 1  # steps measured
    steps_requested: int = 1
    optimizer: str | None = None
    lr: float | None = None
    every: int | None = None  # monitor: record every N-th step
    steps_seen: int | None = None  # monitor: training steps seen, recorded or not
    history: tuple[StepRecord, ...] = ()
    overfit: OverfitVerdict | None = None
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    # the verdict: the kinds `--fail-on` makes fatal, and whether the run was cut short
    # ("interrupt" for Ctrl-C, "terminated" for SIGTERM, "timeout" for --timeout)
    fail_on: tuple[str, ...] = ()
    interrupted: str | None = None
    processes: int = 1  # flow --nproc: the processes (DDP) the batch was split across

    @property
    def failed_kinds(self) -> tuple[str, ...]:
        """The kinds seen (consequences included) that `fail_on` makes fatal, in the
        findings' order."""
        fatal = set(self.fail_on)
        return tuple(k for k in self.kinds_seen if k in fatal)

    @property
    def passed(self) -> bool:
        """No finding of a `fail_on` kind, and the run was not cut short."""
        return not self.failed_kinds and not self.interrupted

    @property
    def exit_code(self) -> int:
        """As `gradtool flow` exits on this report: the stop's code when it was cut short,
        else 1 for a finding of a `fail_on` kind, else 0."""
        if self.interrupted:
            return EXIT_STOPPED.get(self.interrupted, EXIT_STOPPED["interrupt"])
        return 1 if self.failed_kinds else 0

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of finding present, each once, in the order of the findings (which the
        engine lists in the findings registry's order)."""
        return tuple(dict.fromkeys(f.kind for f in self.findings))

    @property
    def kinds_seen(self) -> tuple[str, ...]:
        """Every kind present, consequences included (`--fail-on nan` fails a run whose NaN
        is listed under the divergence that caused it)."""
        return tuple(
            dict.fromkeys(
                k for f in self.findings for k in (f.kind, *(c.kind for c in f.consequences))
            )
        )

    def findings_of(self, kind: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.kind == kind)

    def row(self, key: str) -> LayerStats:
        """The row with this key (or, failing that, the only row with this name)."""
        for r in self.layers:
            if r.key == key:
                return r
        named = [r for r in self.layers if r.name == key]
        if len(named) == 1:
            return named[0]
        raise KeyError(f"no single row {key!r}; have {[r.key for r in self.layers]}")

    @property
    def trend(self) -> dict[str, dict[str, tuple[float | None, float | None]]]:
        """Per row key: (first, last) of each TREND_FIELDS quantity over the history."""
        if len(self.history) < 2:
            return {}
        first, last = self.history[0], self.history[-1]
        out: dict[str, dict[str, tuple[float | None, float | None]]] = {}
        for key, end in last.rows:
            start = first.row(key)
            pairs = {}
            for name in TREND_FIELDS:
                a = getattr(start, name) if start is not None else None
                b = getattr(end, name)
                if a is not None or b is not None:
                    pairs[name] = (a, b)
            if pairs:
                out[key] = pairs
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tool": "gradtool",
            "version": self.version,
            "command": "flow",
            "source": self.source,
            "target": self.target,
            "found_by": self.found_by,
            "passed": self.passed,
            "fail_on": list(self.fail_on),
            "failed_kinds": list(self.failed_kinds),
            "interrupted": self.interrupted,
            "dtype": self.dtype,
            "device": self.device,
            "mode": self.mode,
            "batch_size": self.batch_size,
            "loss": self.loss,
            "steps": self.steps,
            "layers": [r.to_dict() for r in self.layers],
            "findings": [f.to_dict() for f in self.findings],
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }
        if self.processes > 1:
            out["processes"] = self.processes
        if self.source == "monitor":
            out["every"] = self.every
            out["steps_seen"] = self.steps_seen
        if self.steps_requested > 1 or self.source == "monitor":
            out["steps_requested"] = self.steps_requested
            out["optimizer"] = self.optimizer
            out["lr"] = self.lr
            out["history"] = [h.to_dict() for h in self.history]
            out["trend"] = {
                key: {name: [_json_float(a), _json_float(b)] for name, (a, b) in pairs.items()}
                for key, pairs in self.trend.items()
            }
            out["overfit"] = self.overfit.to_dict() if self.overfit is not None else None
        return out


# --- gradtool memory: what the backward keeps, per module ------------------------------------


@dataclass(frozen=True)
class ModuleMemory:
    """One module of the model in forward order, as `gradtool memory` measured it. Bytes and
    times include the module's submodules; a storage is counted once however many views or
    modules save it."""

    name: str  # qualified name, "" for the model itself
    type: str  # class name
    depth: int  # 0 the model, 1 its children, ...
    calls: int  # times its forward ran in the step
    saved_bytes: int  # saved for the backward by its forward (submodules included)
    own_saved_bytes: int  # by its own operations, not a submodule's
    param_bytes: int
    grad_bytes: int  # its parameters' .grad after the backward
    forward_ms: float
    backward_ms: float
    # made by its forward's operations and still alive when the backward starts (the held
    # measurement, submodules included); the checkpointed copy's rows have only this
    held_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "depth": self.depth,
            "calls": self.calls,
            "saved_bytes": self.saved_bytes,
            "own_saved_bytes": self.own_saved_bytes,
            "param_bytes": self.param_bytes,
            "grad_bytes": self.grad_bytes,
            "forward_ms": round(self.forward_ms, 4),
            "backward_ms": round(self.backward_ms, 4),
            "held_bytes": self.held_bytes,
        }


@dataclass(frozen=True)
class CheckpointCandidate:
    """A block worth wrapping in torch.utils.checkpoint: what it would free between the
    forward and the backward, and what recomputing its forward costs."""

    name: str
    type: str
    saved_bytes: int  # saved for the backward inside the block
    predicted_saving_bytes: int  # of those, freed by checkpointing (its inputs stay saved)
    recompute_ms: float  # one more forward of the block in the backward: measured (median)
    # the recompute as a fraction of the step's forward + backward: by FLOPs (FlopCounterMode)
    # when torch counts any for the block, else by measured time (cost_from says which)
    extra_compute: float
    # the modules it wraps: (name,) for a single module; for a stack of repeated layers
    # ("encoder.layers.0-11") each layer, every one wrapped on its own
    blocks: tuple[str, ...] = ()
    recompute_flops: int = 0  # the block's forward FLOPs, as torch's FlopCounterMode counts
    cost_from: str = "flops"  # "flops", or "ms" for a block torch counts no FLOPs for

    @property
    def modules(self) -> tuple[str, ...]:
        return self.blocks or (self.name,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "blocks": list(self.modules),
            "saved_bytes": self.saved_bytes,
            "predicted_saving_bytes": self.predicted_saving_bytes,
            "recompute_ms": round(self.recompute_ms, 4),
            "recompute_flops": self.recompute_flops,
            "extra_compute": round(self.extra_compute, 4),
            "cost_from": self.cost_from,
        }


@dataclass(frozen=True)
class CheckpointResult:
    """`--apply-checkpoint`: the advice applied to a copy and measured again, and gradtool's
    check of the checkpointed copy."""

    blocks: tuple[str, ...]  # as named (a stack as "encoder.layers.0-11")
    predicted_saving_bytes: int
    measured_saving_bytes: int
    held_before: int  # bytes alive between the forward and the backward, measured
    held_after: int
    peak_before: int | None  # CUDA: torch.cuda.max_memory_allocated over the step
    peak_after: int | None
    step_ms_before: float
    step_ms_after: float
    check_passed: bool  # gradtool check of the checkpointed copy
    check_summary: str  # its verdict in one line
    check_worst_error: float | None = None
    modules: tuple[ModuleMemory, ...] = ()  # the checkpointed copy, for --plot's after
    # the checkpointed copy's autograd gradients against the plain copy's: the largest
    # difference relative to each gradient's largest entry
    grad_difference: float | None = None
    wrapped: tuple[str, ...] = ()  # the modules wrapped in torch.utils.checkpoint, each
    check_seconds: float | None = None  # the wall time of gradtool check of the copy
    # tensors the check fails on the checkpointed copy AND on a plain copy (re-checked with
    # wrt= those names): a question for `gradtool check`, not for checkpointing
    fails_without_checkpoint: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks": list(self.blocks),
            "wrapped": list(self.wrapped or self.blocks),
            "predicted_saving_bytes": self.predicted_saving_bytes,
            "measured_saving_bytes": self.measured_saving_bytes,
            "held_before": self.held_before,
            "held_after": self.held_after,
            "peak_before": self.peak_before,
            "peak_after": self.peak_after,
            "step_ms_before": round(self.step_ms_before, 3),
            "step_ms_after": round(self.step_ms_after, 3),
            "check_passed": self.check_passed,
            "check_summary": self.check_summary,
            "check_worst_error": _json_float(self.check_worst_error),
            "grad_difference": _json_float(self.grad_difference),
            "check_seconds": None if self.check_seconds is None else round(self.check_seconds, 2),
            "fails_without_checkpoint": list(self.fails_without_checkpoint),
            "modules": [m.to_dict() for m in self.modules],
        }


@dataclass(frozen=True)
class MemoryReport:
    """Everything `gradtool memory` measured on one forward and backward of a model."""

    target: str
    version: str
    modules: tuple[ModuleMemory, ...]
    saved_bytes_total: int  # every storage saved for the backward, once (no parameters)
    param_bytes_total: int
    grad_bytes_total: int
    held_bytes: int  # measured: bytes the forward made that are alive until the backward
    peak_bytes: int | None
    peak_source: str  # "torch.cuda.max_memory_allocated" | "saved-tensor accounting"
    checkpoint_candidates: tuple[CheckpointCandidate, ...] = ()
    checkpoint: CheckpointResult | None = None
    found_by: str = ""
    device: str = ""
    dtype: str = ""
    batch_size: int | None = None
    input_bytes: int = 0
    loss_saved_bytes: int = 0  # saved by the loss (not a module; in saved_bytes_total)
    held_cuda_bytes: int | None = None  # CUDA: memory_allocated after the forward minus before
    step_ms: float = 0.0  # the probed step's forward + backward
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    interrupted: str | None = None

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @property
    def exit_code(self) -> int:
        """The stop's code when cut short; 1 when the checkpointed copy failed its check."""
        if self.interrupted:
            return EXIT_STOPPED.get(self.interrupted, EXIT_STOPPED["interrupt"])
        if self.checkpoint is not None and not self.checkpoint.check_passed:
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "gradtool",
            "version": self.version,
            "command": "memory",
            "target": self.target,
            "found_by": self.found_by,
            "passed": self.passed,
            "interrupted": self.interrupted,
            "device": self.device,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "modules": [m.to_dict() for m in self.modules],
            "saved_bytes_total": self.saved_bytes_total,
            "param_bytes_total": self.param_bytes_total,
            "grad_bytes_total": self.grad_bytes_total,
            "input_bytes": self.input_bytes,
            "loss_saved_bytes": self.loss_saved_bytes,
            "held_bytes": self.held_bytes,
            "held_cuda_bytes": self.held_cuda_bytes,
            "step_ms": round(self.step_ms, 3),
            "peak_bytes": self.peak_bytes,
            "peak_source": self.peak_source,
            "checkpoint_candidates": [c.to_dict() for c in self.checkpoint_candidates],
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint is not None else None,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }


# --- gradtool graph: the autograd graph, grouped by module -----------------------------------


@dataclass(frozen=True)
class GraphModule:
    """A module of the model, as the graph groups autograd nodes by it."""

    name: str  # qualified name, "" for the model itself
    type: str  # class name
    parent: str | None  # the enclosing module (None for the model)
    depth: int  # the level --depth counts (0 the model)
    params: tuple[str, ...] = ()  # its own parameters' qualified names
    source: SourceLocation | None = None
    # a ModuleList/ModuleDict: never runs, takes no level of its own (its children have its
    # depth) and is never a box of the collapsed graph
    container: bool = False
    numel: int = 0  # elements of its own parameters
    order: int | None = None  # when its forward first ran (0 the model); None: never ran
    calls: int = 0  # how often its forward ran (a shared block: more than once)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "parent": self.parent,
            "depth": self.depth,
            "params": list(self.params),
            "source": self.source.to_dict() if self.source is not None else None,
            "container": self.container,
            "numel": self.numel,
            "order": self.order,
            "calls": self.calls,
        }


@dataclass(frozen=True)
class GraphNode:
    """One node of the fine graph: an autograd node (op), a parameter, an input, the loss."""

    id: int
    kind: str  # "op" | "param" | "input" | "loss"
    label: str  # an op's name without "Backward0" ("Addmm"), a parameter's or input's name
    module: str  # the innermost module whose forward made it ("" the model / the loss)
    shape: tuple[int, ...] = ()
    reaches_loss: bool = True  # False: behind a cut (drawn to show what the cut left out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "label": self.label,
            "module": self.module,
            "shape": list(self.shape),
            "reaches_loss": self.reaches_loss,
        }


@dataclass(frozen=True)
class GraphEdge:
    """`src`'s value feeds `dst` in the forward (the gradient flows from dst to src); `cut`
    names how the gradient was stopped on the way ("detach()", ".data", "no_grad", ".item()")."""

    src: int
    dst: int
    cut: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "cut": self.cut}


@dataclass(frozen=True)
class GraphCut:
    """Where the forward cut the gradient's path: a value of `producer` reached `consumer`
    without its gradient."""

    kind: str  # "detach()" | ".data" | "no_grad" | ".item()"
    producer: str  # the module whose value was cut
    consumer: str | None  # the module that used it (None: nothing on the loss's path did)
    text: str  # one line for the report
    location: SourceLocation | None = None  # the user's line that cut it
    params: tuple[str, ...] = ()  # parameters that no longer reach the loss because of it
    module: str | None = None  # the module whose forward made the cutting call
    # for the reader: the module, or when it is the model's own forward the op made there
    # ("Relu in Buggy.forward"); "" in reports made before these were added
    producer_text: str = ""
    consumer_text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "producer": self.producer,
            "consumer": self.consumer,
            "producer_text": self.producer_text,
            "consumer_text": self.consumer_text,
            "text": self.text,
            "location": self.location.to_dict() if self.location is not None else None,
            "params": list(self.params),
            "module": self.module,
        }


@dataclass(frozen=True)
class Unreached:
    """A parameter that requires grad but has no path to the loss, and why."""

    name: str
    module: str
    reason: str  # "cut by detach() in encoder (model.py:23)", "never used by the forward"
    numel: int = 0  # its elements

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "reason": self.reason,
            "numel": self.numel,
        }


@dataclass(frozen=True)
class ModuleFlow:
    """`graph --flow`: a module's gradient norm and dead fraction from a flow run."""

    module: str
    grad_norm: float | None
    dead_fraction: float | None = None
    # a functional activation called in the module's own forward (torch.relu), its k-th call:
    # the dead fraction is that call's (grad_norm None); the views put it on the op's node
    via: str | None = None
    call: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "grad_norm": _json_float(self.grad_norm),
            "dead_fraction": _json_float(self.dead_fraction),
            "via": self.via,
            "call": self.call,
        }


@dataclass(frozen=True)
class GraphReport:
    """The autograd graph of one forward and loss, each node with its module; the views
    (DOT, HTML, the text summary) collapse it by module to a depth."""

    target: str
    version: str
    modules: tuple[GraphModule, ...]
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    cuts: tuple[GraphCut, ...] = ()
    unreached: tuple[Unreached, ...] = ()
    depth: int = 1  # the depth the views show by default (--depth, or chosen)
    flow: tuple[ModuleFlow, ...] = ()
    found_by: str = ""
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    interrupted: str | None = None
    # --depth as given (None: `depth` was chosen, formats/_graph.default_depth); `depth` is
    # the model's depth when this is deeper (clamped)
    depth_asked: int | None = None
    # values taken out of the graph that the loss never used, costing no parameter anything
    # (a metric under no_grad, a loss printed with .item()): "no_grad at model.py:12"
    not_cuts: tuple[str, ...] = ()

    @property
    def autograd_nodes(self) -> int:
        """The one count every view gives: the op nodes (the forward's grad_fn nodes, those
        behind a cut included; the loss's own calls are the loss node, leaves not counted)."""
        return sum(n.kind == "op" for n in self.nodes)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_STOPPED.get(self.interrupted, EXIT_STOPPED["interrupt"])
        return 0

    @property
    def max_depth(self) -> int:
        """The deepest level any module has."""
        return max((m.depth for m in self.modules), default=0)

    @property
    def depth_given(self) -> bool:
        return self.depth_asked is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "gradtool",
            "version": self.version,
            "command": "graph",
            "target": self.target,
            "found_by": self.found_by,
            "interrupted": self.interrupted,
            "depth": self.depth,
            "max_depth": self.max_depth,
            "depth_given": self.depth_given,
            "depth_asked": self.depth_asked,
            "autograd_nodes": self.autograd_nodes,
            "modules": [m.to_dict() for m in self.modules],
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
            "cuts": [c.to_dict() for c in self.cuts],
            "unreached": [u.to_dict() for u in self.unreached],
            "flow": [f.to_dict() for f in self.flow],
            "warnings": list(self.warnings),
            "not_cuts": list(self.not_cuts),
            "seconds": round(self.seconds, 3),
        }


# --- a run of one or more targets (the CLI, configured targets, the pytest plugin) -----------


@dataclass(frozen=True)
class TargetRun:
    """One target of a run: its report, or the user error that stopped it, and its exit
    code (0 passed, 1 a gradient or a `fail_on` finding failed, 2 the user's file, inputs or
    options could not be used, 3 internal, 124 timeout, 130 Ctrl-C, 143 SIGTERM)."""

    command: str  # "check" | "flow" | "memory" | "graph"
    target: str  # the TARGET as given or configured ("ops/attn.py:Fused")
    report: CheckReport | FlowReport | MemoryReport | GraphReport | None
    exit_code: int
    error: str | None = None  # the one-screen message of what stopped it (exit 2 or 3)
    interrupted: str | None = None  # "interrupt" | "terminated" | "timeout"; also when not run
    seconds: float = 0.0
    config: str | None = None  # where it was configured: "pyproject.toml [[tool.gradtool.check]] 2"

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "target": self.target,
            "exit_code": self.exit_code,
            "passed": self.passed,
            "error": self.error,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "config": self.config,
            "report": self.report.to_dict() if self.report is not None else None,
        }


def worst_exit_code(runs: Any) -> int:
    """The exit code of a run of several targets: an interruption (124/130/143) first, then
    an internal error (3), a user error (2), a failure (1); 0 when every target passed."""
    codes = [r.exit_code for r in runs]
    stops = sorted(EXIT_STOPPED.values(), reverse=True)
    for code in (*stops, 3, 2, 1):
        if code in codes:
            return code
    return 0

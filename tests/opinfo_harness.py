"""gradtool against `torch.autograd.gradcheck` on PyTorch's own operator database (issue #10).

Every differentiable float64 sample of every OpInfo in
`torch.testing._internal.common_methods_invocations.op_db` whose tensors that require grad
hold at most 400 elements in all is checked twice: by `torch.autograd.gradcheck` (slow mode,
OpInfo's own settings) and by `gradcheck_tool.check`, on the same plain function of the
differentiable tensors that PyTorch's `test_ops_gradients.py` builds
(`TestGradients._check_helper` in `torch/testing/_internal/common_utils.py`). Each sample's
verdicts land in one of: both pass, both fail, gradtool-only fail (a false alarm candidate),
gradcheck-only fail (a false PASS candidate); a gradtool exception other than a
`GradtoolError` is a crash, a `GradtoolError` a refusal. Samples gradcheck itself cannot run
(it raises something other than a `GradcheckError`) are skipped and counted by reason.

With `bugs`, each sample both checkers passed is run again with a seeded bug: the same forward
inside an autograd.Function whose backward is the true VJP (`torch.autograd.grad`) made wrong
in a controlled way (0.9× every gradient; the sign of the first input's gradient flipped), and
each checker's detections are counted.

With `serial`, gradtool also runs with batched=False: where its vmap rows and its serial
ones say different things (the verdict, or kinks skipped), a batching rule computed something
else than the plain forward.

    python tests/opinfo_harness.py [--ops NAME,...] [--limit N] [--index I] [--bugs]
                                   [--serial] [--json OUT]

`tests/check/test_opinfo.py` runs it under pytest (marked slow). Needs `expecttest`, which
`torch.testing._internal` imports.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import math
import platform
import signal
import sys
import time
import traceback
import unittest
import warnings
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

MAX_ELEMENTS = 400  # elements of the tensors that require grad, per sample
TIMEOUT = 300.0  # seconds one checker may spend on one sample
BUG_SCALE = 0.9  # the "scaled" bug: every gradient times this
BUG_KINDS = ("scaled", "flipped")
VISIBLE = 1e-12  # a true VJP entry above this: the seeded bug changes the gradient

# the verdicts one checker gives one sample
PASS, FAIL, CRASH, REFUSED, TIMEOUT_VERDICT = "pass", "fail", "crash", "refused", "timeout"
HARNESS_ERROR = "harness error"  # the seeded bug itself could not be built
# how the two verdicts on one sample compare
BOTH_PASS, BOTH_FAIL = "both pass", "both fail"
FALSE_ALARM, FALSE_PASS = "gradtool-only fail", "gradcheck-only fail"
GRADTOOL_CRASH, GRADTOOL_REFUSED, GRADTOOL_TIMEOUT = "crash", "refusal", "gradtool timeout"
AGREEMENT = (BOTH_PASS, BOTH_FAIL, FALSE_ALARM, FALSE_PASS)


# --- what one run records ---------------------------------------------------------------


@dataclasses.dataclass
class TensorVerdict:
    """gradtool's verdict on one tensor: name, relative error, pass/fail, note and hint."""

    name: str
    rel_error: float
    passed: bool
    note: str
    hint: str | None
    kinks: int = 0


@dataclasses.dataclass
class Outcome:
    """One checker on one sample (or on one seeded bug of it)."""

    verdict: str  # PASS | FAIL | CRASH | REFUSED | TIMEOUT_VERDICT
    seconds: float
    message: str = ""  # gradcheck's error, gradtool's refusal or crash (with traceback)
    tensors: list[TensorVerdict] = dataclasses.field(default_factory=list)  # gradtool only
    evaluation: str = ""  # gradtool: batched / serial / mixed (and why it fell back)

    @property
    def failing(self) -> list[TensorVerdict]:
        return [t for t in self.tensors if not t.passed]


@dataclasses.dataclass
class OutputInfo:
    """One tensor the sample's function returns, as the reference call saw it."""

    shape: list[int]
    dtype: str
    requires_grad: bool


@dataclasses.dataclass
class SampleRecord:
    """Both checkers on one OpInfo sample, and on its seeded bugs."""

    op: str  # OpInfo name with its variant: "nn.functional.pad.reflect"
    variant: str  # OpInfo's variant_test_name ("" for the plain op)
    index: int  # the sample's position in op.sample_inputs(...)
    shapes: list[list[int]]  # of the tensors both checkers differentiate, in order
    description: str  # SampleInput.summary()
    outputs: list[OutputInfo]
    opinfo_marks: list[str]  # OpInfo's own decorators on test_fn_grad (cpu, float64)
    gradcheck: Outcome
    gradtool: Outcome
    gradtool_serial: Outcome | None = None  # gradtool with batched=False (vmap off)
    bugs: dict[str, dict[str, Outcome]] = dataclasses.field(default_factory=dict)
    bug_visible: dict[str, bool] = dataclasses.field(default_factory=dict)

    @property
    def agreement(self) -> str:
        if self.gradtool.verdict == CRASH:
            return GRADTOOL_CRASH
        if self.gradtool.verdict == REFUSED:
            return GRADTOOL_REFUSED
        if self.gradtool.verdict == TIMEOUT_VERDICT:
            return GRADTOOL_TIMEOUT
        gradcheck_passed = self.gradcheck.verdict == PASS
        gradtool_passed = self.gradtool.verdict == PASS
        if gradcheck_passed and gradtool_passed:
            return BOTH_PASS
        if not gradcheck_passed and not gradtool_passed:
            return BOTH_FAIL
        return FALSE_ALARM if gradcheck_passed else FALSE_PASS

    @property
    def nondifferentiable_float_outputs(self) -> bool:
        """A floating output autograd gives no gradient through (gradcheck ignores it)."""
        return any(not o.requires_grad and _is_floating(o.dtype) for o in self.outputs)

    @property
    def label(self) -> str:
        return f"{self.op}[{self.index}]"

    @property
    def batched_vs_serial(self) -> str:
        """Where gradtool's batched (vmap) and serial evaluations say different things: the
        verdict, or the kinks a tensor skipped; "" where they agree or serial did not run.
        vmap computing other values than the plain forward shows up here first."""
        serial = self.gradtool_serial
        if serial is None or self.gradtool.verdict in (CRASH, REFUSED, TIMEOUT_VERDICT):
            return ""
        if serial.verdict != self.gradtool.verdict:
            return (
                f"{self.gradtool.evaluation} says {self.gradtool.verdict}, serial {serial.verdict}"
            )
        kinks = {t.name: t.kinks for t in serial.tensors}
        changed = [
            f"{t.name}: {t.kinks} kinks batched, {kinks.get(t.name)} serial"
            for t in self.gradtool.tensors
            if t.kinks != kinks.get(t.name, t.kinks)
        ]
        return "; ".join(changed)


@dataclasses.dataclass
class Skipped:
    """An op or sample neither checker was compared on, and why."""

    op: str
    index: int | None  # None: the whole op
    reason: str


@dataclasses.dataclass
class HarnessRun:
    """Everything one run found; `summary()` and `disagreements()` read it."""

    records: list[SampleRecord] = dataclasses.field(default_factory=list)
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    too_large: int = 0  # samples over MAX_ELEMENTS, left out by design
    ops_seen: int = 0
    seconds: float = 0.0
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def by_agreement(self, kind: str) -> list[SampleRecord]:
        return [r for r in self.records if r.agreement == kind]

    @property
    def false_alarms(self) -> list[SampleRecord]:
        return self.by_agreement(FALSE_ALARM)

    @property
    def false_passes(self) -> list[SampleRecord]:
        return self.by_agreement(FALSE_PASS)

    @property
    def crashes(self) -> list[SampleRecord]:
        """gradtool raised something other than a GradtoolError, on a sample or a bug."""
        return [
            r
            for r in self.records
            if r.gradtool.verdict == CRASH
            or any(per["gradtool"].verdict == CRASH for per in r.bugs.values())
        ]

    def bug_counts(self, kind: str) -> dict[str, int]:
        """Seeded bug `kind` on the samples both checkers passed clean: how many each
        checker detected, and how many only one of them did."""
        runs = [r.bugs[kind] for r in self.records if kind in r.bugs]
        caught = {
            name: [per[name].verdict == FAIL for per in runs] for name in ("gradcheck", "gradtool")
        }
        pairs = list(zip(caught["gradcheck"], caught["gradtool"]))
        visible = [r.bug_visible.get(kind, True) for r in self.records if kind in r.bugs]
        return {
            "samples": len(runs),
            "visible": sum(visible),
            "gradcheck": sum(caught["gradcheck"]),
            "gradtool": sum(caught["gradtool"]),
            "gradcheck only": sum(a and not b for a, b in pairs),
            "gradtool only": sum(b and not a for a, b in pairs),
            "gradtool crashed": sum(per["gradtool"].verdict == CRASH for per in runs),
            "gradtool refused": sum(per["gradtool"].verdict == REFUSED for per in runs),
            "harness errors": sum(per["gradtool"].verdict == HARNESS_ERROR for per in runs),
        }

    def skip_reasons(self) -> dict[str, list[str]]:
        """Skipped ops and samples grouped by reason, most frequent first."""
        groups: dict[str, list[str]] = collections.defaultdict(list)
        for s in self.skipped:
            groups[s.reason].append(s.op if s.index is None else f"{s.op}[{s.index}]")
        return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for record, raw in zip(self.records, out["records"]):
            raw["agreement"] = record.agreement
        out["summary"] = self.summary_numbers()
        return _finite_json(out)

    def summary_numbers(self) -> dict[str, Any]:
        return {
            "ops": self.ops_seen,
            "samples": len(self.records),
            "skipped": len(self.skipped),
            "too_large": self.too_large,
            **{kind: len(self.by_agreement(kind)) for kind in AGREEMENT},
            "crashes": len(self.by_agreement(GRADTOOL_CRASH)),
            "crashes_with_bugs": len(self.crashes),
            "refusals": len(self.by_agreement(GRADTOOL_REFUSED)),
            "gradtool_timeouts": len(self.by_agreement(GRADTOOL_TIMEOUT)),
            "gradcheck_seconds": sum(r.gradcheck.seconds for r in self.records),
            "gradtool_seconds": sum(r.gradtool.seconds for r in self.records),
            "bugs": {kind: self.bug_counts(kind) for kind in BUG_KINDS if self._ran_bug(kind)},
            "bug_seconds": {
                name: sum(per[name].seconds for r in self.records for per in r.bugs.values())
                for name in ("gradcheck", "gradtool")
            },
            "batched_vs_serial": sum(bool(r.batched_vs_serial) for r in self.records),
            "seconds": self.seconds,
        }

    def _ran_bug(self, kind: str) -> bool:
        return any(kind in r.bugs for r in self.records)


# --- the samples ----------------------------------------------------------------------------


def full_name(op: Any) -> str:
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


def selected_ops(names: Sequence[str] | None = None) -> list[Any]:
    """OpInfos that support autograd, in op_db order; `names` picks by full name
    ("nn.functional.pad.reflect") or by op name (every variant of "nn.functional.pad")."""
    ops = [op for op in _op_db() if op.supports_autograd]
    if names:
        wanted = set(names)
        ops = [op for op in ops if full_name(op) in wanted or op.name in wanted]
        unknown = wanted - {full_name(op) for op in ops} - {op.name for op in ops}
        if unknown:
            raise SystemExit(f"no differentiable OpInfo named {sorted(unknown)}")
    return ops


def _op_db() -> list[Any]:
    """op_db, without what importing torch.testing._internal.common_utils does to the rest
    of the process: it freezes torch.backends' flags (`disable_global_flags`: a later test
    that sets cudnn.allow_tf32 would raise) and wraps ScriptFunction/ScriptMethod.__call__."""
    # the flag is a global of torch/backends/__init__.py, whose module object sys.modules
    # replaces with a wrapper: it is reached through a function's globals
    backends = torch.backends.disable_global_flags.__globals__
    flag = "__allow_nonbracketed_mutation_flag"
    allowed = backends.get(flag, True)
    calls = (torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__)
    from torch.testing._internal.common_methods_invocations import op_db

    backends[flag] = allowed
    torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__ = calls
    return op_db


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """torch's, Python's and numpy's global RNG as found: OpInfo seeds all three before each
    sample it makes."""
    import random

    import numpy

    states = (torch.get_rng_state(), random.getstate(), numpy.random.get_state())
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        numpy.random.set_state(states[2])


def samples_of(op: Any) -> list[Any]:
    """The op's float64 CPU samples that require grad, made with the global RNG restored."""
    with preserved_rng():
        return list(op.sample_inputs("cpu", torch.float64, requires_grad=True))


def differentiable_tensors(sample: Any) -> tuple[torch.Tensor, ...]:
    """The sample's tensors that require grad, in the order gradcheck takes them: the input
    (or each tensor of an input list), then args, then kwargs values."""
    from torch.testing._internal.common_utils import is_iterable_of_tensors

    first = sample.input if is_iterable_of_tensors(sample.input) else (sample.input,)
    everything = chain(first, sample.args, sample.kwargs.values())
    return tuple(x for x in everything if isinstance(x, torch.Tensor) and x.requires_grad)


def function_of_sample(op: Any, sample: Any) -> Callable[..., Any]:
    """fn(*differentiable tensors): the sample with those tensors put back, through the op's
    gradcheck_wrapper and output_process_fn_grad — what `TestGradients._check_helper`
    differentiates for `test_fn_grad`."""
    from torch.testing._internal.common_utils import is_iterable_of_tensors

    variant = op.get_op()

    def put_back(value: Any, tensors: Iterator[torch.Tensor]) -> Any:
        if is_iterable_of_tensors(value):
            return [next(tensors) if _needs_grad(x) else x for x in value]
        return next(tensors) if _needs_grad(value) else value

    def fn(*inputs: torch.Tensor) -> Any:
        tensors = iter(inputs)
        args = [put_back(sample.input, tensors), *(put_back(a, tensors) for a in sample.args)]
        kwargs = {k: put_back(v, tensors) for k, v in sample.kwargs.items()}
        output = op.gradcheck_wrapper(variant, *args, **kwargs)
        return sample.output_process_fn_grad(output)

    fn.__name__ = full_name(op)
    return fn


def _needs_grad(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad


def opinfo_marks(op: Any) -> list[str]:
    """OpInfo's own skips/xfails on test_fn_grad for float64 on the CPU, in words."""
    marks = []
    for info in op.decorators:
        is_active = getattr(info, "is_active", None)
        if is_active is None or not is_active(
            "TestBwdGradients", "test_fn_grad", "cpu", torch.float64, {}
        ):
            continue
        for decorator in info.decorators:
            if decorator is unittest.expectedFailure:
                marks.append("expectedFailure")
                continue
            name = getattr(decorator, "__qualname__", type(decorator).__name__)
            cells = [c.cell_contents for c in getattr(decorator, "__closure__", None) or ()]
            reason = next((c for c in cells if isinstance(c, str)), "")
            marks.append(f"{name.split('.')[0]}: {reason}" if reason else name.split(".")[0])
    return marks


# --- running the checkers ---------------------------------------------------------------


class SampleTimeout(BaseException):
    """A checker ran past its time on one sample. A BaseException: gradtool's and user-code
    handlers that catch Exception must not swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise SampleTimeout after `seconds` (SIGALRM, main thread only; else no limit)."""
    usable = seconds and hasattr(signal, "SIGALRM") and _in_main_thread()
    if not usable:
        yield
        return

    def expire(_signum: int, _frame: Any) -> None:
        raise SampleTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class GradcheckCannotRun(Exception):
    """gradcheck raised something other than a GradcheckError: the sample is skipped."""


def run_gradcheck(
    fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...], nondet_tol: float, timeout: float
) -> Outcome:
    """torch.autograd.gradcheck in slow mode with test_fn_grad's settings, less batched
    grad and forward AD (gradtool checks neither). raise_exception=True only to keep the
    message: a GradcheckError is exactly what raise_exception=False turns into False."""
    from torch.autograd.gradcheck import GradcheckError

    started = time.perf_counter()
    try:
        with time_limit(timeout):
            torch.autograd.gradcheck(
                fn,
                inputs,
                nondet_tol=nondet_tol,
                check_batched_grad=False,
                check_grad_dtypes=True,
                check_undefined_grad=True,
                fast_mode=False,
                raise_exception=True,
            )
    except GradcheckError as exc:
        return Outcome(FAIL, time.perf_counter() - started, _first_lines(str(exc), 3))
    except SampleTimeout:
        raise GradcheckCannotRun(f"gradcheck took more than {timeout:g} s") from None
    except Exception as exc:
        raise GradcheckCannotRun(f"gradcheck raised {_exception_kind(exc)}") from exc
    return Outcome(PASS, time.perf_counter() - started)


def run_gradtool(
    fn: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    name: str,
    timeout: float,
    batched: bool = True,
) -> Outcome:
    """gradcheck_tool.check on the function with the tensors as positional inputs."""
    from gradcheck_tool import GradtoolError, check

    started = time.perf_counter()
    try:
        with time_limit(timeout):
            report = check(fn, tuple(t.detach() for t in inputs), name=name, batched=batched)
    except GradtoolError as exc:
        return Outcome(REFUSED, time.perf_counter() - started, str(exc))
    except SampleTimeout:
        return Outcome(TIMEOUT_VERDICT, time.perf_counter() - started, f"over {timeout:g} s")
    except Exception:
        return Outcome(CRASH, time.perf_counter() - started, traceback.format_exc())
    seconds = time.perf_counter() - started
    tensors = [
        TensorVerdict(r.name, r.rel_error, r.passed, r.note, r.hint, r.kinks)
        for r in report.results
    ]
    evaluation = report.evaluation + (
        f" ({report.fallback_reason})" if report.fallback_reason else ""
    )
    if report.nondeterministic:
        tensors.append(
            TensorVerdict("(forward)", math.nan, False, "not judged: nondeterministic", None)
        )
    return Outcome(PASS if report.passed else FAIL, seconds, tensors=tensors, evaluation=evaluation)


# --- seeded bugs ----------------------------------------------------------------------------


class SeededBug:
    """`fn` with the same forward and a backward made wrong in a controlled way: the true
    VJP (torch.autograd.grad through `fn`) scaled by BUG_SCALE ("scaled"), or with the sign
    of the first input's gradient flipped ("flipped")."""

    def __init__(self, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...], kind: str):
        self.fn, self.kind = fn, kind
        with torch.enable_grad():
            reference = fn(*inputs)
        leaves, self.spec = pytree.tree_flatten(reference)
        self.tensor_at = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
        # non-tensor leaves (a size, a flag) come back as they were
        self.constants = leaves
        # outputs autograd gives no gradient through stay non-differentiable
        self.differentiable = [leaves[i].requires_grad for i in self.tensor_at]

    def __call__(self, *inputs: torch.Tensor) -> Any:
        outputs = _WrongBackward.apply(self, *inputs)
        leaves = list(self.constants)
        for i, t in zip(self.tensor_at, outputs):
            leaves[i] = t
        return pytree.tree_unflatten(leaves, self.spec)

    def tensor_outputs(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        leaves = pytree.tree_leaves(self.fn(*inputs))
        return tuple(leaves[i] for i in self.tensor_at)

    def true_vjp(
        self, inputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]
    ) -> list[torch.Tensor | None]:
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(True) for x in inputs]
            outputs = self.tensor_outputs(leaves)
            pairs = [
                (o, g)
                for o, g, d in zip(outputs, grads, self.differentiable)
                if d and g is not None and o.requires_grad
            ]
            if not pairs:
                return [None] * len(leaves)
            return list(
                torch.autograd.grad(
                    [o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True
                )
            )

    def corrupt(self, vjp: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        if self.kind == "scaled":
            return [None if g is None else BUG_SCALE * g for g in vjp]
        return [None if g is None else (-g if i == 0 else g) for i, g in enumerate(vjp)]

    def visible(self, inputs: tuple[torch.Tensor, ...]) -> bool:
        """Whether the bug changes anything: the true VJP of a random upstream gradient is
        above VISIBLE for some input the bug touches (0.9·0 and −0 are still right, and a
        gradient that is only rounding, e.g. of corrcoef of two numbers, too)."""
        with torch.no_grad():
            outputs = self.tensor_outputs(inputs)
        gen = torch.Generator().manual_seed(0)
        grads = [
            torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
            if d and (o.is_floating_point() or o.is_complex())
            else None
            for o, d in zip(outputs, self.differentiable)
        ]
        vjp = self.true_vjp(inputs, grads)
        touched = vjp if self.kind == "scaled" else vjp[:1]
        return any(g is not None and bool(g.abs().max() > VISIBLE) for g in touched)


class _WrongBackward(torch.autograd.Function):
    """The forward of `bug.fn`, the backward `bug.corrupt(true VJP)`. vmap is generated, so
    gradtool can batch its evaluations."""

    generate_vmap_rule = True

    @staticmethod
    def forward(bug: SeededBug, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # clones: an output that is an input or a view of one must be a new tensor
        return tuple(t.clone() for t in bug.tensor_outputs(inputs))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        bug, *tensors = inputs
        ctx.bug = bug
        ctx.save_for_backward(*tensors)
        fixed = [o for o, d in zip(output, bug.differentiable) if not d]
        if fixed:
            ctx.mark_non_differentiable(*fixed)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple:
        bug = ctx.bug
        return (None, *bug.corrupt(bug.true_vjp(ctx.saved_tensors, grads)))


# --- one run ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one run covers and how: `run`'s keyword arguments."""

    ops: tuple[str, ...] | None = None  # OpInfo names (full, or every variant of a name)
    limit: int | None = None  # at most this many kept samples per op
    index: int | None = None  # only the sample at this index of each op
    bugs: bool = False  # also the seeded bugs, on the samples both checkers pass
    serial: bool = False  # also gradtool with batched=False, to see where vmap differs
    max_elements: int = MAX_ELEMENTS
    timeout: float = TIMEOUT


def run(
    ops: Sequence[str] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    **settings: Any,
) -> HarnessRun:
    """Both checkers on every sample of `ops` (default: all of op_db that supports
    autograd); `settings` as in `Settings` (limit, index, bugs, serial, max_elements,
    timeout). `progress` gets one line per op."""
    chosen = Settings(ops=tuple(ops) if ops else None, **settings)
    result = HarnessRun(
        settings=dict(
            dataclasses.asdict(chosen),
            torch=torch.__version__,
            python=platform.python_version(),
            threads=torch.get_num_threads(),
        )
    )
    started = time.perf_counter()
    with warnings.catch_warnings(), preserved_rng():
        warnings.simplefilter("ignore")  # ops' deprecation and numerics warnings, by the 1000
        for op in selected_ops(chosen.ops):
            result.ops_seen += 1
            op_started = time.perf_counter()
            before = len(result.records)
            _run_op(op, result, chosen)
            if progress is not None:
                got = result.records[before:]
                odd = [r for r in got if r.agreement not in (BOTH_PASS, BOTH_FAIL)]
                progress(
                    f"{full_name(op)}: {len(got)} samples, {len(odd)} disagreements/crashes, "
                    f"{time.perf_counter() - op_started:.1f} s"
                )
    result.seconds = time.perf_counter() - started
    return result


def _run_op(op: Any, result: HarnessRun, settings: Settings) -> None:
    name = full_name(op)
    if torch.float64 not in op.supported_backward_dtypes("cpu"):
        result.skipped.append(Skipped(name, None, "no float64 backward on the CPU"))
        return
    try:
        samples = samples_of(op)
    except Exception as exc:
        result.skipped.append(Skipped(name, None, f"sample_inputs raised {_exception_kind(exc)}"))
        return
    marks = opinfo_marks(op)
    kept = 0
    for i, sample in enumerate(samples):
        if settings.limit is not None and kept >= settings.limit:
            break
        if settings.index is not None and i != settings.index:
            continue
        inputs = differentiable_tensors(sample)
        if not inputs:
            result.skipped.append(Skipped(name, i, "no tensor requires grad"))
            continue
        if sum(t.numel() for t in inputs) > settings.max_elements:
            result.too_large += 1
            continue
        kept += 1
        try:
            record = _run_sample(op, i, sample, inputs, marks, settings)
        except GradcheckCannotRun as exc:
            result.skipped.append(Skipped(name, i, str(exc)))
            continue
        result.records.append(record)


def _run_sample(
    op: Any,
    i: int,
    sample: Any,
    inputs: tuple[torch.Tensor, ...],
    marks: list[str],
    settings: Settings,
) -> SampleRecord:
    """Both checkers on one sample (GradcheckCannotRun: skip it), then the extras asked for."""
    name = full_name(op)
    fn = function_of_sample(op, sample)
    try:
        with torch.enable_grad():
            outputs = [
                OutputInfo(list(t.shape), str(t.dtype).replace("torch.", ""), t.requires_grad)
                for t in pytree.tree_leaves(fn(*inputs))
                if isinstance(t, torch.Tensor)
            ]
    except Exception as exc:  # the plain forward raised: gradcheck cannot run it either
        raise GradcheckCannotRun(f"the forward raised {_exception_kind(exc)}") from exc
    record = SampleRecord(
        op=name,
        variant=op.variant_test_name,
        index=i,
        shapes=[list(t.shape) for t in inputs],
        description=sample.summary(),
        outputs=outputs,
        opinfo_marks=marks,
        gradcheck=run_gradcheck(fn, inputs, op.gradcheck_nondet_tol, settings.timeout),
        gradtool=run_gradtool(fn, inputs, f"{name}[{i}]", settings.timeout),
    )
    if settings.serial:
        record.gradtool_serial = run_gradtool(
            fn, inputs, f"{name}[{i}]", settings.timeout, batched=False
        )
    if settings.bugs and record.agreement == BOTH_PASS:
        for kind in BUG_KINDS:
            record.bugs[kind] = _run_bug(record, fn, inputs, kind, op, settings.timeout)
    return record


def _run_bug(
    record: SampleRecord,
    fn: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    kind: str,
    op: Any,
    timeout: float,
) -> dict[str, Outcome]:
    """Both checkers on seeded bug `kind` of the sample's function."""
    try:
        bugged = SeededBug(fn, inputs, kind)
        record.bug_visible[kind] = bugged.visible(inputs)
    except Exception:  # the harness's own failure, not a checker's
        broken = Outcome(HARNESS_ERROR, 0.0, traceback.format_exc())
        return {"gradcheck": broken, "gradtool": broken}
    try:
        gradcheck = run_gradcheck(bugged, inputs, op.gradcheck_nondet_tol, timeout)
    except GradcheckCannotRun as exc:
        gradcheck = Outcome(CRASH, 0.0, str(exc))
    gradtool = run_gradtool(bugged, inputs, f"{record.label} ({kind} bug)", timeout)
    return {"gradcheck": gradcheck, "gradtool": gradtool}


# --- the summary ----------------------------------------------------------------------------


def disagreement_reason(record: SampleRecord) -> str:
    """One line: why the two checkers (or gradtool and itself) disagree on this sample."""
    if record.agreement == FALSE_ALARM:
        parts = [
            f"{f.name}: rel {f.rel_error:.2g}" + (f" — {f.note}" if f.note else "")
            for f in record.gradtool.failing
        ]
        if record.nondifferentiable_float_outputs:
            parts.append("[has floating outputs autograd marks non-differentiable]")
        return "; ".join(parts)
    if record.agreement == FALSE_PASS:
        marks = f" [OpInfo: {', '.join(record.opinfo_marks)}]" if record.opinfo_marks else ""
        notes = "; ".join(f"{t.name}: {t.note}" for t in record.gradtool.tensors if t.note)
        notes = f" [gradtool: {notes}]" if notes else ""
        return _first_lines(record.gradcheck.message, 1) + marks + notes
    if record.agreement == GRADTOOL_CRASH:
        return crash_cause(record.gradtool.message)
    return _first_lines(record.gradtool.message, 1)


def crash_cause(trace: str) -> str:
    """A crash's cause in one line: the exception, and the innermost gradtool frame."""
    lines = [line.strip() for line in trace.strip().splitlines()]
    frames = [line for line in lines if line.startswith("File") and "gradcheck_tool" in line]
    where = ""
    if frames:
        # 'File ".../gradcheck_tool/engines/check/rows.py", line 41, in __init__'
        path, _, rest = frames[-1].partition('", ')
        where = f" (at {path[path.rfind('gradcheck_tool') :]}, {rest})"
    return (lines[-1] if lines else "?") + where


def crash_groups(result: HarnessRun) -> dict[str, list[tuple[str, str]]]:
    """Crashes (on samples and on seeded bugs) grouped by cause: (label, traceback) each."""
    groups: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for record in result.records:
        runs = [("", record.gradtool)]
        runs += [(f" ({kind} bug)", per["gradtool"]) for kind, per in record.bugs.items()]
        for suffix, outcome in runs:
            if outcome.verdict == CRASH:
                label = record.label + suffix
                groups[crash_cause(outcome.message)].append((label, outcome.message))
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def summary(result: HarnessRun) -> str:
    """The text the CLI prints: counts, the agreement table, bugs, times, skips, and every
    disagreement grouped by op."""
    n = result.summary_numbers()
    lines = [
        f"OpInfo harness: torch {torch.__version__}, {n['ops']} ops, {n['samples']} samples "
        f"run (≤ {result.settings.get('max_elements')} elements; {n['too_large']} larger left "
        f"out), {n['skipped']} skipped, limit per op: {result.settings.get('limit')}",
        "",
        "agreement (gradcheck vs gradtool):",
        f"  both pass                                  {n[BOTH_PASS]:6d}",
        f"  both fail                                  {n[BOTH_FAIL]:6d}",
        f"  gradtool-only fail (false alarm candidates) {n[FALSE_ALARM]:5d}",
        f"  gradcheck-only fail (false PASS candidates) {n[FALSE_PASS]:5d}",
        f"  gradtool crashes                           {n['crashes']:6d}",
        f"  (samples whose run or seeded bugs crash gradtool: {n['crashes_with_bugs']})",
        f"  gradtool refusals (GradtoolError)          {n['refusals']:6d}",
        f"  gradtool timeouts                          {n['gradtool_timeouts']:6d}",
        "",
        f"time: gradcheck {n['gradcheck_seconds']:.1f} s, gradtool {n['gradtool_seconds']:.1f} s, "
        f"whole run {n['seconds']:.1f} s",
    ]
    for kind, counts in n["bugs"].items():
        lines.append(
            f"seeded bug '{kind}' on {counts['samples']} samples both passed clean "
            f"({counts['visible']} where it changes the gradient): gradcheck detects "
            f"{counts['gradcheck']}, gradtool {counts['gradtool']} (gradcheck only "
            f"{counts['gradcheck only']}, gradtool only {counts['gradtool only']}; gradtool "
            f"crashed {counts['gradtool crashed']}, refused {counts['gradtool refused']}; "
            f"harness errors {counts['harness errors']})"
        )
    if n["bugs"]:
        lines.append(
            f"time on the seeded bugs: gradcheck {n['bug_seconds']['gradcheck']:.1f} s, "
            f"gradtool {n['bug_seconds']['gradtool']:.1f} s"
        )
    if result.settings.get("serial"):
        lines.append(
            f"gradtool batched vs serial (vmap off): {n['batched_vs_serial']} samples differ "
            "(verdict or kinks skipped)"
        )
    skips = result.skip_reasons()
    if skips:
        lines += ["", "skipped (grouped by reason):"]
        for reason, where in skips.items():
            shown = ", ".join(where[:6]) + (", ..." if len(where) > 6 else "")
            lines.append(f"  {len(where):5d}  {reason}  ({shown})")
    crashes = crash_groups(result)
    if crashes:
        lines += ["", "gradtool crashes, grouped by cause (one traceback each):"]
        for cause, where in crashes.items():
            per_op = collections.Counter(label.split("[")[0] for label, _ in where)
            ops = ", ".join(f"{op} ×{n}" for op, n in list(per_op.items())[:20])
            more = f", ... ({len(per_op)} ops)" if len(per_op) > 20 else ""
            lines += [f"  {len(where):5d}  {cause}", f"         in {ops}{more}"]
            lines.append(f"         e.g. {where[0][0]}:")
            lines.append(_block(where[0][1].strip(), " " * 11))
    lines += _grouped(result, "disagreements and gradtool problems, by op:", _is_disagreement)
    lines += _grouped(result, "seeded bugs gradcheck detects and gradtool misses:", _bug_missed)
    lines += _grouped(
        result,
        "gradtool batched and serial differ:",
        lambda r: [r.batched_vs_serial] if r.batched_vs_serial else [],
    )
    return "\n".join(lines)


def _is_disagreement(record: SampleRecord) -> list[str]:
    if record.agreement in (BOTH_PASS, BOTH_FAIL, GRADTOOL_CRASH):  # crashes: by cause
        return []
    return [f"{record.agreement}: {disagreement_reason(record)}"]


def _bug_missed(record: SampleRecord) -> list[str]:
    out = []
    for kind, per in record.bugs.items():
        if per["gradcheck"].verdict == FAIL and per["gradtool"].verdict != FAIL:
            what = per["gradtool"]
            detail = _first_lines(what.message, 1) if what.message else what.evaluation
            out.append(f"{kind}: gradtool {what.verdict} {detail}")
    return out


def _grouped(
    result: HarnessRun, title: str, lines_of: Callable[[SampleRecord], list[str]]
) -> list[str]:
    by_op: dict[str, list[str]] = collections.defaultdict(list)
    for record in result.records:
        for line in lines_of(record):
            by_op[record.op].append(f"    [{record.index}] {_indent(line)}")
    if not by_op:
        return []
    out = ["", title]
    for op, lines in by_op.items():
        out.append(f"  {op}")
        out.extend(lines)
    return out


# --- small helpers ------------------------------------------------------------------------


def _exception_kind(exc: BaseException) -> str:
    """`Type: first line` with numbers and shapes left in: it groups skips by reason."""
    return f"{type(exc).__name__}: {_first_lines(str(exc), 1)[:160]}"


def _first_lines(text: str, n: int) -> str:
    return "\n".join(text.strip().splitlines()[:n])


def _block(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _indent(text: str) -> str:
    return text.replace("\n", "\n        ")


def _is_floating(dtype: str) -> bool:
    return dtype.startswith(("float", "complex", "bfloat"))


def _finite_json(value: Any) -> Any:
    """JSON has no NaN/Inf: they become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", help="comma-separated OpInfo names (full or without variant)")
    parser.add_argument("--limit", type=int, help="at most N samples per op")
    parser.add_argument("--index", type=int, help="only the sample at this index of each op")
    parser.add_argument("--bugs", action="store_true", help="also run the seeded-bug variants")
    parser.add_argument(
        "--serial", action="store_true", help="also run gradtool with vmap off, and compare"
    )
    parser.add_argument("--json", metavar="OUT", help="write every record to this JSON file")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per checker")
    parser.add_argument("--max-elements", type=int, default=MAX_ELEMENTS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run(
        args.ops.split(",") if args.ops else None,
        limit=args.limit,
        index=args.index,
        bugs=args.bugs,
        serial=args.serial,
        max_elements=args.max_elements,
        timeout=args.timeout,
        progress=None if args.quiet else progress,
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result.to_dict(), out, indent=1)
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

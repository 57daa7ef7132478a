"""`run_check`: the check as its list of steps, each a function with its own message."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..._tree import floating_leaves
from ...checkables import Checkable
from ...prepare import CheckProblem
from ...results import CheckReport, TensorResult
from ...stopping import caught, raise_if_stopped, stop_requested
from .analytic import Analytic, LazyEvidence, analytic_gradients, forward_mode_derivatives
from .batching import activation_bytes
from .config import CheckOptions, Interrupted
from .evaluate import Evaluator, synced
from .judge import ANALYTIC_ULPS, TensorJudge
from .numerics import rounding_noise
from .sampling import (
    FULL_THRESHOLD,
    Measured,
    choose_coordinates,
    is_small_model,
    measure,
    measure_directions,
    spend_budget,
)


def run_check(
    problem: CheckProblem,
    options: CheckOptions,
    *,
    target: str,
    found_by: str,
    version: str,
    label_suffix: str = "",
    forward_mode: bool = False,
) -> CheckReport:
    """Check every checkable tensor of `problem`; returns the report (never prints).

    Autograd's gradients → a forward with NaN/Inf or a backward that raised fails every
    tensor → f(θ) twice: a nondeterministic forward cannot be judged → the rounding noise of
    f → per tensor: the coordinates, the loss measured there, --budget spent on more → per
    tensor and loss term: the judge → the report. Ctrl-C (or a `stopping.Stop`: the timeout,
    SIGTERM) while tensors are measured or judged raises `Interrupted` carrying the partial
    report, its `interrupted` the reason; before that, the KeyboardInterrupt propagates.
    """
    raise_if_stopped()  # a stopped run starts no check (the second order's included)
    report = _ReportMaker(problem, options, target, found_by, version, label_suffix)
    if not problem.checkables:
        report.warnings.append(
            "nothing to check: no parameter requires grad and no input is floating"
        )
    if forward_mode:
        base_terms, analytic = forward_mode_derivatives(problem)
    else:
        base_terms, analytic = analytic_gradients(problem, reentrancy=True)
    raise_if_stopped()  # a forward that caught the Stop may have returned anything
    failure = _forward_not_finite(problem, base_terms) or _backward_raised(analytic, forward_mode)
    if failure is not None:
        return report.finish(report.unchecked(failure))

    evaluator = Evaluator(problem, options, needs_grad=problem.needs_grad)
    f0, f0_again, forward_seconds = _loss_at_theta_twice(problem, evaluator)
    raise_if_stopped()
    noise_in_f = float((f0 - f0_again)[:-1].abs().max())  # the terms, not the scale
    rounding = _rounding(problem, f0)
    if noise_in_f > 0.0:
        warning, judgeable = _nondeterminism(noise_in_f, analytic, rounding, options)
        report.warnings.append(warning)
        if not judgeable:
            not_judged = report.unchecked("not judged: the forward is nondeterministic", False)
            return report.finish(not_judged, nondeterministic=True, noise=noise_in_f)

    small_model = is_small_model(problem, forward_seconds)
    measured, interrupted = _measure_tensors(
        problem, evaluator, analytic, options, small_model, report.started
    )
    judge = functools.partial(
        TensorJudge,
        floor=noise_in_f,
        options=options,
        evaluator=evaluator,
        evidence=LazyEvidence(problem, analytic, options, forward_mode),
        analytic_floor=_analytic_floor(problem, analytic),
        loss_scale=max(problem.magnitude or 0.0, float(f0[:-1].abs().max())),
        batch_size=_batch_size(problem),
    )

    def localise(c: Checkable, directions: tuple, worst: int) -> Measured:
        """A tensor its directions did not pass: a sample of its coordinates, with the
        direction that disagreed most as a unit one (Note [directions])."""
        # a sample even of a small tensor: the direction already saw every entry
        coords = choose_coordinates(c, analytic.grads, options, False, every_below=options.samples)
        d = directions[0][worst]
        return measure(evaluator, c, coords, options.eps, options.seed, direction=d / d.norm())

    results, stopped = _judge_tensors(
        problem, analytic, measured, f0, judge, report.label, localise
    )
    results = [
        dataclasses.replace(r, serial_reason=evaluator.serial_reason(name)) for r, name in results
    ]
    interrupted = interrupted or stopped
    if options.progress:
        options.progress("", len(problem.checkables), len(problem.checkables))
    checked = report.finish(
        results,
        evaluation=evaluator.mode,
        fallback_reason=evaluator.serial_summary(),
        interrupted=interrupted,
        noise=noise_in_f or None,
    )
    if interrupted:
        raise Interrupted(checked)
    return checked


# --- the steps ------------------------------------------------------------------------------


def _forward_not_finite(problem: CheckProblem, base_terms: torch.Tensor) -> str | None:
    if torch.isfinite(base_terms).all():
        return None
    return f"NaN/Inf in the forward pass: seen in {_nonfinite_output(problem) or 'the loss'}"


def _backward_raised(analytic: Analytic, forward_mode: bool) -> str | None:
    if analytic.error is None:
        return None
    return f"the {'jvp' if forward_mode else 'backward'} raised {analytic.error}"


def _loss_at_theta_twice(
    problem: CheckProblem, evaluator: Evaluator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """f(θ) twice (any difference is nondeterminism), the faster forward's seconds, and on
    the way the activation memory one forward makes, for the evaluator's chunk sizes."""
    with evaluator.grad_mode():
        tick = time.perf_counter()
        with activation_bytes(problem) as allocated:
            f0 = synced(problem.terms(evaluator.base).detach())
        evaluator.activation_bytes = allocated[0]
        tock = time.perf_counter()
        f0_again = synced(problem.terms(evaluator.base).detach())
        forward_seconds = min(tock - tick, time.perf_counter() - tock)
    evaluator.f0 = f0
    evaluator.forward_seconds = forward_seconds
    return f0, f0_again, forward_seconds


def _rounding(problem: CheckProblem, f0: torch.Tensor) -> float:
    """Rounding noise of f: a few ulps of the size of the numbers the loss sums."""
    return rounding_noise(
        problem.precision, max(problem.magnitude or 0.0, float(f0[:-1].abs().max()), 1e-300)
    )


def _nondeterminism(
    noise_in_f: float, analytic: Analytic, rounding: float, options: CheckOptions
) -> tuple[str, bool]:
    """What to say when f(θ) moved between two evaluations, and whether finite differences
    can still judge the gradients: only when the noise is far below their signal."""
    h, tol = options.eps, options.tolerance
    grad_scale = max(
        (float(g.abs().max()) for per in analytic.grads for g in per.values() if g is not None),
        default=0.0,
    )
    if not noise_in_f / h > tol * max(grad_scale, rounding / h):  # `not >`: a NaN scale judges on
        return (
            f"tiny nondeterminism in the forward ({noise_in_f:.3g}), far below "
            "the finite-difference signal"
        ), True
    return (
        f"the loss differs between two evaluations at the same point by "
        f"{noise_in_f:.3g}: that is {noise_in_f / h:.3g} in finite-difference units, "
        f"against gradients of size {grad_scale:.3g}. The forward is nondeterministic "
        "(a private torch.Generator, an unseeded random source, or nondeterministic "
        "kernels), so finite differences cannot judge its gradients. Draw randomness "
        "from torch's global generator, or make the forward deterministic."
    ), False


def _measure_tensors(
    problem: CheckProblem,
    evaluator: Evaluator,
    analytic: Analytic,
    options: CheckOptions,
    small_model: bool,
    started: float,
) -> tuple[dict[str, Measured], str | None]:
    """Per tensor: the coordinates and the loss measured there; then --budget spent. Ctrl-C
    (or a Stop) keeps what was measured and says why it was interrupted."""
    measured: dict[str, Measured] = {}
    try:
        for position, c in enumerate(problem.checkables):
            if options.progress:
                options.progress(c.name, position, len(problem.checkables))
            # every coordinate of a small model, unless each point costs a whole forward
            everything = small_model and evaluator.can_batch(c)
            if _along_directions(c, options, small_model, everything):
                measured[c.name] = measure_directions(
                    evaluator, c, options.eps, options.seed, options.directions
                )
                continue
            coords = choose_coordinates(c, analytic.grads, options, everything)
            measured[c.name] = measure(evaluator, c, coords, options.eps, options.seed)
        if options.budget is not None:
            spend_budget(evaluator, problem, measured, options, started)
    except KeyboardInterrupt as exc:
        return measured, caught(exc)
    return measured, None


def _along_directions(
    c: Checkable, options: CheckOptions, small_model: bool, everything: bool
) -> bool:
    """Note [directions]: the default for every tensor of a larger model, and for the larger
    tensors of a small model that can't check every coordinate at once."""
    n = c.value.numel()
    if not options.directions or everything or n <= options.directions:
        return False
    return not (small_model and n <= FULL_THRESHOLD)


def _judge_tensors(
    problem: CheckProblem,
    analytic: Analytic,
    measured: dict[str, Measured],
    f0: torch.Tensor,
    judge: Callable[..., TensorJudge],
    label: Callable[[Checkable, int], str],
    localise: Callable[[Checkable, tuple, int], Measured],
) -> tuple[list[tuple[TensorResult, str]], str | None]:
    """Per measured tensor and loss term, the judge's result, grouped by term (the first
    term's results first); a tensor measured along directions alone that they don't pass
    is measured at coordinates too (`localise`). Ctrl-C (or a Stop) keeps the results so far
    and says why it was interrupted; in a bounded run that was stopped, every evaluation
    raises at once (`stopping.raise_if_stopped`), so the tensors judged without one more
    evaluation are still judged, the others left out."""
    per_term: list[list[tuple[TensorResult, str]]] = [[] for _ in problem.term_names]
    terms = range(len(per_term))

    def judged(c: Checkable, got: Measured, k: int) -> TensorJudge:
        return judge(
            c,
            label(c, k),
            analytic.grads[k][c.name],
            got,
            k,
            f0=float(f0[k]),
            rounding=_tensor_rounding(problem, got, f0),
            not_reentrant=analytic.not_reentrant.get(c.name),
        )

    def one_tensor(c: Checkable, got: Measured) -> list[TensorResult]:
        """The results of `c`, one per loss term."""
        if got.directions is not None:
            quick = [judged(c, got, k).by_directions(got.directions) for k in terms]
            if all(result is not None for result, _ in quick):
                return [result for result, _ in quick]
            worst = next(w for result, w in quick if result is None)
            compared = got.directions[0].shape[0]
            got = localise(c, got.directions, worst)
            return [
                dataclasses.replace(judged(c, got, k).result(), directions=compared) for k in terms
            ]
        return [judged(c, got, k).result() for k in terms]

    interrupted = None
    for c in problem.checkables:
        if c.name not in measured:
            break
        try:
            results = one_tensor(c, measured[c.name])
        except KeyboardInterrupt as exc:
            interrupted = interrupted or caught(exc)
            if stop_requested() is None:  # a plain Ctrl-C: nothing more is judged
                break
            continue  # stopped: what needs no more evaluations is still judged
        for k, result in enumerate(results):
            per_term[k].append((result, c.name))
    return [r for results in per_term for r in results], interrupted


def _analytic_floor(problem: CheckProblem, analytic: Analytic) -> float:
    """The rounding autograd's gradients carry: ANALYTIC_ULPS of the largest of them (a
    backward that cancels, as BatchNorm's does for a bias before it, leaves that much)."""
    largest = max(
        (float(g.abs().max()) for per in analytic.grads for g in per.values() if g is not None),
        default=0.0,
    )
    return ANALYTIC_ULPS * torch.finfo(problem.precision).eps * largest


def _tensor_rounding(problem: CheckProblem, got: Measured, f0: torch.Tensor) -> float:
    """Rounding noise of f in one tensor's evaluations: a few ulps of the largest scale its
    rows moved (Note [rounding noise of a finite difference] in losses.py), or of the loss."""
    scales = [got.plus[:, -1], got.minus[:, -1]]
    if got.direction is not None:
        scales += [got.direction[1][-1:], got.direction[2][-1:]]
    if got.directions is not None:
        scales += [got.directions[1][:, -1], got.directions[2][:, -1]]
    moved = float(torch.cat([s.reshape(-1) for s in scales]).abs().max())
    return rounding_noise(problem.precision, max(moved, float(f0[:-1].abs().max()), 1e-300))


# --- the report -----------------------------------------------------------------------------


@dataclass
class _ReportMaker:
    """What every report of this run carries, and the tensors' names in it."""

    problem: CheckProblem
    options: CheckOptions
    target: str
    found_by: str
    version: str
    label_suffix: str
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def label(self, c: Checkable, k: int) -> str:
        """The first term (the sum, when there are several) goes by the tensor's name."""
        base = c.name + self.label_suffix
        return base if k == 0 else f"{base} [{self.problem.term_names[k]}]"

    def unchecked(self, note: str, judged: bool = True) -> list[TensorResult]:
        """Every tensor with no coordinate compared: failed (NaN/Inf, a backward that
        raised) or, when not `judged`, left without a verdict (a nondeterministic forward)."""
        return [
            TensorResult(
                name=self.label(c, 0),
                kind=c.kind,
                shape=tuple(c.value.shape),
                numel=c.value.numel(),
                checked=0,
                rel_error=math.inf if judged else math.nan,
                rating="bug" if judged else "n/a",
                passed=False,
                note=note,
            )
            for c in self.problem.checkables
        ]

    def finish(self, results: list[TensorResult], **extra: Any) -> CheckReport:
        return CheckReport(
            target=self.target,
            found_by=self.found_by,
            tolerance=self.options.tolerance,
            eps=self.options.eps,
            results=tuple(results),
            version=self.version,
            dtype=str(self.problem.dtype).replace("torch.", ""),
            warnings=tuple(self.warnings),
            seconds=time.perf_counter() - self.started,
            **extra,
        )


def _nonfinite_output(problem: CheckProblem) -> str | None:
    """The path of the first output tensor holding NaN/Inf, for the failure message."""
    out = problem.reference_output
    if out is None:
        return None
    for path, t in floating_leaves(out):
        if not torch.isfinite(t.detach()).all():
            kind = "NaN" if torch.isnan(t.detach()).any() else "Inf"
            return f"{path} ({kind})"
    return None


def _batch_size(problem: CheckProblem) -> int | None:
    """The leading dimension of the first input tensor with at least two dimensions."""
    for value in (*problem.args, *problem.kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[0])
    return None

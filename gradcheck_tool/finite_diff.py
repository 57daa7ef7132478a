"""The check engine: analytic gradients from autograd against central differences.

    numeric_i = (f(θ + h·e_i) − f(θ − h·e_i)) / 2h
    rel_error = ‖a − n‖ / (‖a‖ + ‖n‖ + tiny)

`tiny` is the finite-difference resolution (rounding noise ≈ ε_mach·Σ|summands of f|/h per
coordinate, divided by the tolerance), so gradients too small for finite differences to see
are not reported as bugs, while any error larger than that noise still counts.
Kinks (ReLU, abs, max, clamp at their corners) are recognised from the one-sided
differences. Pure: never prints, never exits.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UserCodeError
from .hints import bug_hint
from .loading import describe_exception
from .prepare import TOTAL, Checkable, Problem, floating_leaves
from .results import CheckReport, SweepPoint, TensorResult, WorstEntry, rating_for

FULL_THRESHOLD = 256  # tensors up to this many elements are checked at every coordinate
SMALL_MODEL = 20_000  # ... and every tensor of a target with at most this many in all
DEFAULT_SAMPLES = 16  # coordinates sampled from each larger tensor (plus a direction check)
MEMORY_BUDGET = 256 * 2**20  # bytes of perturbed copies per batched (vmap) call
MAX_BATCH = 512
ROUNDING_ULPS = 4.0  # rounding noise of f(θ±h) in units of ε_mach·Σ|summands| (measured: ~1)
WORST_SHOWN = 5
SWEEP_STEPS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
MISSING_NOTE = (
    "the gradient never reaches this tensor (autograd gives {got}) but the loss depends on "
    "it: look for .detach(), .data, torch.no_grad() or .item() on its way to the loss"
)
SWEEP_COORDS = 64  # coordinates re-evaluated at each step of a sweep


@dataclass
class CheckOptions:
    tolerance: float = 1e-5
    eps: float = 1e-6
    full: bool = False
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    batched: bool = True
    sweep: bool = False  # sweep the step size for every tensor, not only failing ones
    budget: float | None = None  # seconds: keep adding sampled coordinates until spent
    progress: Callable[[str, int, int], None] | None = None


class Interrupted(Exception):
    """Raised through the engine when the user presses Ctrl-C; carries the partial report."""

    def __init__(self, report: CheckReport) -> None:
        super().__init__("interrupted")
        self.report = report


# --- comparing one tensor's analytic and numeric derivatives -------------------------------


@dataclass
class Comparison:
    """Analytic vs numeric at the checked coordinates of one tensor, for one loss term."""

    a: torch.Tensor  # analytic, (m,)
    num: torch.Tensor  # central differences, (m,)
    kink: torch.Tensor  # bool (m,): the derivative jumps here and `a` is a subgradient
    rel: float
    tiny: float
    noise: float  # per-coordinate finite-difference resolution at this step

    @property
    def judged(self) -> torch.Tensor:
        """Numeric values with kinks replaced by the analytic value (they are not errors)."""
        return torch.where(self.kink, self.a, self.num)


def compare(
    a: torch.Tensor,
    fp: torch.Tensor,
    fm: torch.Tensor,
    f0: float,
    h: float,
    rounding: float,
    tol: float,
) -> Comparison:
    """a: analytic at m coordinates; fp/fm: loss at θ±h·e_i; rounding: noise of f itself."""
    noise = rounding / h
    num = (fp - fm) / (2 * h)
    fwd = (fp - f0) / h
    bwd = (f0 - fm) / h
    # A kink: the one-sided derivatives differ by far more than smooth curvature or rounding
    # explain, and the analytic value lies between them (a valid subgradient).
    jump = (fwd - bwd).abs() > 1e-3 * torch.maximum(fwd.abs(), bwd.abs()) + 100 * noise
    slack = 4 * noise + tol * a.abs()
    within = (a >= torch.minimum(fwd, bwd) - slack) & (a <= torch.maximum(fwd, bwd) + slack)
    mismatch = (a - num).abs() > tol * (a.abs() + num.abs()) + noise
    kink = jump & mismatch & within
    judged = torch.where(kink, a, num)
    tiny = math.sqrt(a.numel()) * noise / tol
    diff = float((a - judged).norm())
    denom = float(a.norm()) + float(judged.norm()) + tiny
    rel = diff / denom if diff else 0.0
    return Comparison(a, num, kink, rel, tiny, noise)


def classify_sweep(points: list[SweepPoint], tol: float, default_eps: float) -> str:
    """Truncation (error shrinks with h), round-off (grows as h shrinks) or a stable bug."""
    if all(math.isinf(p.rel_error) for p in points):
        return "stable mismatch: NaN/Inf at every step"
    errs = {p.eps: p.rel_error for p in points if math.isfinite(p.rel_error)}
    if not errs:
        return "unresolved: the gradient is below finite-difference resolution at every step"
    best_eps = min(errs, key=errs.get)
    if errs[best_eps] > tol:
        middle = [e for h, e in errs.items() if 1e-8 <= h <= 1e-3] or list(errs.values())
        if max(middle) <= 10 * min(middle):
            return "stable mismatch at every step size: a real bug"
        best = f"best {errs[best_eps]:.2g} at eps={best_eps:g}"
        return f"mismatch at every step size ({best}): a real bug"
    if best_eps < default_eps:
        return f"truncation error: shrinks as h shrinks; passes at eps={best_eps:g}"
    if best_eps > default_eps:
        return f"round-off error: grows as h shrinks; passes at eps={best_eps:g}"
    return "passes at the default step"


# --- the check ------------------------------------------------------------------------------


class _Evaluator:
    """Loss terms at θ ± h·e_i: batched with vmap where the model allows, serially otherwise."""

    def __init__(
        self, problem: Problem, options: CheckOptions, *, needs_grad: bool = False
    ) -> None:
        self.problem = problem
        self.options = options
        self.needs_grad = needs_grad
        self.fallback_reason: str | None = None
        if not options.batched:
            self.fallback_reason = "batching turned off (--serial)"
        elif needs_grad:
            self.fallback_reason = "second-order terms are evaluated one at a time"
        self.batched_used = False
        self.base = {c.name: c.value for c in problem.checkables}
        self.problem_missing_note = getattr(problem, "missing_note", MISSING_NOTE)

    def _grad_mode(self) -> Any:
        return torch.enable_grad() if self.needs_grad else torch.no_grad()

    def _terms_at(self, name: str, value: torch.Tensor) -> torch.Tensor:
        try:
            return self.problem.terms({**self.base, name: value}).detach()
        except (UserCodeError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise UserCodeError(
                f"the forward raised {describe_exception(exc, None)} at a perturbed value of {name}"
            ) from exc

    def coordinates(
        self, c: Checkable, coords: torch.Tensor, h: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss terms at θ+h·e_i and θ−h·e_i for each coordinate: two (m, K) tensors."""
        with self._grad_mode():
            if self.fallback_reason is None:
                batched = self._batched(c, coords, h)
                if batched is not None:
                    self.batched_used = True
                    return batched
            return self._serial(c, coords, h)

    def _perturbed(self, c: Checkable, coords: torch.Tensor, step: float) -> torch.Tensor:
        flat = c.value.reshape(-1)
        coords = coords.to(flat.device)
        batch = flat.unsqueeze(0).repeat(coords.numel(), 1)
        rows = torch.arange(coords.numel(), device=flat.device)
        batch[rows, coords] = flat[coords] + step
        return batch.view(coords.numel(), *c.value.shape)

    def _vmapped(self, c: Checkable, batch: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(
            lambda v: self.problem.terms({**self.base, c.name: v}), randomness="same"
        )(batch)

    def _batched(
        self, c: Checkable, coords: torch.Tensor, h: float
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """vmap over perturbed copies of one tensor; None (and a reason) where it can't run."""
        try:
            probe = self._vmapped(c, c.value.unsqueeze(0))[0]
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            self.fallback_reason = f"vmap could not run the model ({type(exc).__name__}: {first})"
            return None
        reference = self._terms_at(c.name, c.value)
        tol = 1e3 * torch.finfo(c.value.dtype).eps * (1.0 + float(reference.abs().max()))
        if not torch.allclose(probe, reference, rtol=0.0, atol=tol):
            self.fallback_reason = "vmap changes the model's result (random draws or state differ)"
            return None
        per_copy = 2 * c.value.numel() * c.value.element_size()
        chunk = int(max(1, min(MAX_BATCH, MEMORY_BUDGET // max(per_copy, 1))))
        plus, minus = [], []
        for start in range(0, coords.numel(), chunk):
            part = coords[start : start + chunk]
            plus.append(self._vmapped(c, self._perturbed(c, part, +h)))
            minus.append(self._vmapped(c, self._perturbed(c, part, -h)))
        return torch.cat(plus), torch.cat(minus)

    def _serial(
        self, c: Checkable, coords: torch.Tensor, h: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        flat = c.value.detach().clone().reshape(-1)
        plus, minus = [], []
        for i in coords.tolist():
            original = flat[i].clone()
            flat[i] = original + h
            plus.append(self._terms_at(c.name, flat.view(c.value.shape)))
            flat[i] = original - h
            minus.append(self._terms_at(c.name, flat.view(c.value.shape)))
            flat[i] = original
        return torch.stack(plus), torch.stack(minus)

    def along(self, c: Checkable, d: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss terms at θ ± h·d."""
        with self._grad_mode():
            return self._terms_at(c.name, c.value + h * d), self._terms_at(c.name, c.value - h * d)


@dataclass
class _Analytic:
    """Autograd's gradients per loss term, and which tensors ignore the upstream gradient."""

    grads: list[dict[str, torch.Tensor | None]]
    upstream_ignored: set[str]
    error: str | None = None


def _analytic(problem: Problem, create_graph: bool = False) -> tuple[torch.Tensor, _Analytic]:
    names = [c.name for c in problem.checkables]
    leaves = {c.name: c.value.detach().clone().requires_grad_(True) for c in problem.checkables}
    with torch.enable_grad():
        try:
            terms = problem.terms(leaves)
        except (UserCodeError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise UserCodeError(f"the forward raised {describe_exception(exc, None)}") from exc
        result = _Analytic([], set())
        if not torch.isfinite(terms.detach()).all():
            return terms.detach(), result
        inputs = [leaves[n] for n in names]
        try:
            for k in range(terms.numel()):
                if not terms[k].requires_grad:
                    result.grads.append(dict.fromkeys(names))
                    continue
                grads = torch.autograd.grad(terms[k], inputs, retain_graph=True, allow_unused=True)
                result.grads.append(
                    {n: None if g is None else g.detach() for n, g in zip(names, grads)}
                )
            # A correct backward is linear in the upstream gradient: doubling the loss
            # doubles every gradient. Tensors whose gradient stays put ignore grad_output.
            if terms[0].requires_grad:
                doubled = torch.autograd.grad(
                    terms[0], inputs, grad_outputs=torch.full_like(terms[0], 2.0), allow_unused=True
                )
                for n, g in zip(names, doubled):
                    g1 = result.grads[0][n]
                    if (
                        g is not None
                        and g1 is not None
                        and g1.abs().max() > 0
                        and torch.allclose(g, g1, rtol=1e-9, atol=0.0)
                    ):
                        result.upstream_ignored.add(n)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            result.error = describe_exception(exc, None)
    return terms.detach(), result


def _forward_mode(problem: Problem) -> tuple[torch.Tensor, _Analytic]:
    """Derivatives of each loss term along every coordinate by forward-mode AD (jvp)."""
    import torch.autograd.forward_ad as fwad

    names = [c.name for c in problem.checkables]
    with torch.no_grad():
        try:
            terms = problem.terms({c.name: c.value for c in problem.checkables})
        except (UserCodeError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise UserCodeError(f"the forward raised {describe_exception(exc, None)}") from exc
    result = _Analytic([dict.fromkeys(names) for _ in range(terms.numel())], set())
    if not torch.isfinite(terms).all():
        return terms, result
    try:
        for c in problem.checkables:
            columns = []
            for i in range(c.value.numel()):
                tangent_in = torch.zeros_like(c.value).reshape(-1)
                tangent_in[i] = 1.0
                with fwad.dual_level(), torch.no_grad():
                    values = {n.name: n.value for n in problem.checkables}
                    values[c.name] = fwad.make_dual(c.value, tangent_in.view(c.value.shape))
                    tangent = fwad.unpack_dual(problem.terms(values)).tangent
                columns.append(torch.zeros_like(terms) if tangent is None else tangent.detach())
            stacked = torch.stack(columns)  # (numel, K)
            for k in range(terms.numel()):
                result.grads[k][c.name] = stacked[:, k].reshape(c.value.shape)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        result.error = describe_exception(exc, None)
    return terms, result


def run_check(
    problem: Problem,
    options: CheckOptions,
    *,
    target: str,
    found_by: str,
    version: str,
    label_suffix: str = "",
    forward_mode: bool = False,
) -> CheckReport:
    """Check every checkable tensor of `problem`; returns the report (never prints)."""
    started = time.perf_counter()
    h, tol = options.eps, options.tolerance
    warnings: list[str] = []
    if not problem.checkables:
        warnings.append("nothing to check: no parameter requires grad and no input is floating")

    base_terms, analytic = _forward_mode(problem) if forward_mode else _analytic(problem)
    term_names = problem.term_names

    def finish(results: list[TensorResult], **extra: Any) -> CheckReport:
        return CheckReport(
            target=target,
            found_by=found_by,
            tolerance=tol,
            eps=h,
            results=tuple(results),
            version=version,
            dtype=str(problem.dtype).replace("torch.", ""),
            warnings=tuple(warnings),
            seconds=time.perf_counter() - started,
            **extra,
        )

    def named(c: Checkable, tname: str) -> str:
        base = c.name + label_suffix
        return base if tname in (TOTAL, term_names[0]) else f"{base} [{tname}]"

    if not torch.isfinite(base_terms).all():
        where = _nonfinite_output(problem) or "the loss"
        note = f"NaN/Inf in the forward pass: seen in {where}"
        return finish(
            [_failed(c, named(c, term_names[0]), note) for c in problem.checkables]
            or [_failed_output(note)]
        )
    if analytic.error is not None:
        note = f"the {'jvp' if forward_mode else 'backward'} raised {analytic.error}"
        return finish([_failed(c, named(c, term_names[0]), note) for c in problem.checkables])

    evaluator = _Evaluator(problem, options, needs_grad=getattr(problem, "needs_grad", False))
    with evaluator._grad_mode():
        f0 = problem.terms(evaluator.base).detach()
        f0_again = problem.terms(evaluator.base).detach()
    noise_in_f = float((f0 - f0_again).abs().max())
    # Rounding noise of f itself: a few ulps of the size of the numbers the loss sums.
    scale = max(problem.magnitude or 0.0, float(f0.abs().max()), 1e-300)
    rounding = ROUNDING_ULPS * torch.finfo(problem.dtype).eps * scale
    if noise_in_f > 0.0:
        grad_scale = max(
            (float(g.abs().max()) for per in analytic.grads for g in per.values() if g is not None),
            default=0.0,
        )
        if noise_in_f / h > tol * max(grad_scale, rounding / h):
            warnings.append(
                f"the loss differs between two evaluations at the same point by "
                f"{noise_in_f:.3g}: that is {noise_in_f / h:.3g} in finite-difference units, "
                f"against gradients of size {grad_scale:.3g}. The forward is nondeterministic "
                "(a private torch.Generator, an unseeded random source, or nondeterministic "
                "kernels), so finite differences cannot judge its gradients. Draw randomness "
                "from torch's global generator, or make the forward deterministic."
            )
            return finish(
                [
                    _unjudged(
                        c, named(c, term_names[0]), "not judged: the forward is nondeterministic"
                    )
                    for c in problem.checkables
                ],
                nondeterministic=True,
                noise=noise_in_f,
            )
        warnings.append(
            f"tiny nondeterminism in the forward ({noise_in_f:.3g}), far below "
            "the finite-difference signal"
        )
        rounding = max(rounding, noise_in_f)

    batch_size = _batch_size(problem)
    small_model = sum(c.value.numel() for c in problem.checkables) <= SMALL_MODEL
    results: list[list[TensorResult]] = [[] for _ in term_names]
    interrupted = False
    try:
        for position, c in enumerate(problem.checkables):
            if options.progress:
                options.progress(c.name, position, len(problem.checkables))
            coords = _choose_coordinates(c, analytic.grads, options, small_model)
            fp, fm = evaluator.coordinates(c, coords, h)
            direction = None
            if coords.numel() < c.value.numel():
                d = _direction(c, options.seed)
                direction = (d, *evaluator.along(c, d, h))
            for k, tname in enumerate(term_names):
                results[k].append(
                    _judge(
                        c,
                        named(c, tname),
                        analytic.grads[k][c.name],
                        coords,
                        fp[:, k].double().cpu(),
                        fm[:, k].double().cpu(),
                        direction,
                        float(f0[k]),
                        k,
                        rounding,
                        options,
                        evaluator,
                        batch_size,
                        upstream_ignored=(k == 0 and c.name in analytic.upstream_ignored),
                    )
                )
    except KeyboardInterrupt:
        interrupted = True
    if options.progress:
        options.progress("", len(problem.checkables), len(problem.checkables))
    report = finish(
        [r for rs in results for r in rs],
        evaluation="batched" if evaluator.batched_used else "serial",
        fallback_reason=evaluator.fallback_reason,
        interrupted=interrupted,
        noise=noise_in_f or None,
    )
    if interrupted:
        raise Interrupted(report)
    return report


def _judge(
    c: Checkable,
    label: str,
    a_full: torch.Tensor | None,
    coords: torch.Tensor,
    fp: torch.Tensor,
    fm: torch.Tensor,
    direction: tuple | None,
    f0: float,
    k: int,
    rounding: float,
    options: CheckOptions,
    evaluator: _Evaluator,
    batch_size: int | None,
    *,
    upstream_ignored: bool,
) -> TensorResult:
    h, tol = options.eps, options.tolerance
    shape = tuple(c.value.shape)
    n_total, m = c.value.numel(), coords.numel()
    base = dict(name=label, kind=c.kind, shape=shape, numel=n_total, checked=m)
    unused = a_full is None
    a_flat = (
        torch.zeros(n_total, dtype=torch.float64) if unused else a_full.reshape(-1).double().cpu()
    )
    if not torch.isfinite(a_flat).all():
        i = int((~torch.isfinite(a_flat)).nonzero()[0])
        return TensorResult(
            **base,
            rel_error=math.inf,
            rating="bug",
            passed=False,
            note=f"NaN/Inf in the analytic gradient (first at index {list(_unravel(i, shape))})",
        )
    num_all = (fp - fm) / (2 * h)
    if not torch.isfinite(num_all).all():
        j = int((~torch.isfinite(num_all)).nonzero()[0])
        idx = list(_unravel(int(coords[j]), shape))
        return TensorResult(
            **base,
            rel_error=math.inf,
            rating="bug",
            passed=False,
            note=f"NaN/Inf in the loss when {c.name}{idx} is moved by ±{h:g}",
        )

    comp = compare(a_flat[coords], fp, fm, f0, h, rounding, tol)
    dir_rel = _direction_error(a_flat, direction, f0, k, h, rounding, tol)
    verdict = max(comp.rel, dir_rel or 0.0)
    passed = verdict <= tol
    note = ""
    never_reaches = False
    numeric_size = float(comp.num.norm())
    if unused or float(a_flat.abs().max()) == 0.0:
        if numeric_size <= comp.tiny * tol:
            note = "unused: the loss does not depend on this tensor" if unused else "no gradient"
            passed, verdict = True, 0.0
        else:
            note = evaluator.problem_missing_note.format(got="none" if unused else "zero")
            never_reaches = True
            passed, verdict = False, max(verdict, 1.0)
    elif passed and max(float(comp.a.norm()), float(comp.judged.norm())) < comp.tiny:
        note = (
            f"gradient (≈{float(comp.a.norm()):.2g}) is below what finite differences "
            f"resolve at eps={h:g}; verified only to that level"
        )

    sweep: tuple[SweepPoint, ...] = ()
    sweep_verdict = None
    if (options.sweep or not passed) and not never_reaches:
        sweep, sweep_verdict = _sweep(
            c, coords, a_flat, direction, f0, k, rounding, options, evaluator
        )
        if not passed and sweep_verdict.startswith(("truncation", "round-off")):
            # the mismatch is the step size's, not the gradient's: no bug to report
            passed = True
            note = f"passes with another step size ({sweep_verdict})"

    n_kinks = int(comp.kink.sum())
    if n_kinks and not note:
        note = f"{n_kinks} kink{'s' if n_kinks > 1 else ''} (non-differentiable point) skipped"
    if m < n_total and not note:
        note = f"sampled {m} of {n_total} coordinates + a random-direction check"
    worst: tuple[WorstEntry, ...] = ()
    hint = None
    if not passed:
        err = (comp.a - comp.judged).abs()
        order = torch.argsort(err, descending=True)[:WORST_SHOWN]
        worst = tuple(
            WorstEntry(_unravel(int(coords[j]), shape), float(comp.a[j]), float(comp.num[j]))
            for j in order.tolist()
            if err[j] > 0
        )
        if dir_rel is not None and dir_rel > tol and comp.rel <= tol:
            note = (note + "; " if note else "") + (
                f"the sampled coordinates agree but a random-direction check does not "
                f"(rel. error {dir_rel:.2g}): the error is in coordinates not sampled; "
                "run with --full"
            )
        hint = bug_hint(
            comp.a,
            comp.judged,
            coords,
            shape,
            full=m == n_total,
            noise=comp.noise,
            batch_size=batch_size,
            upstream_ignored=upstream_ignored,
        )
    return TensorResult(
        **base,
        rel_error=verdict,
        rating=rating_for(verdict),
        passed=passed,
        note=note,
        worst=worst,
        kinks=n_kinks,
        hint=hint,
        direction_error=dir_rel,
        sweep=sweep,
        sweep_verdict=sweep_verdict,
    )


def _direction_error(
    a_flat: torch.Tensor,
    direction: tuple | None,
    f0: float,
    k: int,
    h: float,
    rounding: float,
    tol: float,
) -> float | None:
    """Relative error of the derivative along a random unit direction d: a·d vs numeric."""
    if direction is None:
        return None
    d, dp, dm = direction
    ad = float(a_flat @ d.reshape(-1).double().cpu())
    comp = compare(
        torch.tensor([ad]),
        dp[k : k + 1].double().cpu(),
        dm[k : k + 1].double().cpu(),
        f0,
        h,
        rounding,
        tol,
    )
    return comp.rel if math.isfinite(float(comp.num[0])) else math.inf


def _sweep(
    c: Checkable,
    coords: torch.Tensor,
    a_flat: torch.Tensor,
    direction: tuple | None,
    f0: float,
    k: int,
    rounding: float,
    options: CheckOptions,
    evaluator: _Evaluator,
) -> tuple[tuple[SweepPoint, ...], str]:
    """Relative error at several step sizes, on (up to SWEEP_COORDS of) the same coordinates
    and the same random direction. Steps where the gradient is below the finite-difference
    resolution are recorded as NaN: they can neither pass nor fail anything."""
    subset = coords[:SWEEP_COORDS]
    a = a_flat[subset]
    d = direction[0].reshape(-1).double().cpu() if direction is not None else None
    points = []
    for step in SWEEP_STEPS:
        noise = rounding / step
        fp, fm = evaluator.coordinates(c, subset, step)
        comp = compare(
            a,
            fp[:, k].double().cpu(),
            fm[:, k].double().cpu(),
            f0,
            step,
            rounding,
            options.tolerance,
        )
        pairs = [(comp.a, comp.judged, comp.tiny)]
        if direction is not None:
            dp, dm = evaluator.along(c, direction[0], step)
            dcomp = compare(
                torch.tensor([float(a_flat @ d)]),
                dp[k : k + 1].double().cpu(),
                dm[k : k + 1].double().cpu(),
                f0,
                step,
                rounding,
                options.tolerance,
            )
            pairs.append((dcomp.a, dcomp.judged, noise / options.tolerance))
        errors = []
        for a_i, n_i, tiny in pairs:
            size = float(a_i.norm()) + float(n_i.norm())
            if not torch.isfinite(n_i).all():
                errors.append(math.inf)
            elif size >= tiny:  # resolved: the signal is above the rounding noise
                errors.append(float((a_i - n_i).norm()) / size)
        points.append(SweepPoint(step, max(errors) if errors else math.nan))
    return tuple(points), classify_sweep(points, options.tolerance, options.eps)


# --- choosing coordinates and directions ----------------------------------------------------


def _choose_coordinates(
    c: Checkable,
    grads: list[dict[str, torch.Tensor | None]],
    options: CheckOptions,
    small_model: bool,
) -> torch.Tensor:
    """All coordinates of small tensors; else a seeded stratified sample plus the largest
    analytic entries (a wrong gradient is most visible where it is large)."""
    n = c.value.numel()
    if options.full or small_model or n <= max(FULL_THRESHOLD, options.samples):
        return torch.arange(n)
    k = max(1, options.samples)
    gen = torch.Generator().manual_seed(options.seed * 1_000_003 + zlib.crc32(c.name.encode()))
    chosen: list[int] = []
    present = [per[c.name] for per in grads[:1] if per.get(c.name) is not None]
    n_top = min(k // 4, 4)
    if present and n_top:
        chosen.extend(torch.topk(present[0].abs().reshape(-1).cpu(), n_top).indices.tolist())
    edges = torch.linspace(0, n, k - len(chosen) + 1).long().tolist()
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            chosen.append(lo + int(torch.randint(hi - lo, (1,), generator=gen)))
    return torch.tensor(sorted(set(chosen)), dtype=torch.long)


def _direction(c: Checkable, seed: int) -> torch.Tensor:
    """A seeded random unit direction in the tensor's space."""
    gen = torch.Generator().manual_seed(seed + zlib.crc32(c.name.encode()) + 1)
    d = torch.randn(c.value.shape, generator=gen, dtype=torch.float64)
    return (d / d.norm()).to(device=c.value.device, dtype=c.value.dtype)


# --- small helpers ------------------------------------------------------------------------


def _batch_size(problem: Problem) -> int | None:
    """The leading dimension of the first input tensor with at least two dimensions."""
    for value in (*problem.args, *problem.kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[0])
    return None


def _unravel(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(out))


def _failed(c: Checkable, name: str, note: str) -> TensorResult:
    return TensorResult(
        name=name,
        kind=c.kind,
        shape=tuple(c.value.shape),
        numel=c.value.numel(),
        checked=0,
        rel_error=math.inf,
        rating="bug",
        passed=False,
        note=note,
    )


def _failed_output(note: str) -> TensorResult:
    return TensorResult(
        name="output",
        kind="output",
        shape=(),
        numel=0,
        checked=0,
        rel_error=math.inf,
        rating="bug",
        passed=False,
        note=note,
    )


def _unjudged(c: Checkable, name: str, note: str) -> TensorResult:
    return TensorResult(
        name=name,
        kind=c.kind,
        shape=tuple(c.value.shape),
        numel=c.value.numel(),
        checked=0,
        rel_error=math.nan,
        rating="n/a",
        passed=False,
        note=note,
    )


def _nonfinite_output(problem: Problem) -> str | None:
    """The path of the first output tensor holding NaN/Inf, for the failure message."""
    out = getattr(problem, "reference_output", None)
    if out is None:
        return None
    for path, t in floating_leaves(out):
        if not torch.isfinite(t.detach()).all():
            kind = "NaN" if torch.isnan(t.detach()).any() else "Inf"
            return f"{path} ({kind})"
    return None

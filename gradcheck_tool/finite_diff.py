"""The check engine: analytic gradients from autograd against central differences.

    numeric_i = (f(θ + h·e_i) − f(θ − h·e_i)) / 2h
    rel_error = ‖a − n‖ / (‖a‖ + ‖n‖ + tiny)

`tiny` is the finite-difference resolution (rounding noise ≈ ε_mach·|f|/h per coordinate,
divided by the tolerance), so gradients too small for finite differences to see are not
reported as bugs, while any error larger than that noise still counts. Pure: never prints.
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
from .loading import describe_exception
from .prepare import TOTAL, Checkable, Problem
from .results import CheckReport, TensorResult, WorstEntry, rating_for

FULL_THRESHOLD = 256  # tensors up to this many elements are checked at every coordinate
SMALL_MODEL = 20_000  # ... and every tensor of a target with at most this many in all
DEFAULT_SAMPLES = 16  # coordinates sampled from each larger tensor (plus a direction check)
MEMORY_BUDGET = 256 * 2**20  # bytes of perturbed copies per batched (vmap) call
MAX_BATCH = 512
ROUNDING_ULPS = 4.0  # rounding noise of f(θ±h) in units of ε_mach·Σ|summands| (measured: ~1)
WORST_SHOWN = 5


@dataclass
class CheckOptions:
    tolerance: float = 1e-5
    eps: float = 1e-6
    full: bool = False
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    batched: bool = True
    progress: Callable[[str, int, int], None] | None = None


@dataclass
class _Numeric:
    """Loss terms at θ ± h along each checked coordinate: shape (m, K) each."""

    plus: torch.Tensor
    minus: torch.Tensor


class Interrupted(Exception):
    """Raised through the engine when the user presses Ctrl-C; carries the partial report."""

    def __init__(self, report: CheckReport) -> None:
        super().__init__("interrupted")
        self.report = report


def run_check(
    problem: Problem, options: CheckOptions, *, target: str, found_by: str, version: str
) -> CheckReport:
    """Check every checkable tensor of `problem`; returns the report (never prints)."""
    started = time.perf_counter()
    h = options.eps
    warnings: list[str] = []
    names = [c.name for c in problem.checkables]
    if not problem.checkables:
        warnings.append("nothing to check: no parameter requires grad and no input is floating")

    # --- analytic pass --------------------------------------------------------------------
    leaves = {c.name: c.value.detach().clone().requires_grad_(True) for c in problem.checkables}
    with torch.enable_grad():
        try:
            terms = problem.terms(leaves)
        except UserCodeError:
            raise
        except Exception as exc:
            raise UserCodeError(f"the forward raised {describe_exception(exc, None)}") from exc
    term_names = problem.term_names
    base_terms = terms.detach()
    nonfinite_out = _nonfinite_output(problem)
    analytic: list[dict[str, torch.Tensor | None]] = []
    backward_error: str | None = None
    if torch.isfinite(base_terms).all():
        for k in range(len(term_names)):
            try:
                if not terms[k].requires_grad:
                    grads = [None] * len(names)
                else:
                    grads = torch.autograd.grad(
                        terms[k], [leaves[n] for n in names], retain_graph=True, allow_unused=True
                    )
            except Exception as exc:
                backward_error = describe_exception(exc, None)
                break
            analytic.append(
                {n: (g.detach() if g is not None else None) for n, g in zip(names, grads)}
            )
    del terms, leaves

    def finish(results: list[TensorResult], **extra: Any) -> CheckReport:
        return CheckReport(
            target=target,
            found_by=found_by,
            tolerance=options.tolerance,
            eps=h,
            results=tuple(results),
            version=version,
            dtype=str(problem.dtype).replace("torch.", ""),
            warnings=tuple(warnings),
            seconds=time.perf_counter() - started,
            **extra,
        )

    if not torch.isfinite(base_terms).all():
        where = nonfinite_out or "the loss"
        note = f"NaN/Inf in the forward pass: seen in {where}"
        return finish(
            [_failed(c, note) for c in problem.checkables] or [_failed_named("loss", note)]
        )
    if backward_error is not None:
        note = f"the backward raised {backward_error}"
        return finish([_failed(c, note) for c in problem.checkables])

    # --- numeric pass ---------------------------------------------------------------------
    with torch.no_grad():
        values = {c.name: c.value for c in problem.checkables}
        f0 = problem.terms(values)
        f0_again = problem.terms(values)
    noise = float((f0 - f0_again).abs().max()) if f0.numel() else 0.0
    # Rounding noise of a central difference: a few ulps of the numbers the loss sums, / h.
    scale = max(problem.magnitude or 0.0, float(f0.abs().max()), 1e-300)
    resolution = ROUNDING_ULPS * torch.finfo(problem.dtype).eps * scale / h
    if noise > 0.0:
        grad_scale = max(
            (float(g.abs().max()) for per in analytic for g in per.values() if g is not None),
            default=0.0,
        )
        signal_noise = noise / h
        if signal_noise > options.tolerance * max(grad_scale, resolution):
            warnings.append(
                f"the loss differs between two evaluations at the same point by {noise:.3g} "
                f"(noise/eps = {signal_noise:.3g} against gradients of size {grad_scale:.3g}): "
                "the forward is nondeterministic (a private torch.Generator, an unseeded "
                "random source, or nondeterministic kernels), so finite differences cannot "
                "judge its gradients. Seed it from torch's global generator or make it "
                "deterministic."
            )
            return finish(
                [
                    _unjudged(c, "not judged: the forward is nondeterministic")
                    for c in problem.checkables
                ],
                nondeterministic=True,
                noise=noise,
            )
        warnings.append(f"tiny nondeterminism in the forward ({noise:.3g}); below the signal")

    evaluator = _Evaluator(problem, options)
    small_model = sum(c.value.numel() for c in problem.checkables) <= SMALL_MODEL
    per_term: list[list[TensorResult]] = [[] for _ in term_names]
    interrupted = False
    try:
        for position, c in enumerate(problem.checkables):
            if options.progress:
                options.progress(c.name, position, len(problem.checkables))
            coords = _choose_coordinates(c, analytic, options, small_model)
            numeric = evaluator.coordinates(c, coords)
            direction = None
            if coords.numel() < c.value.numel():
                direction = evaluator.direction(c)
            for k, tname in enumerate(term_names):
                label = c.name if tname in (TOTAL, term_names[0]) else f"{c.name} [{tname}]"
                per_term[k].append(
                    _judge(
                        c,
                        label,
                        analytic[k][c.name],
                        coords,
                        numeric,
                        direction,
                        f0,
                        k,
                        resolution,
                        options,
                    )
                )
    except KeyboardInterrupt:
        interrupted = True
    if options.progress:
        options.progress("", len(problem.checkables), len(problem.checkables))
    if evaluator.fallback_reason:
        warnings.append(f"serial evaluation: {evaluator.fallback_reason}")
    results = [r for rs in per_term for r in rs]
    report = finish(
        results,
        evaluation="batched" if evaluator.batched_used else "serial",
        fallback_reason=evaluator.fallback_reason,
        interrupted=interrupted,
        noise=noise or None,
    )
    if interrupted:
        raise Interrupted(report)
    return report


# --- choosing coordinates -------------------------------------------------------------------


def _choose_coordinates(
    c: Checkable,
    analytic: list[dict[str, torch.Tensor | None]],
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
    n_top = min(k // 4, 4)
    chosen: list[int] = []
    grads = [per[c.name] for per in analytic if per.get(c.name) is not None]
    if grads and n_top:
        mag = sum(g.abs().reshape(-1).to(torch.float64).cpu() for g in grads)
        chosen.extend(torch.topk(mag, n_top).indices.tolist())
    strata = k - len(chosen)
    edges = torch.linspace(0, n, strata + 1).long()
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        if hi > lo:
            chosen.append(lo + int(torch.randint(hi - lo, (1,), generator=gen)))
    return torch.tensor(sorted(set(chosen)), dtype=torch.long)


# --- evaluating the loss at perturbed points ------------------------------------------------


class _Evaluator:
    """Loss terms at θ ± h·e_i: batched with vmap where the model allows, serially otherwise."""

    def __init__(self, problem: Problem, options: CheckOptions) -> None:
        self.problem = problem
        self.options = options
        self.h = options.eps
        self.fallback_reason: str | None = None if options.batched else "batching disabled"
        self.batched_used = False
        self.base = {c.name: c.value for c in problem.checkables}

    def _terms_at(self, name: str, value: torch.Tensor) -> torch.Tensor:
        values = dict(self.base)
        values[name] = value
        try:
            return self.problem.terms(values)
        except Exception as exc:
            raise UserCodeError(
                f"the forward raised {describe_exception(exc, None)} at a perturbed value of {name}"
            ) from exc

    def coordinates(self, c: Checkable, coords: torch.Tensor) -> _Numeric:
        with torch.no_grad():
            if self.fallback_reason is None or not self.options.batched:
                batched = self._batched(c, coords) if self.options.batched else None
                if batched is not None:
                    self.batched_used = True
                    return batched
            return self._serial(c, coords)

    def _perturbed(self, c: Checkable, coords: torch.Tensor, sign: float) -> torch.Tensor:
        flat = c.value.reshape(-1)
        batch = flat.unsqueeze(0).repeat(coords.numel(), 1)
        rows = torch.arange(coords.numel(), device=flat.device)
        coords = coords.to(flat.device)
        batch[rows, coords] = flat[coords] + sign * self.h
        return batch.view(coords.numel(), *c.value.shape)

    def _vmapped(self, c: Checkable, batch: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(
            lambda v: self.problem.terms({**self.base, c.name: v}), randomness="same"
        )(batch)

    def _batched(self, c: Checkable, coords: torch.Tensor) -> _Numeric | None:
        """vmap over perturbed copies of one tensor; None (and a reason) where it can't run."""
        try:
            probe = self._vmapped(c, c.value.unsqueeze(0))[0]
            reference = self._terms_at(c.name, c.value)
        except Exception as exc:
            self.fallback_reason = (
                f"vmap could not run the model ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160] if str(exc) else ''})"
            )
            return None
        tol = 1e3 * torch.finfo(c.value.dtype).eps * (1.0 + float(reference.abs().max()))
        if not torch.allclose(probe, reference, rtol=0.0, atol=tol):
            self.fallback_reason = (
                "vmap changes the model's result (random draws or state differ under vmap)"
            )
            return None
        per_copy = 2 * c.value.numel() * c.value.element_size()
        chunk = int(max(1, min(MAX_BATCH, MEMORY_BUDGET // max(per_copy, 1))))
        plus, minus = [], []
        for start in range(0, coords.numel(), chunk):
            part = coords[start : start + chunk]
            plus.append(self._vmapped(c, self._perturbed(c, part, +1.0)))
            minus.append(self._vmapped(c, self._perturbed(c, part, -1.0)))
        return _Numeric(torch.cat(plus), torch.cat(minus))

    def _serial(self, c: Checkable, coords: torch.Tensor) -> _Numeric:
        flat = c.value.detach().clone().reshape(-1)
        plus, minus = [], []
        for i in coords.tolist():
            original = flat[i].clone()
            flat[i] = original + self.h
            plus.append(self._terms_at(c.name, flat.view(c.value.shape)))
            flat[i] = original - self.h
            minus.append(self._terms_at(c.name, flat.view(c.value.shape)))
            flat[i] = original
        return _Numeric(torch.stack(plus), torch.stack(minus))

    def direction(self, c: Checkable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(d, f(θ + h·d), f(θ − h·d)) for a seeded random unit direction d."""
        gen = torch.Generator().manual_seed(self.options.seed + zlib.crc32(c.name.encode()) + 1)
        d = torch.randn(c.value.shape, generator=gen, dtype=torch.float64)
        d = (d / d.norm()).to(device=c.value.device, dtype=c.value.dtype)
        with torch.no_grad():
            plus = self._terms_at(c.name, c.value + self.h * d)
            minus = self._terms_at(c.name, c.value - self.h * d)
        return d, plus, minus


# --- judging one tensor -----------------------------------------------------------------------


def _judge(
    c: Checkable,
    label: str,
    a_full: torch.Tensor | None,
    coords: torch.Tensor,
    numeric: _Numeric,
    direction: tuple | None,
    f0: torch.Tensor,
    k: int,
    resolution: float,
    options: CheckOptions,
) -> TensorResult:
    h, tol = options.eps, options.tolerance
    shape = tuple(c.value.shape)
    n_total = c.value.numel()
    m = coords.numel()
    base = dict(name=label, kind=c.kind, shape=shape, numel=n_total, checked=m)
    fp = numeric.plus[:, k].to(torch.float64).cpu()
    fm = numeric.minus[:, k].to(torch.float64).cpu()
    f0k = float(f0[k])
    num = (fp - fm) / (2 * h)
    unused = a_full is None
    a_flat = (
        torch.zeros(n_total, dtype=torch.float64)
        if unused
        else a_full.reshape(-1).to(torch.float64).cpu()
    )
    if not torch.isfinite(a_flat).all():
        bad = _first_nonfinite(a_flat, shape)
        return TensorResult(
            **base,
            rel_error=math.inf,
            rating="bug",
            passed=False,
            note=f"NaN/Inf in the analytic gradient (first at index {bad})",
        )
    if not torch.isfinite(num).all():
        bad = _first_nonfinite(num, None)
        idx = _unravel(int(coords[bad]), shape)
        return TensorResult(
            **base,
            rel_error=math.inf,
            rating="bug",
            passed=False,
            note=f"NaN/Inf in the loss when {c.name}{list(idx)} is perturbed by ±{h:g}",
        )
    a = a_flat[coords]

    # Kinks: the derivative jumps inside [θ−h, θ+h] and the analytic value is a one-sided
    # derivative or between them (a valid subgradient), so the central difference is moot.
    fwd = (fp - f0k) / h
    bwd = (f0k - fm) / h
    jump = (fwd - bwd).abs() > 1e-3 * torch.maximum(fwd.abs(), bwd.abs()) + 100 * resolution
    lo = torch.minimum(fwd, bwd) - 4 * resolution - tol * a.abs()
    hi = torch.maximum(fwd, bwd) + 4 * resolution + tol * a.abs()
    mismatch = (a - num).abs() > tol * (a.abs() + num.abs()) + resolution
    kink = jump & mismatch & (a >= lo) & (a <= hi)
    n_kinks = int(kink.sum())
    num_judged = torch.where(kink, a, num)

    tiny = math.sqrt(m) * resolution / tol
    diff = (a - num_judged).norm().item()
    a_norm, n_norm = a.norm().item(), num_judged.norm().item()
    rel = diff / (a_norm + n_norm + tiny) if (a_norm or n_norm or diff) else 0.0

    dir_rel = None
    if direction is not None:
        d, dp, dm = direction
        d = d.reshape(-1).to(torch.float64).cpu()
        ad = float(a_flat @ d)
        dpk, dmk = float(dp[k]), float(dm[k])
        nd = (dpk - dmk) / (2 * h)
        dfwd, dbwd = (dpk - f0k) / h, (f0k - dmk) / h
        dir_kink = (
            abs(dfwd - dbwd) > 1e-3 * max(abs(dfwd), abs(dbwd)) + 100 * resolution
            and min(dfwd, dbwd) - 4 * resolution <= ad <= max(dfwd, dbwd) + 4 * resolution
        )
        if not math.isfinite(nd):
            dir_rel = math.inf
        elif dir_kink:
            dir_rel = 0.0
        else:
            dir_rel = abs(ad - nd) / (abs(ad) + abs(nd) + resolution / tol)
    verdict = max(rel, dir_rel or 0.0)
    passed = verdict <= tol
    note = ""
    num_norm_all = num.norm().item()
    if unused:
        if num_norm_all <= tiny * tol:
            note = "unused: the loss does not depend on this tensor"
            passed, verdict = True, 0.0
        else:
            note = (
                "the gradient never reaches this tensor (autograd returns none) but the loss "
                "depends on it: look for .detach(), .data, torch.no_grad() or .item()"
            )
            passed, verdict = False, max(verdict, 1.0)
    elif a_flat.abs().max().item() == 0.0:
        if num_norm_all <= tiny * tol:
            note = "no gradient"
            verdict, passed = 0.0, True
        else:
            note = (
                "the analytic gradient is zero but the loss depends on this tensor: the "
                "gradient never reaches it (look for .detach(), .data, torch.no_grad() "
                "or .item())"
            )
            passed, verdict = False, max(verdict, 1.0)
    elif passed and max(a_norm, n_norm) < tiny:
        note = (
            f"gradient (≈{max(a_norm, n_norm):.2g}) is below what finite differences "
            f"resolve at eps={h:g}; verified only to that level"
        )
    if n_kinks and not note:
        note = f"{n_kinks} kink{'s' if n_kinks > 1 else ''} (non-differentiable point) skipped"
    if m < n_total and not note:
        note = f"sampled {m} of {n_total} coordinates + a random-direction check"
    worst: tuple[WorstEntry, ...] = ()
    if not passed:
        err = (a - num_judged).abs()
        order = torch.argsort(err, descending=True)[:WORST_SHOWN]
        worst = tuple(
            WorstEntry(_unravel(int(coords[j]), shape), float(a[j]), float(num[j]))
            for j in order.tolist()
            if err[j] > 0
        )
        if dir_rel is not None and dir_rel > tol and rel <= tol:
            note = (note + "; " if note else "") + (
                f"the sampled coordinates agree but a random-direction check does not "
                f"(rel. error {dir_rel:.2g}): the error is in coordinates not sampled; "
                "run with --full"
            )
    return TensorResult(
        **base,
        rel_error=verdict,
        rating=rating_for(verdict),
        passed=passed,
        note=note,
        worst=worst,
        kinks=n_kinks,
        direction_error=dir_rel,
    )


def _unravel(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(out))


def _first_nonfinite(t: torch.Tensor, shape: tuple[int, ...] | None) -> Any:
    i = int((~torch.isfinite(t)).nonzero()[0])
    return list(_unravel(i, shape)) if shape is not None else i


def _failed(c: Checkable, note: str) -> TensorResult:
    return TensorResult(
        name=c.name,
        kind=c.kind,
        shape=tuple(c.value.shape),
        numel=c.value.numel(),
        checked=0,
        rel_error=math.inf,
        rating="bug",
        passed=False,
        note=note,
    )


def _failed_named(name: str, note: str) -> TensorResult:
    return TensorResult(
        name=name,
        kind="output",
        shape=(),
        numel=0,
        checked=0,
        rel_error=math.inf,
        rating="bug",
        passed=False,
        note=note,
    )


def _unjudged(c: Checkable, note: str) -> TensorResult:
    return TensorResult(
        name=c.name,
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
    from .prepare import floating_leaves

    out = getattr(problem, "reference_output", None)
    if out is None:
        return None
    for path, t in floating_leaves(out):
        if not torch.isfinite(t.detach()).all():
            kind = "NaN" if torch.isnan(t.detach()).any() else "Inf"
            return f"{path} ({kind})"
    return None

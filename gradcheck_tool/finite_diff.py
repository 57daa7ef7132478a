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

import contextlib
import math
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ._guest import describe_exception
from ._tree import floating_leaves
from .errors import UserCodeError
from .hints import bug_hint
from .prepare import Checkable, CheckProblem
from .results import CheckReport, SweepPoint, TensorResult, WorstEntry, rating_for

FULL_THRESHOLD = 256  # tensors up to this many elements are checked at every coordinate
TINY_MODEL = 4096  # ... and every tensor of a target with at most this many in all,
SMALL_MODEL = 20_000  # ... or at most this many,
FULL_CHECK_SECONDS = 10.0  # ... when such a full check should take about this long at most
DEFAULT_SAMPLES = 16  # coordinates sampled from each larger tensor (plus a direction check)
MEMORY_BUDGET = 256 * 2**20  # bytes of perturbed copies per batched (vmap) call
MAX_BATCH = 512
ROUNDING_ULPS = 4.0  # rounding noise of f(θ±h) in units of ε_mach·Σ|summands| (measured: ~1)
WORST_SHOWN = 5
SWEEP_STEPS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
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
    num: torch.Tensor  # central differences, (m,), refined at a smaller step where needed
    kink: torch.Tensor  # bool (m,): f is not differentiable here; the coordinate is skipped
    rel: float
    tiny: float
    noise: float  # per-coordinate finite-difference resolution at this step

    @property
    def judged(self) -> torch.Tensor:
        """Numeric values with kinks replaced by the analytic value (they are not errors)."""
        return torch.where(self.kink, self.a, self.num)


Refine = Callable[[torch.Tensor, float], "tuple[torch.Tensor, torch.Tensor]"]
REFINE = 4.0  # mismatching coordinates are evaluated again at h / REFINE


def compare(
    a: torch.Tensor,
    fp: torch.Tensor,
    fm: torch.Tensor,
    f0: float,
    h: float,
    rounding: float,
    tol: float,
    refine: Refine | None = None,
    kinks: torch.Tensor | None = None,
    verify: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Comparison:
    """a: analytic at m coordinates; fp/fm: loss at θ±h·e_i; rounding: noise of f itself.

    Mismatching coordinates are evaluated again at h/4 (`refine(local_indices, step)`):
    - a kink (ReLU, abs, max, clamp at a corner, however many flip at once): the one-sided
      differences still disagree by as much, since a jump in the derivative does not shrink
      with h, while smooth curvature (fwd − bwd ≈ h·f'') does;
    - a jump in f itself (e.g. the gradient of abs, checked at second order): the error grows
      like 1/h;
    - otherwise, if the smaller step agrees with the analytic value, the mismatch was the
      step's (truncation, or a kink near θ but not at it) and the refined value is used.
    At a kink any subgradient is right. When the analytic value lies between the one-sided
    derivatives, it is one; otherwise (several ReLUs flipping at once, or a wrong backward)
    `verify(local_indices)` judges the backward a small step away from the kink, and only
    coordinates whose backward is right there count as kinks.
    """
    noise = rounding / h
    num = (fp - fm) / (2 * h)
    kink = torch.zeros_like(num, dtype=torch.bool) if kinks is None else kinks.clone()
    mismatch = (a - num).abs() > tol * (a.abs() + num.abs()) + noise
    candidates = (mismatch & ~kink).nonzero().reshape(-1)
    if refine is not None and candidates.numel():
        h2 = h / REFINE
        fp2, fm2 = refine(candidates, h2)
        noise2 = rounding / h2
        fwd, bwd = (fp - f0) / h, (f0 - fm) / h
        fwd2, bwd2 = (fp2 - f0) / h2, (f0 - fm2) / h2
        num2 = (fp2 - fm2) / (2 * h2)
        jump = (fwd - bwd)[candidates].abs()
        jump2 = (fwd2 - bwd2).abs()
        err, err2 = (a - num)[candidates].abs(), (a[candidates] - num2).abs()
        derivative_jumps = (jump > 100 * noise2) & (jump2 > 0.5 * jump)
        value_jumps = (err > 100 * noise2) & (err2 > 0.6 * REFINE * err)
        at_kink = derivative_jumps | value_jumps
        a_c = a[candidates]
        slack = 4 * noise + tol * a_c.abs()
        between = (a_c >= torch.minimum(fwd, bwd)[candidates] - slack) & (
            a_c <= torch.maximum(fwd, bwd)[candidates] + slack
        )
        unexplained = at_kink & ~(derivative_jumps & between)
        if unexplained.any():
            agrees = verify(candidates[unexplained]) if verify is not None else None
            confirmed = torch.zeros_like(unexplained)
            if agrees is not None:
                confirmed[unexplained] = agrees
            at_kink = at_kink & (~unexplained | confirmed)
        kink[candidates[at_kink]] = True
        better = ~at_kink & (err2 < err)
        num = num.clone()
        num[candidates[better]] = num2[better]
    judged = torch.where(kink, a, num)
    tiny = math.sqrt(a.numel()) * noise / tol
    diff = float((a - judged).norm())
    denom = float(a.norm()) + float(judged.norm()) + tiny
    rel = diff / denom if diff else 0.0
    return Comparison(a, num, kink, rel, tiny, noise)


def classify_sweep(
    points: list[SweepPoint], tol: float, default_eps: float
) -> tuple[str, float | None]:
    """Truncation (error shrinks with h), round-off (grows as h shrinks) or a stable bug;
    with the step that passes when the mismatch is the step's, else None."""
    if all(math.isinf(p.rel_error) for p in points):
        return "stable mismatch: NaN/Inf at every step", None
    errs = {p.eps: p.rel_error for p in points if math.isfinite(p.rel_error)}
    if not errs:
        return "unresolved: the gradient is below finite-difference resolution at every step", None
    if errs.get(default_eps, math.inf) <= tol:
        return "passes at the default step", None
    best_eps = min(errs, key=errs.get)
    if errs[best_eps] > tol:
        middle = [e for h, e in errs.items() if 1e-8 <= h <= 1e-3] or list(errs.values())
        if max(middle) <= 10 * min(middle):
            return "stable mismatch at every step size: a real bug", None
        best = f"best {errs[best_eps]:.2g} at eps={best_eps:g}"
        return f"mismatch at every step size ({best}): a real bug", None
    if best_eps < default_eps:
        return f"truncation error: shrinks as h shrinks; passes at eps={best_eps:g}", best_eps
    if best_eps > default_eps:
        return f"round-off error: grows as h shrinks; passes at eps={best_eps:g}", best_eps
    return "passes at the default step", None


# --- the check ------------------------------------------------------------------------------


class _Evaluator:
    """Loss terms at θ ± h·e_i: batched with vmap where the model allows, serially otherwise."""

    def __init__(
        self,
        problem: CheckProblem,
        options: CheckOptions,
        *,
        needs_grad: bool = False,
        base: dict[str, torch.Tensor] | None = None,
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
        self.serial_used = False
        self.base = base or {c.name: c.value for c in problem.checkables}
        self.f0: torch.Tensor | None = None  # loss terms at θ, set before evaluate()
        self._probed: set[str] = set()  # tensors vmap was shown to handle
        self._linear: dict[str, _LinearDelta | None] = {}  # see _linear_rows
        self.activation_bytes = 0  # bytes one forward allocates, set with f0

    @property
    def mode(self) -> str:
        """ "batched" (vmap), "serial", or "mixed" when vmap ran only some tensors."""
        if self.batched_used and self.serial_used:
            return "mixed"
        return "batched" if self.batched_used else "serial"

    def grad_mode(self) -> Any:
        return torch.enable_grad() if self.needs_grad else torch.no_grad()

    def can_batch(self, c: Checkable) -> bool:
        """Whether vmap runs the target over copies of `c` and reproduces f(θ) exactly
        enough; on the first failure, the reason is kept and vmap is not tried again."""
        if self.fallback_reason is not None:
            return False
        if c.name in self._probed:
            return True
        with self.grad_mode():
            try:
                probe = self._vmapped(c, c.value.unsqueeze(0))[0]
            except KeyboardInterrupt:
                raise
            except (Exception, SystemExit) as exc:
                self.fallback_reason = _vmap_failure(exc)
                return False
        f0 = self.f0
        tol = 1e3 * torch.finfo(c.value.dtype).eps * (1.0 + float(f0.abs().max()))
        if not torch.allclose(probe, f0.to(probe), rtol=0.0, atol=tol):
            # e.g. dropout inside attention draws its mask differently under vmap
            self.fallback_reason = "vmap changes the model's result (random draws or state differ)"
            return False
        self._probed.add(c.name)
        return True

    def evaluate(
        self, c: Checkable, coords: torch.Tensor, h: float, direction: torch.Tensor | None = None
    ) -> _Evaluations:
        """Loss terms at θ ± h·e_i for each coordinate (and at θ ± h·d for a direction)."""
        rows = _Rows(c, coords, h, direction)
        with self.grad_mode():
            if self.can_batch(c):
                out = self._linear_rows(rows)
                if out is None:
                    out = self._batched(rows)
                if out is not None:
                    self.batched_used = True
                    return rows.split(out)
            self.serial_used = True
            return rows.split(self._serial(rows))

    def _vmapped(self, c: Checkable, batch: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(
            lambda v: self.problem.terms({**self.base, c.name: v}), randomness="same"
        )(batch)

    def _linear_rows(self, rows: _Rows) -> torch.Tensor | None:
        """The rows of a stock nn.Linear's weight or bias without copies of the tensor: the
        layer runs once on θ and a forward hook adds what θ ± h·e_i changes in its output
        (x_j·(±h) in output unit i), vmapped over i. Linear in the weight, so the same
        function up to rounding, minus the copies and the batched matmul that dominate a
        wide layer's cost. Used only after the hook gave the same loss as a copy (see
        `_linear_delta`); None where it doesn't apply, and the copies are used instead."""
        c = rows.checkable
        if rows.m == 0:  # a direction alone: two copies
            return None
        if c.name not in self._linear:
            self._linear[c.name] = self._linear_delta(c)
        delta = self._linear[c.name]
        if delta is None:
            return None
        coords, steps = rows.coordinate_rows()
        terms = self.problem.terms
        batched = torch.func.vmap(
            lambda k, step: delta.run(k, step, terms, self.base), randomness="same"
        )
        try:
            with delta.attached():
                out = _in_chunks(
                    coords.numel(),
                    _chunk_size(coords, self.activation_bytes, 4 * MAX_BATCH),
                    lambda start, stop: batched(coords[start:stop], steps[start:stop]),
                )
            if rows.count > coords.numel():  # ±h·d: dense, so with copies
                dense = self._vmapped(c, rows.materialize(coords.numel(), rows.count))
                out = torch.cat([out, dense])
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit):
            self._linear[c.name] = None  # the copies will do
            return None
        return out

    def _linear_delta(self, c: Checkable) -> _LinearDelta | None:
        """The hook for `c` if it is the weight or bias of an nn.Linear (the class itself,
        not a subclass, its forward not replaced), registered once, with no hooks of its own,
        in a float64 check; and if the hook gives the same loss as a perturbed copy, along a
        random direction and at one coordinate, with steps large enough that any use of the
        tensor the hook doesn't see (the weight passed to F.linear elsewhere, a layer called
        around its hooks or through a fast path) shows far above rounding."""
        module = getattr(self.problem, "module", None)
        if module is None or c.kind != "parameter" or self.needs_grad:
            return None
        if c.value.dtype != torch.float64:  # float32 rounding would hide a missed use
            return None
        owner_name, _, attr = c.slot[1].rpartition(".")
        try:
            layer = module.get_submodule(owner_name)
        except AttributeError:
            return None
        if type(layer) is not torch.nn.Linear or attr not in ("weight", "bias"):
            return None
        if layer._forward_hooks or layer._forward_pre_hooks or "forward" in vars(layer):
            return None
        param = getattr(layer, attr)
        uses = sum(p is param for _, p in module.named_parameters(remove_duplicate=False))
        if uses != 1:
            return None
        delta = _LinearDelta(layer, attr)
        flat = c.value.reshape(-1)
        step = 0.1 * (1.0 + float(flat.abs().max()))  # exact either way: only rounding differs
        d = _direction(c, self.options.seed + 3)
        k = int(flat.abs().argmax())
        device = c.value.device
        try:
            with delta.attached():
                delta.dense = d
                along_d = delta.run(
                    None,
                    torch.tensor(step, dtype=flat.dtype, device=device),
                    self.problem.terms,
                    self.base,
                )
                delta.dense = None
                at_k = delta.run(
                    torch.tensor(k, device=device),
                    torch.tensor(step, dtype=flat.dtype, device=device),
                    self.problem.terms,
                    self.base,
                )
            moved = flat.clone()
            moved[k] += step
            copies = (
                self.problem.terms({**self.base, c.name: c.value + step * d}),
                self.problem.terms({**self.base, c.name: moved.view_as(c.value)}),
            )
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit):
            return None
        f0 = self.f0.to(copies[0])
        rounding = 1e3 * torch.finfo(flat.dtype).eps * (1.0 + float(f0.abs().max()))
        for hooked, copied in zip((along_d, at_k), copies):
            moved_by = float((copied - f0).abs().max())
            apart = float((hooked - copied).abs().max())
            if not math.isfinite(apart + moved_by) or apart > rounding + 1e-7 * moved_by:
                return None  # (a step into NaN/Inf proves nothing either)
        return delta

    def _batched(self, rows: _Rows) -> torch.Tensor | None:
        """vmap over perturbed copies of one tensor, in chunks that fit the memory budget
        (the copies and the activations each copy makes); None (and a reason) if a chunk
        fails, e.g. for lack of memory."""
        chunk = _chunk_size(rows.flat, rows.row_bytes + self.activation_bytes, MAX_BATCH)

        def run(start: int, stop: int) -> torch.Tensor:
            part = rows.materialize(start, stop)
            version = part._version
            try:
                out = self._vmapped(rows.checkable, part)
            except BaseException:
                rows.forget()  # a retry (smaller chunk after an OOM) refills every copy
                raise
            if part._version != version:
                # the target wrote into the values it was given: refill every copy from now on
                rows.reuse = False
                rows.forget()
            return out

        try:
            return _in_chunks(rows.count, chunk, run)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:
            self.fallback_reason = _vmap_failure(exc)
            return None

    def _serial(self, rows: _Rows) -> torch.Tensor:
        c = rows.checkable
        rows.reuse = False  # a fresh copy per forward costs nothing next to the forward
        out = []
        for r in range(rows.count):
            value = rows.materialize(r, r + 1)[0]
            try:
                out.append(self.problem.terms({**self.base, c.name: value}).detach())
            except (UserCodeError, KeyboardInterrupt):
                raise
            except (Exception, SystemExit) as exc:
                raise forward_error(exc, f" at a perturbed value of {c.name}") from exc
        return torch.stack(out)


@contextlib.contextmanager
def _activation_bytes(problem: CheckProblem) -> Iterator[list[int]]:
    """Bytes of the outputs of every submodule during one forward (twice that, for what
    happens inside modules): roughly the activation memory a batched copy needs. Hooks go
    on gradtool's private copy and come off at the end. (A TorchDispatchMode would count
    every op, but entering one imports seconds' worth of torch internals.)"""
    total = [0]
    module = getattr(problem, "module", None)

    def count(_module: Any, _inputs: Any, output: Any) -> None:
        for _, t in floating_leaves(output):
            total[0] += 2 * t.numel() * t.element_size()

    handles = [m.register_forward_hook(count) for m in module.modules()] if module else []
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()
        if not handles:  # a Function or a plain function: its inputs and output, a few times
            out = problem.reference_output
            sizes = [t.numel() * t.element_size() for _, t in floating_leaves(out)]
            sizes += [
                c.value.numel() * c.value.element_size()
                for c in problem.checkables
                if c.kind == "input"
            ]
            total[0] = 4 * sum(sizes)


class _LinearDelta:
    """Forward hook for one nn.Linear: output + what perturbing its weight or bias changes.
    F.linear(x, W + s·e_ij) = F.linear(x, W) + s·x_j·e_i (and + s·e_i for the bias): the flat
    index `k` and step `s` are batched under vmap; `dense` replaces e_k by a whole direction."""

    def __init__(self, layer: torch.nn.Linear, attr: str) -> None:
        self.layer = layer
        self.attr = attr
        self.k: torch.Tensor | None = None
        self.step: torch.Tensor | None = None
        self.dense: torch.Tensor | None = None

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        handle = self.layer.register_forward_hook(self, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            self.k = self.step = self.dense = None

    def run(
        self,
        k: torch.Tensor | None,
        step: torch.Tensor,
        terms: Callable[..., torch.Tensor],
        base: Any,
    ) -> torch.Tensor:
        """The loss terms with the layer's tensor moved by `step` at flat index `k` (along
        `dense` when that is set)."""
        self.k, self.step = k, step
        return terms(base)

    def __call__(self, _layer: Any, args: tuple, kwargs: dict, output: torch.Tensor) -> Any:
        x = args[0] if args else kwargs["input"]
        out_features, in_features = self.layer.out_features, self.layer.in_features
        if self.dense is not None:
            change = (
                torch.nn.functional.linear(x, self.dense) if self.attr == "weight" else self.dense
            )
            return output + self.step * change
        unit = self.k // in_features if self.attr == "weight" else self.k
        e_i = (torch.arange(out_features, device=output.device) == unit).to(output.dtype)
        if self.attr == "bias":
            return output + self.step * e_i
        e_j = (torch.arange(in_features, device=x.device) == self.k % in_features).to(x.dtype)
        # (x·e_j).sum, not x @ e_j: the matmul leaves vmap's batch dimension inside, and
        # every later layer then runs as a bmm over copies of its weight (3x slower)
        x_j = (x * e_j).sum(-1, keepdim=True)
        return torch.addcmul(output, self.step * x_j, e_i)


@dataclass
class _Evaluations:
    plus: torch.Tensor  # (m, K): loss terms at θ + h·e_i
    minus: torch.Tensor  # (m, K)
    direction_plus: torch.Tensor | None  # (K,): at θ + h·d
    direction_minus: torch.Tensor | None


class _Rows:
    """The perturbed points of one tensor as rows: +h·e_i for each coordinate, then −h·e_i,
    then ±h·d."""

    def __init__(
        self,
        c: Checkable,
        coords: torch.Tensor,
        h: float,
        direction: torch.Tensor | None,
    ) -> None:
        self.checkable = c
        self.flat = c.value.reshape(-1)
        self.coords = coords.to(self.flat.device)
        self.h = h
        self.direction = None if direction is None else direction.reshape(-1).to(self.flat)
        self.m = coords.numel()
        self.count = 2 * self.m + (2 if direction is not None else 0)
        self.row_bytes = self.flat.numel() * self.flat.element_size()
        self.reuse = True  # False once the target is seen writing into the values it is given
        self._buffer: torch.Tensor | None = None
        self._dirty: tuple[torch.Tensor, torch.Tensor, list[int]] | None = None

    def materialize(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as a (stop − start, *shape) tensor of perturbed values. The
        memory is reused from call to call, and only the entries the last call perturbed are
        put back (refilling every copy costs about as much as the forwards themselves): a
        result is valid until the next call."""
        n = stop - start
        if self._buffer is None or self._buffer.shape[0] < n:
            self._buffer = torch.empty(
                (n, self.flat.numel()), dtype=self.flat.dtype, device=self.flat.device
            )
            self._buffer.copy_(self.flat.expand(n, -1))
        elif self.reuse and self._dirty is not None:
            local, idx, full = self._dirty
            self._buffer[local, idx] = self.flat[idx]
            for r in full:
                self._buffer[r] = self.flat
        else:
            self._buffer[:n].copy_(self.flat.expand(n, -1))
        batch = self._buffer[:n]
        rows = torch.arange(start, max(start, min(stop, 2 * self.m)), device=self.flat.device)
        idx = self.coords[rows % self.m]
        if rows.numel():
            steps = torch.full(rows.shape, self.h, dtype=self.flat.dtype, device=rows.device)
            steps[rows >= self.m] = -self.h
            batch[rows - start, idx] = self.flat[idx] + steps
        full = []
        for r in range(max(start, 2 * self.m), stop):
            step = self.h if r == 2 * self.m else -self.h
            batch[r - start] = self.flat + step * self.direction
            full.append(r - start)
        self._dirty = (rows - start, idx, full)
        return batch.view(n, *self.checkable.value.shape)

    def forget(self) -> None:
        """The buffer may hold anything: the next call refills the rows it returns."""
        self._dirty = None

    def coordinate_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat index, step) of the 2m coordinate rows: +h for each, then −h."""
        steps = torch.full((2 * self.m,), self.h, dtype=self.flat.dtype, device=self.flat.device)
        steps[self.m :] = -self.h
        return self.coords.repeat(2), steps

    def split(self, out: torch.Tensor) -> _Evaluations:
        m = self.m
        if self.direction is None:
            return _Evaluations(out[:m], out[m : 2 * m], None, None)
        return _Evaluations(out[:m], out[m : 2 * m], out[2 * m], out[2 * m + 1])


@dataclass
class _Analytic:
    """Autograd's gradients per loss term, or the error the backward raised."""

    grads: list[dict[str, torch.Tensor | None]]
    error: str | None = None


def _analytic(
    problem: CheckProblem, values: dict[str, torch.Tensor] | None = None, scale: float = 1.0
) -> tuple[torch.Tensor, _Analytic]:
    """Autograd's gradient of each loss term (times `scale`) at `values` (default θ)."""
    names = [c.name for c in problem.checkables]
    start = values or {c.name: c.value for c in problem.checkables}
    leaves = {n: start[n].detach().clone().requires_grad_(True) for n in names}
    with torch.enable_grad():
        try:
            terms = problem.terms(leaves)
        except (UserCodeError, KeyboardInterrupt):
            raise
        except (Exception, SystemExit) as exc:
            raise forward_error(exc) from exc
        result = _Analytic([])
        if not torch.isfinite(terms.detach()).all():
            return terms.detach(), result
        inputs = [leaves[n] for n in names]
        try:
            for k in range(terms.numel()):
                if not terms[k].requires_grad:
                    result.grads.append(dict.fromkeys(names))
                    continue
                # scale the output rather than pass grad_outputs: autograd then needs no
                # shape check, whose import (sympy) costs seconds
                term = terms[k] if scale == 1.0 else terms[k] * scale
                grads = torch.autograd.grad(term, inputs, retain_graph=True, allow_unused=True)
                result.grads.append({n: _dense(g) for n, g in zip(names, grads)})
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:
            result.error = describe_exception(exc, None)
    return terms.detach(), result


class _LazyEvidence:
    """Evidence computed only when some tensor needs it: whether a backward ignores its
    upstream gradient (for hints), and the backward judged away from a kink."""

    def __init__(
        self,
        problem: CheckProblem,
        analytic: _Analytic,
        options: CheckOptions,
        forward_mode: bool = False,
    ) -> None:
        self.forward_mode = forward_mode
        self.problem = problem
        self.analytic = analytic
        self.options = options
        self._upstream: set[str] | None = None
        self._off: tuple[dict[str, torch.Tensor], _Analytic, _Evaluator] | None = None

    def upstream_ignored(self, name: str) -> bool:
        """A correct backward is linear in the upstream gradient: doubling it doubles every
        gradient. A tensor whose gradient stays put lies behind a backward that ignores it."""
        if self._upstream is None:
            self._upstream = set()
            # only a backward has an upstream gradient to ignore (not a jvp, not L₂)
            if not self.problem.needs_grad and not self.forward_mode:
                _, doubled = _analytic(self.problem, scale=2.0)
                for n, g2 in (doubled.grads[0] if doubled.grads else {}).items():
                    g1 = self.analytic.grads[0][n]
                    if (
                        g1 is not None
                        and g2 is not None
                        and g1.abs().max() > 0
                        and torch.allclose(g1, g2, rtol=1e-9, atol=0.0)
                    ):
                        self._upstream.add(n)
        return name in self._upstream

    def agrees_off_kink(
        self, c: Checkable, coords: torch.Tensor, k: int, h: float, rounding: float
    ) -> torch.Tensor:
        """At a kink any subgradient is right, so judge the backward a small step away,
        where the function is smooth: θ' = θ + δ with |δ| ≈ 1e-3 ≫ h. True where the
        analytic and numeric derivatives agree there."""
        if self._off is None:
            gen = torch.Generator().manual_seed(self.options.seed + 65_537)
            moved = {}
            for ch in self.problem.checkables:
                v = ch.value
                noise = torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v)
                # far enough that ±h no longer straddles the kink, near enough to stay local
                size = 1000 * h + 1e-3 * (v.abs() + v.abs().mean())
                moved[ch.name] = v + noise * size
            _, grads = _analytic(self.problem, moved)
            evaluator = _Evaluator(
                self.problem,
                self.options,
                base=moved,
                needs_grad=self.problem.needs_grad,
            )
            with evaluator.grad_mode():
                evaluator.f0 = self.problem.terms(moved).detach()
            self._off = (moved, grads, evaluator)
        moved, grads, evaluator = self._off
        if grads.error or not grads.grads or grads.grads[k][c.name] is None:
            return torch.zeros(coords.numel(), dtype=torch.bool)
        a = grads.grads[k][c.name].reshape(-1).double().cpu()[coords]
        shifted = Checkable(c.name, c.kind, c.slot, moved[c.name])
        at = evaluator.evaluate(shifted, coords, h)
        num = (at.plus[:, k] - at.minus[:, k]).double().cpu() / (2 * h)
        noise = rounding / h
        return (a - num).abs() <= 10 * self.options.tolerance * (a.abs() + num.abs()) + 10 * noise


def _forward_mode(problem: CheckProblem) -> tuple[torch.Tensor, _Analytic]:
    """Derivatives of each loss term along every coordinate by forward-mode AD (jvp)."""
    import torch.autograd.forward_ad as fwad

    names = [c.name for c in problem.checkables]
    with torch.no_grad():
        try:
            terms = problem.terms({c.name: c.value for c in problem.checkables})
        except (UserCodeError, KeyboardInterrupt):
            raise
        except (Exception, SystemExit) as exc:
            raise forward_error(exc) from exc
    result = _Analytic([dict.fromkeys(names) for _ in range(terms.numel())])
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
    except (Exception, SystemExit) as exc:
        result.error = describe_exception(exc, None)
    return terms, result


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

    def named(c: Checkable, k: int) -> str:
        """The first term (the sum, when there are several) goes by the tensor's name."""
        base = c.name + label_suffix
        return base if k == 0 else f"{base} [{term_names[k]}]"

    if not torch.isfinite(base_terms).all():
        where = _nonfinite_output(problem) or "the loss"
        note = f"NaN/Inf in the forward pass: seen in {where}"
        return finish([_unchecked(c, named(c, 0), note) for c in problem.checkables])
    if analytic.error is not None:
        note = f"the {'jvp' if forward_mode else 'backward'} raised {analytic.error}"
        return finish([_unchecked(c, named(c, 0), note) for c in problem.checkables])

    evaluator = _Evaluator(problem, options, needs_grad=problem.needs_grad)
    with evaluator.grad_mode():
        tick = time.perf_counter()
        with _activation_bytes(problem) as allocated:
            f0 = _synced(problem.terms(evaluator.base).detach())
        evaluator.activation_bytes = allocated[0]
        tock = time.perf_counter()
        f0_again = _synced(problem.terms(evaluator.base).detach())
        forward_seconds = min(tock - tick, time.perf_counter() - tock)
    evaluator.f0 = f0
    on_demand = _LazyEvidence(problem, analytic, options, forward_mode)
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
                    _unchecked(
                        c, named(c, 0), "not judged: the forward is nondeterministic", judged=False
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
    # Every coordinate of a small model, when that is quick: ~2·numel forwards, which vmap
    # runs several times faster than one by one.
    total = sum(c.value.numel() for c in problem.checkables)
    small_model = total <= TINY_MODEL or (
        total <= SMALL_MODEL and 2 * total * forward_seconds / 4 <= FULL_CHECK_SECONDS
    )
    results: list[list[TensorResult]] = [[] for _ in term_names]
    measured: dict[str, _Measured] = {}
    interrupted = False
    try:
        for position, c in enumerate(problem.checkables):
            if options.progress:
                options.progress(c.name, position, len(problem.checkables))
            # every coordinate of a small model, unless each point costs a whole forward
            everything = small_model and evaluator.can_batch(c)
            coords = _choose_coordinates(c, analytic.grads, options, everything)
            measured[c.name] = _measure(evaluator, c, coords, h, options.seed)
        if options.budget is not None:
            _spend_budget(evaluator, problem, measured, options, started)
    except KeyboardInterrupt:
        interrupted = True
    try:
        for c in problem.checkables:
            if c.name not in measured:
                break
            got = measured[c.name]
            for k in range(len(term_names)):
                results[k].append(
                    _judge(
                        c,
                        named(c, k),
                        analytic.grads[k][c.name],
                        got.coords,
                        got.plus[:, k].double().cpu(),
                        got.minus[:, k].double().cpu(),
                        got.direction,
                        float(f0[k]),
                        k,
                        rounding,
                        options,
                        evaluator,
                        batch_size,
                        on_demand,
                    )
                )
    except KeyboardInterrupt:
        interrupted = True
    if options.progress:
        options.progress("", len(problem.checkables), len(problem.checkables))
    report = finish(
        [r for rs in results for r in rs],
        evaluation=evaluator.mode,
        fallback_reason=evaluator.fallback_reason,
        interrupted=interrupted,
        noise=noise_in_f or None,
    )
    if interrupted:
        raise Interrupted(report)
    return report


@dataclass
class _Measured:
    """The loss at θ ± h·e_i for the checked coordinates of one tensor (and ± h·d)."""

    coords: torch.Tensor
    plus: torch.Tensor
    minus: torch.Tensor
    direction: tuple | None
    seconds: float


def _measure(
    evaluator: _Evaluator, c: Checkable, coords: torch.Tensor, h: float, seed: int
) -> _Measured:
    started = time.perf_counter()
    d = _direction(c, seed) if coords.numel() < c.value.numel() else None
    at = evaluator.evaluate(c, coords, h, d)
    direction = None if d is None else (d, at.direction_plus, at.direction_minus)
    _synced(at.plus)
    return _Measured(coords, at.plus, at.minus, direction, time.perf_counter() - started)


def _spend_budget(
    evaluator: _Evaluator,
    problem: CheckProblem,
    measured: dict[str, _Measured],
    options: CheckOptions,
    started: float,
) -> None:
    """--budget: while time is left, add seeded coordinates to the sampled tensors, round
    by round (each round at most doubles a tensor's sample)."""
    sampled = [c for c in problem.checkables if measured[c.name].coords.numel() < c.value.numel()]
    gen = torch.Generator().manual_seed(options.seed + 31)
    while sampled:
        for c in list(sampled):
            got = measured[c.name]
            per_row = got.seconds / max(2 * got.coords.numel(), 1)
            left = options.budget - (time.perf_counter() - started)
            n = c.value.numel()
            extra = min(got.coords.numel(), n - got.coords.numel(), int(left / per_row / 2))
            if extra <= 0:
                sampled.remove(c)
                continue
            fresh = torch.randint(n, (4 * extra,), generator=gen)
            fresh = fresh[~torch.isin(fresh, got.coords)].unique()[:extra]
            if fresh.numel() == 0:
                sampled.remove(c)
                continue
            more = _measure(evaluator, c, fresh, options.eps, options.seed)
            measured[c.name] = _Measured(
                torch.cat([got.coords, fresh]),
                torch.cat([got.plus, more.plus]),
                torch.cat([got.minus, more.minus]),
                got.direction,
                got.seconds + more.seconds,
            )
            if measured[c.name].coords.numel() >= n:
                sampled.remove(c)


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
    on_demand: _LazyEvidence,
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
        where = list(_unravel(i, shape))
        return TensorResult(
            **base,
            rel_error=math.inf,
            rating="bug",
            passed=False,
            note=f"NaN/Inf in the analytic gradient (first at index {where})",
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

    def refine(local: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
        at = evaluator.evaluate(c, coords[local], step)
        return at.plus[:, k].double().cpu(), at.minus[:, k].double().cpu()

    def verify(local: torch.Tensor) -> torch.Tensor:
        return on_demand.agrees_off_kink(c, coords[local], k, h, rounding)

    comp = compare(a_flat[coords], fp, fm, f0, h, rounding, tol, refine=refine, verify=verify)
    dir_rel = _direction_error(c, a_flat, direction, f0, k, h, rounding, tol, evaluator)
    verdict = max(comp.rel, dir_rel or 0.0)
    passed = verdict <= tol
    note = ""
    never_reaches = False
    if unused or float(a_flat.abs().max()) == 0.0:
        if float(comp.judged.norm()) <= comp.tiny * tol and not (dir_rel or 0.0) > tol:
            note = "unused: the loss does not depend on this tensor" if unused else "no gradient"
            passed, verdict = True, 0.0
        else:
            note = evaluator.problem.missing_note.format(got="none" if unused else "zero")
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
        # sweep where the disagreement is: the worst coordinates first
        worst_first = torch.argsort((comp.a - comp.judged).abs(), descending=True)[:SWEEP_COORDS]
        sweep, sweep_verdict, better_step = _sweep(
            c,
            coords[worst_first],
            a_flat,
            comp.kink[worst_first],
            direction,
            f0,
            k,
            rounding,
            options,
            evaluator,
        )
        if not passed and better_step is not None:
            # the mismatch may be the step's, not the gradient's: judge every checked
            # coordinate (and the direction) again at that step before saying so
            d = direction[0] if direction is not None else None
            at = evaluator.evaluate(c, coords, better_step, d)
            again = compare(
                a_flat[coords],
                at.plus[:, k].double().cpu(),
                at.minus[:, k].double().cpu(),
                f0,
                better_step,
                rounding,
                tol,
                refine=refine,
                verify=verify,
            )
            dir_again = _direction_error(
                c,
                a_flat,
                None if d is None else (d, at.direction_plus, at.direction_minus),
                f0,
                k,
                better_step,
                rounding,
                tol,
                evaluator,
            )
            if max(again.rel, dir_again or 0.0) <= tol:
                comp, dir_rel = again, dir_again
                verdict = max(again.rel, dir_again or 0.0)
                passed = True
                note = f"passes at eps={better_step:g} ({sweep_verdict})"

    n_kinks = int(comp.kink.sum())
    if n_kinks and not note:
        note = f"{n_kinks} kink{'s' if n_kinks > 1 else ''} skipped (not differentiable there)"
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
        smooth = ~comp.kink  # kinks say nothing about the kind of mistake
        hint = bug_hint(
            comp.a[smooth],
            comp.num[smooth],
            coords[smooth],
            shape,
            full=m == n_total and not comp.kink.any(),
            noise=comp.noise,
            batch_size=batch_size,
            upstream_ignored=k == 0 and on_demand.upstream_ignored(c.name),
        )
    return TensorResult(
        **base,
        rel_error=verdict,
        rating=rating_for(verdict, scale=_band_scale(c.value.dtype)),
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
    c: Checkable,
    a_flat: torch.Tensor,
    direction: tuple | None,
    f0: float,
    k: int,
    h: float,
    rounding: float,
    tol: float,
    evaluator: _Evaluator | None,
) -> float | None:
    """Relative error of the derivative along a random unit direction d: a·d vs numeric."""
    if direction is None:
        return None
    d, dp, dm = direction

    def refine(local: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
        at = evaluator.evaluate(c, torch.zeros(0, dtype=torch.long), step, d)
        return (
            at.direction_plus[k : k + 1].double().cpu(),
            at.direction_minus[k : k + 1].double().cpu(),
        )

    ad = float(a_flat @ d.reshape(-1).double().cpu())
    comp = compare(
        torch.tensor([ad], dtype=torch.float64),
        dp[k : k + 1].double().cpu(),
        dm[k : k + 1].double().cpu(),
        f0,
        h,
        rounding,
        tol,
        refine=refine if evaluator is not None else None,
    )
    return comp.rel if math.isfinite(float(comp.num[0])) else math.inf


def _sweep(
    c: Checkable,
    coords: torch.Tensor,
    a_flat: torch.Tensor,
    kinks: torch.Tensor,
    direction: tuple | None,
    f0: float,
    k: int,
    rounding: float,
    options: CheckOptions,
    evaluator: _Evaluator,
) -> tuple[tuple[SweepPoint, ...], str, float | None]:
    """Relative error at several step sizes, on (up to SWEEP_COORDS of) the same coordinates
    and the same random direction. Steps where the gradient is below the finite-difference
    resolution are recorded as NaN: they can neither pass nor fail anything."""
    subset = coords[:SWEEP_COORDS]
    a = a_flat[subset]
    d = direction[0].reshape(-1).double().cpu() if direction is not None else None
    points = []
    for step in SWEEP_STEPS:
        noise = rounding / step
        at = evaluator.evaluate(c, subset, step, None if direction is None else direction[0])
        fp, fm = at.plus, at.minus
        comp = compare(
            a,
            fp[:, k].double().cpu(),
            fm[:, k].double().cpu(),
            f0,
            step,
            rounding,
            options.tolerance,
            kinks=kinks[:SWEEP_COORDS],
        )
        pairs = [(comp.a, comp.judged, comp.tiny)]
        if direction is not None:
            dp, dm = at.direction_plus, at.direction_minus
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
    verdict, better_step = classify_sweep(points, options.tolerance, options.eps)
    return tuple(points), verdict, better_step


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


def _vmap_failure(exc: Exception) -> str:
    """Why vmap could not run the target, in one line."""
    text = str(exc).strip()
    if "setup_context" in text:
        return (
            "vmap needs an autograd.Function to define setup_context (and vmap or "
            "generate_vmap_rule); this one does not"
        )
    first = text.splitlines()[0] if text else ""
    first = first if len(first) <= 120 else first[:117] + "..."
    return f"vmap could not run the model ({type(exc).__name__}: {first})"


def forward_error(exc: BaseException, where: str = "") -> UserCodeError:
    """The user's forward raised: their words, their line, and a hint for the usual cause."""
    text = describe_exception(exc, None)
    hint = None
    if "dtype" in text and ("ouble" in text or "float64" in text):
        hint = (
            "gradtool checks in float64: create constants with the input's dtype "
            "(x.new_tensor, dtype=x.dtype), or run with --dtype float32."
        )
    return UserCodeError(f"the forward raised {text}{where}", hint=hint)


def _synced(t: torch.Tensor) -> torch.Tensor:
    """`t`, once the GPU has computed it: CUDA calls return before the work is done, and
    the engine times its forwards (full check or sample, --budget)."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)
    return t


def _chunk_size(like: torch.Tensor, per_row: int, cap: int) -> int:
    """Rows per batched call: as many as the memory budget holds, at most `cap`."""
    return int(max(1, min(cap, _memory_budget(like.device) // max(per_row, 1))))


def _in_chunks(count: int, chunk: int, run: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """run(start, stop) over [0, count) in chunks, concatenated; on a GPU that runs out of
    memory the chunk is halved and the same rows tried again (down to one row). The rows
    are written into one tensor as they come: small results kept between the chunks'
    large temporaries would fragment the heap (RSS grew by GBs on wide layers)."""
    out: torch.Tensor | None = None
    start = 0
    while start < count:
        stop = min(start + chunk, count)
        try:
            part = run(start, stop)
        except torch.cuda.OutOfMemoryError:
            if chunk == 1:
                raise
            torch.cuda.empty_cache()
            chunk = max(1, chunk // 2)
            continue
        if out is None:
            out = part.new_empty((count, *part.shape[1:]))
        out[start:stop] = part
        del part
        start = stop
    if out is None:
        raise ValueError("no rows to evaluate")
    return out


def _memory_budget(device: torch.device) -> int:
    """Bytes one batched call may use: MEMORY_BUDGET on the CPU; on a GPU a quarter of
    what is free, between that and 2 GiB."""
    if device.type != "cuda":
        return MEMORY_BUDGET
    free, _total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached
    return int(min(max(free // 4, MEMORY_BUDGET), 8 * MEMORY_BUDGET))


def _dense(g: torch.Tensor | None) -> torch.Tensor | None:
    """Autograd's gradient, detached and strided (nn.Embedding(sparse=True) gives sparse)."""
    if g is None:
        return None
    g = g.detach()
    return g.to_dense() if g.layout != torch.strided else g


def _band_scale(dtype: torch.dtype) -> float:
    """The tutorial's bands are for float64; float32 resolves ~1000× less (1e-2 vs 1e-5)."""
    return 1e3 if dtype == torch.float32 else 1.0


def _batch_size(problem: CheckProblem) -> int | None:
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


def _unchecked(c: Checkable, name: str, note: str, *, judged: bool = True) -> TensorResult:
    """A tensor no coordinate of which was compared: failed (NaN/Inf, a backward that
    raised) or, when not `judged`, left without a verdict (a nondeterministic forward)."""
    return TensorResult(
        name=name,
        kind=c.kind,
        shape=tuple(c.value.shape),
        numel=c.value.numel(),
        checked=0,
        rel_error=math.inf if judged else math.nan,
        rating="bug" if judged else "n/a",
        passed=False,
        note=note,
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

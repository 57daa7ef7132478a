"""Comparing analytic and numeric derivatives: pure tensor arithmetic, no model.

    numeric_i = (f(θ + h·e_i) − f(θ − h·e_i)) / 2h
    rel_error = ‖a − n‖ / (‖a‖ + ‖n‖ + tiny)

`tiny` is the finite-difference resolution (rounding noise ≈ ε_mach·Σ|summands of f|/h per
coordinate, divided by the tolerance), so gradients too small for finite differences to see
are not reported as bugs, while any error larger than that noise still counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...results import SweepPoint

ROUNDING_ULPS = 4.0  # rounding noise of f(θ±h) in units of ε_mach·Σ|summands| (measured: ~1)
REFINE = 4.0  # mismatching coordinates are evaluated again at h / REFINE
SWEEP_STEPS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)


def rounding_noise(dtype: torch.dtype, scale: float) -> float:
    """Rounding noise of f itself: a few ulps of the size of the numbers the loss sums."""
    return ROUNDING_ULPS * torch.finfo(dtype).eps * scale


def resolution(m: int, noise: float, tol: float) -> float:
    """`tiny`: the size √m·noise of m coordinates' rounding noise (`noise` = rounding / h
    each), over the tolerance. Gradients below it are not resolved at this step."""
    return math.sqrt(m) * noise / tol


def relative_error(a: torch.Tensor, n: torch.Tensor, tiny: float) -> float:
    """‖a − n‖ / (‖a‖ + ‖n‖ + tiny); exactly 0 when a and n are equal."""
    diff = float((a - n).norm())
    denom = float(a.norm()) + float(n.norm()) + tiny
    return diff / denom if diff else 0.0


def resolved_error(a: torch.Tensor, n: torch.Tensor, tiny: float) -> float | None:
    """‖a − n‖ / (‖a‖ + ‖n‖) where the signal is at least `tiny` (above the rounding
    noise); inf where n holds NaN/Inf; None where it is below: it can neither pass nor fail."""
    if not torch.isfinite(n).all():
        return math.inf
    if float(a.norm()) + float(n.norm()) >= tiny:
        return relative_error(a, n, 0.0)
    return None


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

    Note [kinks]: mismatching coordinates are evaluated again at h/4 (`refine(local_indices,
    step)`):
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
    tiny = resolution(a.numel(), noise, tol)
    return Comparison(a, num, kink, relative_error(a, judged, tiny), tiny, noise)


UNRESOLVED_SWEEP = "unresolved: the gradient is below finite-difference resolution at every step"


def classify_sweep(
    points: list[SweepPoint], tol: float, default_eps: float
) -> tuple[str, float | None]:
    """Truncation (error shrinks with h), round-off (grows as h shrinks) or a stable bug;
    with the step that passes when the mismatch is the step's, else None."""
    if all(math.isinf(p.rel_error) for p in points):
        return "stable mismatch: NaN/Inf at every step", None
    errs = {p.eps: p.rel_error for p in points if math.isfinite(p.rel_error)}
    if not errs:
        return UNRESOLVED_SWEEP, None
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


def band_scale(dtype: torch.dtype) -> float:
    """The tutorial's bands are for float64; float32 resolves ~1000× less (1e-2 vs 1e-5)."""
    return 1e3 if dtype == torch.float32 else 1.0

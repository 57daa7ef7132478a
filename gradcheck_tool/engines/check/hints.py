"""Name the kind of mistake behind a failing gradient from the analytic/numeric pair.

One small function per kind of mistake, tried in the order of `HINTS`; the first that
recognises the pair names it. Pure tensor arithmetic on what the engine measured: no model,
no evaluation.

Note [what a hint may claim]: a hint is read as the diagnosis, so it names a pattern only
where the pattern explains the mismatch ‖a − n‖, not merely the gradient.
- A factor c (a ≈ c·n, least squares) counts when the residual ‖a − c·n‖ is small next to
  ‖a‖ (FIT) and next to the mismatch (EXPLAINS). Judged against ‖a‖ alone, any gradient
  that is nearly right fits "≈ 1.006 × numeric". Since a − n = (a − c·n) + (c − 1)·n with
  orthogonal parts, EXPLAINS = 0.1 says the factor accounts for 99% of the squared
  mismatch. A factor within NEAR_ONE of 1 explains nothing. One entry is proportional to
  anything, so a factor of no particular value needs two resolved entries; −1 and the batch
  size are particular enough to name from one.
- "Only part is wrong" needs every entry clearly right or clearly wrong (errors an order of
  magnitude apart; entries as small as the noise count as neither), then whole slices of at
  least two entries each, or a clear minority of wrong entries (at most PART).
- A numeric gradient within the noise where the analytic one is well above it says only
  that the loss does not move: a piecewise-constant forward, or a backward that invents a
  gradient. None of the other patterns can be read from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

FIT = 1e-2  # residual of a fit, relative to the gradient, under which it counts as exact
EXPLAINS = 0.1  # ... and relative to ‖a − n‖: the fit must account for the mismatch
NEAR_ONE = 1e-3  # a factor this close to 1 explains nothing
RIGHT = 1e-3  # relative error (or the tolerance, if looser) of an entry that is right
CLEARLY = 10.0  # an entry is wrong when its error is this many times what a right one may have
RESOLVED = 10.0  # entries whose |a| and |n| are under this many noises say nothing
PART = 1 / 3  # "part" of the entries: at most this fraction of the resolved ones


@dataclass(frozen=True)
class Mismatch:
    """A failing tensor as the hints see it: analytic `a` and numeric `n` at the checked
    coordinates `coords` (flat indices into `shape`), away from kinks."""

    a: torch.Tensor  # float64
    n: torch.Tensor  # float64
    coords: torch.Tensor
    shape: tuple[int, ...]
    full: bool  # every coordinate was checked and none is a kink: the layout can be read
    noise: float  # the finite-difference resolution per coordinate
    batch_size: int | None
    upstream_ignored: bool  # the backward gives the same when the upstream gradient doubles
    tolerance: float = 0.0  # the check's relative tolerance (0: RIGHT alone)

    @cached_property
    def a_norm(self) -> float:
        return float(self.a.norm())

    @cached_property
    def n_norm(self) -> float:
        return float(self.n.norm())

    @cached_property
    def factor(self) -> float | None:
        """c with a ≈ c·n that explains the mismatch (Note [what a hint may claim])."""
        return _proportional(self.a, self.n)

    @property
    def numeric_is_noise(self) -> bool:
        """Nothing to compare shapes of mistakes with: n is within the rounding noise."""
        return self.n_norm <= self.noise * math.sqrt(max(self.a.numel(), 1))

    @cached_property
    def resolved(self) -> torch.Tensor:
        """Entries large enough next to the noise to say whether they are right."""
        return torch.maximum(self.a.abs(), self.n.abs()) > RESOLVED * self.noise

    @cached_property
    def allowance(self) -> torch.Tensor:
        """The error each entry may have and still be right."""
        return max(RIGHT, self.tolerance) * (self.a.abs() + self.n.abs()) + self.noise

    @cached_property
    def right(self) -> torch.Tensor:
        return self.resolved & ((self.a - self.n).abs() <= self.allowance)

    @cached_property
    def wrong(self) -> torch.Tensor:
        return self.resolved & ((self.a - self.n).abs() > CLEARLY * self.allowance)


def gradient_missing(m: Mismatch) -> str | None:
    if m.a_norm <= 1e-3 * m.n_norm:
        return "gradient missing: the analytic gradient is ≈ 0 where the numeric one is not"
    return None


def upstream_ignored(m: Mismatch) -> str | None:
    if m.upstream_ignored:
        return (
            "upstream gradient ignored: the backward returns the same result when the "
            "incoming gradient is doubled (multiply by grad_output)"
        )
    return None


def sign_flipped(m: Mismatch) -> str | None:
    if m.factor is not None and abs(m.factor + 1) <= FIT:
        return "sign flipped: analytic ≈ −numeric"
    return None


def batch_averaged(m: Mismatch) -> str | None:
    """a ≈ n / B: a mean over the batch where the loss sums."""
    b = m.batch_size
    if m.factor is not None and b and b > 1 and abs(m.factor * b - 1) <= FIT:
        if b == 2:  # ½ is also the commonest stray factor: say both
            return (
                "batch reduction wrong, or a stray factor ½: analytic ≈ numeric / 2 "
                "(averaged over the batch of 2 where it should be summed? a batch of "
                "another size tells the two apart)"
            )
        return (
            f"batch reduction wrong: analytic ≈ numeric / {b} (averaged "
            "over the batch where it should be summed?)"
        )
    return None


def batch_summed(m: Mismatch) -> str | None:
    """a ≈ n × B: a sum over the batch where the loss averages."""
    b = m.batch_size
    if m.factor is not None and b and b > 1 and abs(m.factor / b - 1) <= FIT:
        if b == 2:  # 2 is also the commonest stray factor: say both
            return (
                "batch reduction wrong, or a stray factor 2: analytic ≈ numeric × 2 "
                "(summed over the batch of 2 where it should be averaged? a batch of "
                "another size tells the two apart)"
            )
        return (
            f"batch reduction wrong: analytic ≈ numeric × {b} (summed "
            "over the batch where it should be averaged?)"
        )
    return None


def constant_factor(m: Mismatch) -> str | None:
    """A factor other than 1, seen in at least two resolved entries."""
    c = m.factor
    if c is None or abs(c - 1) < NEAR_ONE:
        return None
    if int((m.n.abs() > RESOLVED * m.noise).sum()) < 2:
        return None  # one number is proportional to anything
    return f"constant factor: analytic ≈ {c:.4g} × numeric (a missing or extra factor)"


def transposed(m: Mismatch) -> str | None:
    """A square matrix whose analytic gradient is the numeric one transposed; only readable
    when every entry was checked, and only where n differs from nᵀ by the mismatch."""
    shape = m.shape
    if m.full and len(shape) == 2 and shape[0] == shape[1] and shape[0] > 1:
        n_t = m.n.reshape(shape).t().reshape(-1)
        residual = float((m.a - n_t).norm())
        mismatch = float((m.a - m.n).norm())
        if residual <= min(FIT * max(m.a_norm, m.n_norm), EXPLAINS * mismatch):
            return "transposed: analytic ≈ numericᵀ (a weight gradient built as xᵀ·g vs gᵀ·x?)"
    return None


def partly_wrong(m: Mismatch) -> str | None:
    """Some entries clearly wrong and the rest clearly right: whole slices if it is so, else
    the wrong entries if they are a clear minority."""
    wrong, right = m.wrong, m.right
    unclear = m.resolved & ~wrong & ~right
    if not wrong.any() or not right.any() or unclear.any():
        return None
    if m.full:
        slices = _wrong_slices(wrong, right, m.shape)
        if slices is not None:
            return slices
    if int(wrong.sum()) <= PART * int(m.resolved.sum()):
        return _wrong_entries(wrong, m.coords, m.shape, m.full)
    return None


def piecewise_constant(m: Mismatch) -> str | None:
    """n within the noise where a is well above it: the loss does not move at this step."""
    if m.a_norm > RESOLVED * max(m.n_norm, m.noise * math.sqrt(max(m.a.numel(), 1))):
        return (
            "piecewise-constant forward: the loss does not move when this tensor does "
            "(numeric ≈ 0) but the backward gives a gradient; a straight-through estimator "
            "(round, sign, quantize) is not a gradient: leave it out with --skip or check "
            "the layers around it (a cast to half precision hides small steps too)"
        )
    return None


# tried in this order; the first that answers wins (a proportional pair stops at the factor)
HINTS: tuple[Callable[[Mismatch], str | None], ...] = (
    gradient_missing,
    upstream_ignored,
    sign_flipped,
    batch_averaged,
    batch_summed,
    constant_factor,
    transposed,
    partly_wrong,
)

# where the numeric gradient is within the noise, no pattern above can be read from it
WHEN_NUMERIC_IS_NOISE: tuple[Callable[[Mismatch], str | None], ...] = (piecewise_constant,)


def bug_hint(
    a: torch.Tensor,
    n: torch.Tensor,
    coords: torch.Tensor,
    shape: tuple[int, ...],
    *,
    full: bool,
    noise: float,
    batch_size: int | None,
    upstream_ignored: bool,
    tolerance: float = 0.0,
) -> str | None:
    """A one-line guess at the mistake, for a tensor whose check failed.

    `a`, `n`: analytic and numeric values at the checked coordinates `coords` (flat indices
    into `shape`); `noise`: the finite-difference resolution per coordinate; `tolerance`: the
    check's relative tolerance (an entry within it is never called wrong).
    """
    mismatch = Mismatch(
        a.to(torch.float64),
        n.to(torch.float64),
        coords,
        shape,
        full,
        noise,
        batch_size,
        upstream_ignored,
        tolerance,
    )
    table = WHEN_NUMERIC_IS_NOISE if mismatch.numeric_is_noise else HINTS
    return next((text for hint in table if (text := hint(mismatch)) is not None), None)


def _proportional(a: torch.Tensor, n: torch.Tensor) -> float | None:
    """c with a ≈ c·n (least squares) where the fit is exact and explains the mismatch
    (Note [what a hint may claim]), else None."""
    nn_ = float(n @ n)
    if nn_ == 0.0:
        return None
    c = float(a @ n) / nn_
    residual = float((a - c * n).norm())
    size = max(float(a.norm()), float((c * n).norm()), 1e-300)
    mismatch = float((a - n).norm())
    return c if residual <= min(FIT * size, EXPLAINS * mismatch) else None


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0–2, 5'."""
    out, start, prev = [], None, None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = prev = i
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}–{prev}")
    text = ", ".join(out[:6])
    return text + (", …" if len(out) > 6 else "")


def _slices(dim: int, ndim: int, indices: list[int], size: int) -> str:
    """'rows 1–2 of 4' for a matrix; 'slices 1–2 of 4 along dim 0' for any other tensor."""
    if ndim == 2:
        return f"{'rows' if dim == 0 else 'columns'} {_ranges(indices)} of {size}"
    return f"slices {_ranges(indices)} of {size} along dim {dim}"


def _wrong_slices(wrong: torch.Tensor, right: torch.Tensor, shape: tuple[int, ...]) -> str | None:
    """Whole slices (of two entries or more) along one dimension: every wrong entry in them
    and every right entry outside them; entries too small to tell may be anywhere."""
    bad, good = wrong.reshape(shape), right.reshape(shape)
    numel = bad.numel()
    for dim, size in enumerate(shape):
        if size < 2 or numel // size < 2:
            continue  # slices of one entry are entries
        other = tuple(d for d in range(len(shape)) if d != dim)
        any_bad, any_good = bad.any(dim=other), good.any(dim=other)
        if not (any_bad & any_good).any() and 0 < int(any_bad.sum()) < size:
            idx = any_bad.nonzero().reshape(-1).tolist()
            return (
                f"only part of the tensor is wrong: {_slices(dim, len(shape), idx, size)} "
                f"({int(bad.sum())} of {numel} entries wrong); the rest match"
            )
    return None


def _wrong_entries(
    wrong: torch.Tensor, coords: torch.Tensor, shape: tuple[int, ...], full: bool
) -> str:
    n_bad, n_all = int(wrong.sum()), wrong.numel()
    if full and len(shape) == 1:
        idx = coords[wrong].tolist()
        return (
            f"only part of the tensor is wrong: entries {_ranges(idx)} of {n_all}; the rest match"
        )
    first = [int(i) for i in coords[wrong][:6]]
    return (
        f"only part of the tensor is wrong: {n_bad} of {n_all} checked entries "
        f"(flat indices {', '.join(map(str, first))}{', …' if n_bad > 6 else ''})"
    )

"""Name the kind of mistake behind a failing gradient from the analytic/numeric pair.

One small function per kind of mistake, tried in the order of `HINTS`; the first that
recognises the pair names it. Pure tensor arithmetic on what the engine measured: no model,
no evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

FIT = 1e-2  # relative residual under which a ≈ c·n counts as an exact proportionality


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

    @cached_property
    def a_norm(self) -> float:
        return float(self.a.norm())

    @cached_property
    def n_norm(self) -> float:
        return float(self.n.norm())

    @cached_property
    def factor(self) -> float | None:
        """c with a ≈ c·n (least squares), or None when a is not proportional to n."""
        return _proportional(self.a, self.n)

    @property
    def numeric_is_noise(self) -> bool:
        """Nothing to compare shapes of mistakes with: n is within the rounding noise."""
        return self.n_norm <= self.noise * math.sqrt(max(self.a.numel(), 1))


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
        return (
            f"batch reduction wrong: analytic ≈ numeric / {b} (averaged "
            "over the batch where it should be summed?)"
        )
    return None


def batch_summed(m: Mismatch) -> str | None:
    """a ≈ n × B: a sum over the batch where the loss averages."""
    b = m.batch_size
    if m.factor is not None and b and b > 1 and abs(m.factor / b - 1) <= FIT:
        return (
            f"batch reduction wrong: analytic ≈ numeric × {b} (summed "
            "over the batch where it should be averaged?)"
        )
    return None


def constant_factor(m: Mismatch) -> str | None:
    if m.factor is not None:
        return f"constant factor: analytic ≈ {m.factor:.4g} × numeric (a missing or extra factor)"
    return None


def transposed(m: Mismatch) -> str | None:
    """A square matrix whose analytic gradient is the numeric one transposed; only readable
    when every entry was checked."""
    shape = m.shape
    if m.full and len(shape) == 2 and shape[0] == shape[1] and shape[0] > 1:
        n_t = m.n.reshape(shape).t().reshape(-1)
        if float((m.a - n_t).norm()) <= FIT * max(m.a_norm, m.n_norm):
            return "transposed: analytic ≈ numericᵀ (a weight gradient built as xᵀ·g vs gᵀ·x?)"
    return None


def partly_wrong(m: Mismatch) -> str | None:
    """Some entries wrong and the rest right: which part, in whole slices if it is so."""
    bad = (m.a - m.n).abs() > 1e-3 * (m.a.abs() + m.n.abs()) + m.noise
    if 0 < int(bad.sum()) < bad.numel():
        return _partial(bad, m.coords, m.shape, m.full)
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
) -> str | None:
    """A one-line guess at the mistake, for a tensor whose check failed.

    `a`, `n`: analytic and numeric values at the checked coordinates `coords` (flat indices
    into `shape`); `noise`: the finite-difference resolution per coordinate.
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
    )
    if mismatch.numeric_is_noise:
        return None
    return next((text for hint in HINTS if (text := hint(mismatch)) is not None), None)


def _proportional(a: torch.Tensor, n: torch.Tensor) -> float | None:
    """c with a ≈ c·n (least squares), or None when a is not proportional to n."""
    nn_ = float(n @ n)
    if nn_ == 0.0:
        return None
    c = float(a @ n) / nn_
    residual = float((a - c * n).norm()) / max(float(a.norm()), float((c * n).norm()), 1e-300)
    return c if residual <= FIT else None


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


def _partial(bad: torch.Tensor, coords: torch.Tensor, shape: tuple[int, ...], full: bool) -> str:
    """Which part of the tensor is wrong: whole slices along a dimension if it is so."""
    n_bad, n_all = int(bad.sum()), bad.numel()
    if full and shape:
        mask = bad.reshape(shape)
        for dim in range(len(shape)):
            other = tuple(d for d in range(len(shape)) if d != dim)
            any_bad = mask.any(dim=other) if other else mask
            all_bad = mask.all(dim=other) if other else mask
            if torch.equal(any_bad, all_bad) and 0 < int(any_bad.sum()) < shape[dim]:
                idx = any_bad.nonzero().reshape(-1).tolist()
                what = (
                    "entries"
                    if len(shape) == 1
                    else (
                        "rows"
                        if dim == 0
                        else "columns"
                        if dim == 1 and len(shape) == 2
                        else f"slices along dim {dim}"
                    )
                )
                return (
                    f"only part of the tensor is wrong: {what} {_ranges(idx)} of "
                    f"{shape[dim]} ({n_bad} of {n_all} entries); the rest match"
                )
    first = [int(i) for i in coords[bad.nonzero().reshape(-1)][:6]]
    return (
        f"only part of the tensor is wrong: {n_bad} of {n_all} checked entries "
        f"(flat indices {', '.join(map(str, first))}{', …' if n_bad > 6 else ''})"
    )

"""Name the kind of mistake behind a failing gradient from the analytic/numeric pair.

Pure tensor arithmetic on what the engine measured: no model, no evaluation.
"""

from __future__ import annotations

import math

import torch

FIT = 1e-2  # relative residual under which a ≈ c·n counts as an exact proportionality


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


def _proportional(a: torch.Tensor, n: torch.Tensor) -> float | None:
    """c with a ≈ c·n (least squares), or None when a is not proportional to n."""
    nn_ = float(n @ n)
    if nn_ == 0.0:
        return None
    c = float(a @ n) / nn_
    residual = float((a - c * n).norm()) / max(float(a.norm()), float((c * n).norm()), 1e-300)
    return c if residual <= FIT else None


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
    a = a.to(torch.float64)
    n = n.to(torch.float64)
    a_norm, n_norm = float(a.norm()), float(n.norm())
    if n_norm <= noise * math.sqrt(max(a.numel(), 1)):
        return None  # the numeric gradient is noise: nothing to compare shapes of mistakes with
    if a_norm <= 1e-3 * n_norm:
        return "gradient missing: the analytic gradient is ≈ 0 where the numeric one is not"
    if upstream_ignored:
        return (
            "upstream gradient ignored: the backward returns the same result when the "
            "incoming gradient is doubled (multiply by grad_output)"
        )
    c = _proportional(a, n)
    if c is not None:
        if abs(c + 1) <= FIT:
            return "sign flipped: analytic ≈ −numeric"
        if batch_size and batch_size > 1:
            if abs(c * batch_size - 1) <= FIT:
                return (
                    f"batch reduction wrong: analytic ≈ numeric / {batch_size} (averaged "
                    "over the batch where it should be summed?)"
                )
            if abs(c / batch_size - 1) <= FIT:
                return (
                    f"batch reduction wrong: analytic ≈ numeric × {batch_size} (summed "
                    "over the batch where it should be averaged?)"
                )
        return f"constant factor: analytic ≈ {c:.4g} × numeric (a missing or extra factor)"
    if full and len(shape) == 2 and shape[0] == shape[1] and shape[0] > 1:
        n_t = n.reshape(shape).t().reshape(-1)
        if float((a - n_t).norm()) <= FIT * max(a_norm, n_norm):
            return "transposed: analytic ≈ numericᵀ (a weight gradient built as xᵀ·g vs gᵀ·x?)"
    bad = (a - n).abs() > 1e-3 * (a.abs() + n.abs()) + noise
    if 0 < int(bad.sum()) < bad.numel():
        return _partial(bad, coords, shape, full)
    return None


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

"""Each hint on hand-made analytic/numeric vectors, and the table that tries them in order."""

from __future__ import annotations

import torch

from gradcheck_tool.engines.check.hints import (
    HINTS,
    Mismatch,
    batch_averaged,
    batch_summed,
    bug_hint,
    constant_factor,
    gradient_missing,
    partly_wrong,
    sign_flipped,
    transposed,
    upstream_ignored,
)

T = torch.float64
N = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.5, 2.5], dtype=T)  # a numeric gradient, shape (6,)


def mismatch(a, n=N, *, shape=None, full=True, noise=0.0, batch_size=None, upstream=False):
    a = torch.as_tensor(a, dtype=T)
    return Mismatch(
        a, n, torch.arange(n.numel()), shape or tuple(n.shape), full, noise, batch_size, upstream
    )


def test_gradient_missing():
    assert gradient_missing(mismatch(torch.zeros(6))) == (
        "gradient missing: the analytic gradient is ≈ 0 where the numeric one is not"
    )
    assert gradient_missing(mismatch(1e-4 * N)) is not None  # ≤ 1e-3 of the numeric
    assert gradient_missing(mismatch(1e-2 * N)) is None


def test_upstream_ignored():
    assert upstream_ignored(mismatch(N, upstream=True)).startswith("upstream gradient ignored")
    assert upstream_ignored(mismatch(N, upstream=False)) is None


def test_sign_flipped():
    assert sign_flipped(mismatch(-N)) == "sign flipped: analytic ≈ −numeric"
    assert sign_flipped(mismatch(-1.005 * N)) is not None  # within FIT
    assert sign_flipped(mismatch(2 * N)) is None


def test_batch_reduction_averaged_or_summed():
    assert batch_averaged(mismatch(N / 4, batch_size=4)) == (
        "batch reduction wrong: analytic ≈ numeric / 4 (averaged over the batch where it "
        "should be summed?)"
    )
    assert batch_summed(mismatch(N * 4, batch_size=4)) == (
        "batch reduction wrong: analytic ≈ numeric × 4 (summed over the batch where it "
        "should be averaged?)"
    )
    assert batch_averaged(mismatch(N / 4, batch_size=None)) is None
    assert batch_averaged(mismatch(N / 4, batch_size=1)) is None
    assert batch_averaged(mismatch(N / 3, batch_size=4)) is None
    assert batch_summed(mismatch(N / 4, batch_size=4)) is None


def test_constant_factor():
    assert constant_factor(mismatch(2.5 * N)) == (
        "constant factor: analytic ≈ 2.5 × numeric (a missing or extra factor)"
    )
    not_proportional = N.clone()
    not_proportional[0] = 7.0
    assert constant_factor(mismatch(not_proportional)) is None


def test_transposed():
    n = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=T)  # [[1, 2], [3, 4]]
    a = torch.tensor([1.0, 3.0, 2.0, 4.0], dtype=T)  # its transpose
    assert transposed(mismatch(a, n, shape=(2, 2))) == (
        "transposed: analytic ≈ numericᵀ (a weight gradient built as xᵀ·g vs gᵀ·x?)"
    )
    assert transposed(mismatch(a, n, shape=(2, 2), full=False)) is None  # layout unknown
    assert transposed(mismatch(a, n, shape=(4,))) is None


def test_partly_wrong_names_whole_rows_or_the_entries():
    a = N.clone()
    a[2:4] *= 3  # row 1 of a (3, 2) matrix
    assert partly_wrong(mismatch(a, shape=(3, 2))) == (
        "only part of the tensor is wrong: rows 1 of 3 (2 of 6 entries); the rest match"
    )
    assert partly_wrong(mismatch(a, shape=(3, 2), full=False)) == (
        "only part of the tensor is wrong: 2 of 6 checked entries (flat indices 2, 3)"
    )
    assert partly_wrong(mismatch(N)) is None  # nothing wrong
    assert partly_wrong(mismatch(3 * N)) is None  # everything wrong


def test_the_table_tries_the_hints_in_order():
    assert HINTS == (
        gradient_missing,
        upstream_ignored,
        sign_flipped,
        batch_averaged,
        batch_summed,
        constant_factor,
        transposed,
        partly_wrong,
    )


def hint(a, n=N, **kwargs):
    kwargs = {"full": True, "noise": 0.0, "batch_size": None, "upstream_ignored": False} | kwargs
    shape = kwargs.pop("shape", tuple(n.shape))
    return bug_hint(torch.as_tensor(a, dtype=T), n, torch.arange(n.numel()), shape, **kwargs)


def test_the_first_match_wins():
    # a sign flip behind a backward that ignores its upstream gradient: upstream first
    assert hint(-N, upstream_ignored=True).startswith("upstream gradient ignored")
    # zero behind an ignored upstream: missing first
    assert hint(torch.zeros(6), upstream_ignored=True).startswith("gradient missing")
    # numeric / B is also a constant factor: the batch reduction first
    assert hint(N / 4, batch_size=4).startswith("batch reduction wrong: analytic ≈ numeric / 4")
    # −1 × numeric with a batch of 1: the sign
    assert hint(-N, batch_size=1) == "sign flipped: analytic ≈ −numeric"
    # proportional stops at the factor, whatever the layout
    assert hint(2 * N, shape=(3, 2)).startswith("constant factor")
    assert hint(N.flip(0)) is None  # every entry wrong, in no pattern: no guess


def test_no_hint_for_a_numeric_gradient_that_is_noise():
    noise = float(N.norm()) / 6**0.5  # ‖n‖ ≤ noise·√m: n is the rounding's
    assert hint(torch.zeros(6), noise=noise) is None
    assert hint(torch.zeros(6), noise=0.99 * noise) is not None

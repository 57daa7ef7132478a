"""Each hint on hand-made analytic/numeric vectors, and the table that tries them in order."""

from __future__ import annotations

import torch

from gradcheck_tool.engines.check.hints import (
    HINTS,
    WHEN_NUMERIC_IS_NOISE,
    Mismatch,
    batch_averaged,
    batch_summed,
    bug_hint,
    constant_factor,
    gradient_missing,
    partly_wrong,
    piecewise_constant,
    sign_flipped,
    transposed,
    upstream_ignored,
)

T = torch.float64
N = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.5, 2.5], dtype=T)  # a numeric gradient, shape (6,)


def mismatch(
    a, n=N, *, shape=None, full=True, noise=0.0, batch_size=None, upstream=False, tolerance=0.0
):
    a = torch.as_tensor(a, dtype=T)
    coords = torch.arange(n.numel())
    shape = shape or tuple(n.shape)
    return Mismatch(a, n, coords, shape, full, noise, batch_size, upstream, tolerance)


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
        "only part of the tensor is wrong: rows 1 of 3 (2 of 6 entries wrong); the rest match"
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
    assert WHEN_NUMERIC_IS_NOISE == (piecewise_constant,)


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


# --- Note [what a hint may claim]: a pattern only where it explains the mismatch -------------

BIG_AND_SMALL = torch.tensor([10.0, -8.0, 6.0, 0.5, -0.4, 0.3], dtype=T)


def test_a_factor_is_claimed_only_where_it_explains_the_mismatch():
    n = BIG_AND_SMALL
    # per-entry ratios from 0.92 to 1.26: a fit within 1 % of ‖a‖, yet it leaves most of ‖a − n‖
    ratios = torch.tensor([1.005, 1.007, 1.006, 0.92, 1.26, 1.1], dtype=T)
    assert constant_factor(mismatch(n * ratios, n)) is None
    assert hint(n * ratios, n) is None
    # a gradient reversal (−λ) or a multiplier keeps its hint under the numeric values' noise
    wobble = 1e-6 * torch.tensor([1.0, -1.0, 0.5, 2.0, -0.5, 1.0], dtype=T)
    assert hint(-0.3 * n, n + wobble).startswith("constant factor: analytic ≈ -0.3 × numeric")
    assert hint(2 * n, n + wobble).startswith("constant factor: analytic ≈ 2 × numeric")
    assert hint(-n, n + wobble) == "sign flipped: analytic ≈ −numeric"


def test_a_factor_near_one_explains_nothing():
    assert constant_factor(mismatch(1.0002 * N)) is None  # exact, but names no cause
    assert hint(1.0002 * N) is None
    assert constant_factor(mismatch(1.01 * N)).startswith("constant factor: analytic ≈ 1.01 ×")


def test_one_entry_is_proportional_to_anything():
    one = torch.tensor([2.0], dtype=T)
    assert constant_factor(mismatch([1.4], one)) is None
    assert hint([1.4], one) is None
    # the second entry lies in the noise: still one entry
    assert hint([1.4, 1e-12], torch.tensor([2.0, 0.0], dtype=T), noise=1e-9) is None
    # −1 and 1/B are particular enough to name from one entry
    assert hint([-2.0], one) == "sign flipped: analytic ≈ −numeric"
    averaged = hint([0.5], one, batch_size=4)
    assert averaged.startswith("batch reduction wrong: analytic ≈ numeric / 4")


def test_a_factor_equal_to_a_batch_of_two_has_two_readings():
    assert hint(N / 2, batch_size=2) == (
        "batch reduction wrong, or a stray factor ½: analytic ≈ numeric / 2 (averaged over the "
        "batch of 2 where it should be summed? a batch of another size tells the two apart)"
    )
    assert hint(N * 2, batch_size=2) == (
        "batch reduction wrong, or a stray factor 2: analytic ≈ numeric × 2 (summed over the "
        "batch of 2 where it should be averaged? a batch of another size tells the two apart)"
    )
    assert hint(N / 2, batch_size=3).startswith("constant factor: analytic ≈ 0.5 × numeric")
    assert hint(N / 6, batch_size=6) == (
        "batch reduction wrong: analytic ≈ numeric / 6 (averaged over the batch where it "
        "should be summed?)"
    )


N36 = torch.linspace(1.0, 4.5, 36, dtype=T)  # 36 entries, all well above the noise


def test_part_of_the_tensor_only_for_a_clear_minority_or_whole_slices():
    most = 1.5 * N36
    most[7] = N36[7]
    assert partly_wrong(mismatch(most, N36)) is None  # 35 of 36 is not "part"
    assert partly_wrong(mismatch(most, N36, shape=(6, 6))) is None
    few = N36.clone()
    few[[3, 20]] *= 1.5
    assert partly_wrong(mismatch(few, N36)) == (
        "only part of the tensor is wrong: entries 3, 20 of 36; the rest match"
    )
    assert partly_wrong(mismatch(few, N36, shape=(6, 6))) == (
        "only part of the tensor is wrong: 2 of 36 checked entries (flat indices 3, 20)"
    )
    rows = 1.5 * N36
    rows[:6] = N36[:6]  # whole slices, even most of them: every row but the first
    assert partly_wrong(mismatch(rows, N36, shape=(6, 6))) == (
        "only part of the tensor is wrong: rows 1–5 of 6 (30 of 36 entries wrong); the rest match"
    )
    assert partly_wrong(mismatch(rows, N36, shape=(36, 1))) is None  # rows of one entry


def test_slices_of_a_tensor_that_is_not_a_matrix_are_named_by_their_dim():
    channel = N36.clone().reshape(3, 4, 3)
    channel[:, 2] *= 3  # the third channel of a (3, 4, 3) weight: a slice along dim 1
    assert partly_wrong(mismatch(channel.reshape(-1), N36, shape=(3, 4, 3))) == (
        "only part of the tensor is wrong: slices 2 of 4 along dim 1 (9 of 36 entries wrong); "
        "the rest match"
    )
    first = N36.clone().reshape(2, 18)
    first[0] *= 3
    assert partly_wrong(mismatch(first.reshape(-1), N36, shape=(2, 2, 9))) == (
        "only part of the tensor is wrong: slices 0 of 2 along dim 0 (18 of 36 entries wrong); "
        "the rest match"
    )


def test_entries_as_small_as_the_noise_are_neither_right_nor_wrong():
    n = N.clone()
    n[:2] = 0.0  # a dead row: a = n = 0 there
    assert partly_wrong(mismatch(3 * n, n, shape=(3, 2))) is None
    n[:2] = 1e-10  # within the noise: the same
    assert partly_wrong(mismatch(3 * n, n, shape=(3, 2), noise=1e-9)) is None


def test_entries_within_the_tolerance_are_right_and_unclear_ones_stop_the_claim():
    a = N.clone()
    a[1] *= 1.005
    a[4] *= 3
    assert partly_wrong(mismatch(a, tolerance=1e-2)) == (
        "only part of the tensor is wrong: entries 4 of 6; the rest match"
    )
    assert partly_wrong(mismatch(a)) is None  # 0.5 % off: neither clearly right nor wrong
    assert hint(a, tolerance=1e-2).startswith("only part of the tensor is wrong: entries 4 of 6")


def test_a_noisy_numeric_gradient_near_the_tolerance_gets_no_pattern():
    gen = torch.Generator().manual_seed(0)
    n = torch.randn(36, generator=gen, dtype=T)
    a = n * (1 + 0.02 * torch.randn(36, generator=gen, dtype=T))  # float32-like scatter
    assert hint(a, n, shape=(6, 6), tolerance=1e-2) is None
    assert hint(a, n, shape=(6, 6)) is None
    assert hint(a, n, full=False) is None  # sampled coordinates


def test_a_symmetric_gradient_nearly_right_is_not_transposed():
    n = torch.tensor([2.0, 1.0, 1.0, 3.0], dtype=T)  # [[2, 1], [1, 3]] = its transpose
    a = n + 1e-3 * torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=T)
    assert transposed(mismatch(a, n, shape=(2, 2))) is None


def test_a_numeric_gradient_of_zero_under_a_real_analytic_one_is_a_piecewise_constant_forward():
    zero = torch.zeros(6, dtype=T)
    text = hint(N, zero, noise=1e-9)
    assert text == (
        "piecewise-constant forward: the loss does not move when this tensor does (numeric ≈ 0) "
        "but the backward gives a gradient; a straight-through estimator (round, sign, "
        "quantize) is not a gradient: leave it out with --skip or check the layers around it "
        "(a cast to half precision hides small steps too)"
    )
    assert piecewise_constant(mismatch(N, zero, noise=1e-9)) == text
    assert hint(N, 1e-10 * N.flip(0), noise=1e-9) == text  # numeric within the noise
    assert hint(1e-9 * N, zero, noise=1e-9) is None  # analytic within the noise too
    assert hint(N, 0.5 * N, noise=1e-9) != text  # numeric resolved: the other hints

"""compare() and classify_sweep() on values worked out by hand: no model, plain tensors."""

from __future__ import annotations

import math

import pytest
import torch

from gradcheck_tool.engines.check.numerics import (
    ROUNDING_ULPS,
    band_scale,
    classify_sweep,
    compare,
    relative_error,
    resolution,
    resolved_error,
    rounding_noise,
)
from gradcheck_tool.results import SweepPoint

T = torch.float64


def central(f, x: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """f at x ± h·e_i for every coordinate i."""
    eye = torch.eye(x.numel(), dtype=T)
    fp = torch.stack([f(x + h * e) for e in eye])
    fm = torch.stack([f(x - h * e) for e in eye])
    return fp, fm


def refiner(f, x: torch.Tensor):
    """compare()'s `refine`: f at x ± step·e_i for the coordinates it asks about."""

    def refine(local: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
        fp, fm = central(f, x, step)
        return fp[local], fm[local]

    return refine


# --- compare --------------------------------------------------------------------------------


def test_relative_error_is_the_formula_worked_by_hand():
    # a = [3, 4], numeric = [6, 8]: ‖a − n‖ = 5, ‖a‖ = 5, ‖n‖ = 10. h = 0.5 keeps n exact.
    a = torch.tensor([3.0, 4.0], dtype=T)
    fp, fm = torch.tensor([3.0, 4.0], dtype=T), torch.tensor([-3.0, -4.0], dtype=T)
    comp = compare(a, fp, fm, f0=0.0, h=0.5, rounding=1e-12, tol=1e-5)
    noise = 1e-12 / 0.5
    tiny = math.sqrt(2) * noise / 1e-5
    assert comp.noise == noise
    assert comp.tiny == pytest.approx(tiny, rel=1e-15)
    assert comp.num.tolist() == [6.0, 8.0]
    assert not comp.kink.any()
    assert comp.rel == pytest.approx(5.0 / (5.0 + 10.0 + tiny), rel=1e-15)


def test_a_smooth_function_agrees_to_rounding():
    # f(x) = Σ x³ at x = [1, −2]: analytic 3x² = [3, 12]; the central difference of a cubic
    # is off by exactly h² (f''' h²/6 = 6h²/6) per coordinate
    x = torch.tensor([1.0, -2.0], dtype=T)
    h = 1e-3
    fp, fm = central(lambda v: (v**3).sum(), x, h)
    a = 3 * x**2
    comp = compare(a, fp, fm, f0=float((x**3).sum()), h=h, rounding=1e-15, tol=1e-5)
    assert comp.num.tolist() == pytest.approx([3.0 + h**2, 12.0 + h**2], rel=1e-9)
    by_hand = math.sqrt(2) * h**2 / (float(a.norm()) + float(comp.num.norm()) + comp.tiny)
    assert comp.rel == pytest.approx(by_hand, rel=1e-4)
    assert comp.rel < 1e-5


def test_relu_at_zero_is_a_kink_once_refined():
    # ReLU at 0: one-sided derivatives 1 and 0 at every step; autograd's 0 lies between them
    x = torch.tensor([0.0, 1.0], dtype=T)
    relu = lambda v: torch.relu(v).sum()  # noqa: E731
    h = 1e-6
    fp, fm = central(relu, x, h)
    a = torch.tensor([0.0, 1.0], dtype=T)
    comp = compare(a, fp, fm, 0.0 + 1.0, h, rounding=1e-16, tol=1e-5, refine=refiner(relu, x))
    assert comp.kink.tolist() == [True, False]
    assert comp.judged.tolist() == pytest.approx([0.0, 1.0])
    assert comp.rel == pytest.approx(0.0, abs=1e-9)
    # without a second step to tell a kink from a bug, the same numbers are an error
    plain = compare(a, fp, fm, 1.0, h, rounding=1e-16, tol=1e-5)
    assert not plain.kink.any() and plain.rel > 0.1


@pytest.mark.parametrize("verify_says", [None, False])
def test_a_wrong_value_at_a_kink_is_not_excused(verify_says):
    # autograd claims 5 at ReLU's corner: not between the one-sided derivatives 0 and 1, and
    # the backward a step away does not back it up (or nobody could check)
    x = torch.tensor([0.0], dtype=T)
    relu = lambda v: torch.relu(v).sum()  # noqa: E731
    fp, fm = central(relu, x, 1e-6)
    verify = (
        None
        if verify_says is None
        else (lambda local: torch.full_like(local, False, dtype=torch.bool))
    )
    comp = compare(
        torch.tensor([5.0], dtype=T), fp, fm, 0.0, 1e-6, 1e-16, 1e-5,
        refine=refiner(relu, x), verify=verify,
    )  # fmt: skip
    assert comp.kink.tolist() == [False]
    assert comp.rel == pytest.approx(4.5 / (5.0 + 0.5 + comp.tiny))


def test_a_value_outside_the_one_sided_derivatives_counts_as_a_kink_when_verified():
    # several ReLUs flipping at once can put autograd's value outside; verify() judges the
    # backward a small step away and says it is right there
    x = torch.tensor([0.0], dtype=T)
    relu = lambda v: torch.relu(v).sum()  # noqa: E731
    fp, fm = central(relu, x, 1e-6)
    comp = compare(
        torch.tensor([5.0], dtype=T), fp, fm, 0.0, 1e-6, 1e-16, 1e-5,
        refine=refiner(relu, x), verify=lambda local: torch.ones_like(local, dtype=torch.bool),
    )  # fmt: skip
    assert comp.kink.tolist() == [True] and comp.rel == 0.0


def test_a_gradient_below_resolution_is_not_an_error_but_one_above_is():
    # rounding 1e-10 at h = 1e-6: noise 1e-4 per coordinate, tiny = 1e-4 / 1e-5 = 10
    h = 1e-6

    def at(numeric: float) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([numeric * h], dtype=T), torch.tensor([-numeric * h], dtype=T)

    comp = compare(torch.tensor([1e-12], dtype=T), *at(2e-12), 0.0, h, rounding=1e-10, tol=1e-5)
    assert comp.tiny == pytest.approx(10.0)
    assert comp.num.tolist() == pytest.approx([2e-12])  # 100% off, but far below the noise
    assert comp.rel == pytest.approx(1e-12 / (3e-12 + 10.0)) and comp.rel < 1e-5
    # a 0.1% error on a gradient of size 1 is far above the noise: it counts
    big = compare(torch.tensor([1.0], dtype=T), *at(1.001), 0.0, h, rounding=1e-10, tol=1e-5)
    assert big.rel == pytest.approx(0.001 / (2.001 + 10.0), rel=1e-6)
    assert big.rel > 1e-5


def test_relative_error_helpers():
    a, n = torch.tensor([3.0, 4.0], dtype=T), torch.tensor([6.0, 8.0], dtype=T)
    assert relative_error(a, n, 0.0) == pytest.approx(5.0 / 15.0)
    assert relative_error(a, a, 1.0) == 0.0
    assert resolution(4, 1e-8, 1e-5) == pytest.approx(2e-3)
    assert resolved_error(a, n, tiny=15.0) == pytest.approx(5.0 / 15.0)  # at the resolution
    assert resolved_error(a, n, tiny=15.1) is None  # below it: neither pass nor fail
    assert resolved_error(a, torch.tensor([math.nan, 1.0], dtype=T), 0.0) == math.inf
    assert rounding_noise(torch.float64, 2.0) == ROUNDING_ULPS * 2.0**-52 * 2.0
    assert band_scale(torch.float32) == 1e3 and band_scale(torch.float64) == 1.0


# --- classify_sweep ---------------------------------------------------------------------------

STEPS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)


def sweep(*errors: float) -> list[SweepPoint]:
    return [SweepPoint(h, e) for h, e in zip(STEPS, errors)]


def test_truncation_passes_at_a_smaller_step():
    points = sweep(1e-1, 1e-2, 1e-3, 1e-4, 2e-5, 1e-6, 1e-3, 1e-2)
    assert classify_sweep(points, 1e-5, 1e-6) == (
        "truncation error: shrinks as h shrinks; passes at eps=1e-07",
        1e-7,
    )


def test_round_off_passes_at_a_larger_step():
    points = sweep(1e-3, 1e-5, 1e-7, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1)
    assert classify_sweep(points, 1e-5, 1e-6) == (
        "round-off error: grows as h shrinks; passes at eps=0.0001",
        1e-4,
    )


def test_a_stable_mismatch_is_a_bug():
    points = sweep(0.51, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.52)
    assert classify_sweep(points, 1e-5, 1e-6) == (
        "stable mismatch at every step size: a real bug",
        None,
    )


def test_a_varying_mismatch_that_never_passes_is_a_bug_too():
    points = sweep(0.5, 1e-1, 1e-2, 1e-3, 1e-2, 1e-1, 0.5, 0.9)
    assert classify_sweep(points, 1e-5, 1e-6) == (
        "mismatch at every step size (best 0.001 at eps=1e-05): a real bug",
        None,
    )


def test_below_resolution_at_every_step_is_unresolved():
    points = sweep(*[math.nan] * 8)
    assert classify_sweep(points, 1e-5, 1e-6) == (
        "unresolved: the gradient is below finite-difference resolution at every step",
        None,
    )


def test_nan_or_inf_at_every_step():
    points = sweep(*[math.inf] * 8)
    assert classify_sweep(points, 1e-5, 1e-6) == ("stable mismatch: NaN/Inf at every step", None)


def test_passes_at_the_default_step():
    points = sweep(1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-7, math.nan, math.inf)
    assert classify_sweep(points, 1e-5, 1e-6) == ("passes at the default step", None)

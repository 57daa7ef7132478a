"""Seeded gradient bugs are caught, and exactly the buggy tensors fail.

Each file in fixtures/bugs/ holds a `Correct` autograd.Function and a `Buggy` twin with one
classic backward mistake. Independent reference: `torch.autograd.gradcheck` in float64 with
only one input requiring grad at a time, which says per input whether its gradient is right.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import (
    BUGS,
    MODEL_BUGS,
    NEVER_REACHES,
    check_file,
    failing,
    message_of,
)
from models import (
    torch_reference_failures,
)

from gradcheck_tool import check
from gradcheck_tool.loading import load_target

# bug file -> the tensors whose gradient the bug breaks (all other inputs must pass)
SEEDED = {
    "sign_flipped": {"x"},
    "factor_missing": {"x"},
    "sigmoid_derivative": {"x"},
    "ignores_grad_output": {"x"},
    "product_swapped": {"a", "b"},
    "weight_transposed": {"weight"},
    "bias_averaged": {"bias"},
    "softmax_missing_term": {"x"},
    "layernorm_missing_term": {"x"},
    "wrong_sqrt_eps": {"x"},
    "half_dropped": {"w"},
    "leaky_slope": {"x"},
}


def as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


@pytest.mark.parametrize("bug", sorted(SEEDED))
def test_seeded_bug_fails_exactly_the_buggy_tensors(bug):
    report = check_file(f"{BUGS / (bug + '.py')}:Buggy")
    assert not report.passed
    assert failing(report) == SEEDED[bug]
    names = list(
        inspect.signature(load_target(f"{BUGS / (bug + '.py')}:Buggy").obj.forward).parameters
    )[1:]
    assert [r.name for r in report.results] == names  # named by forward's arguments
    for result in report.results:
        assert result.checked == result.numel  # small tensors: every coordinate
        if result.name in SEEDED[bug]:
            assert result.rel_error > 1e-3 and result.rating == "bug", result
            assert result.worst, "a failing tensor lists its worst entries"
            for entry in result.worst:
                assert len(entry.index) == len(result.shape)
                assert all(0 <= i < s for i, s in zip(entry.index, result.shape))
                assert entry.abs_error > 0
            errors = [entry.abs_error for entry in result.worst]
            assert errors == sorted(errors, reverse=True), errors  # worst first, all of them
            assert NEVER_REACHES not in message_of(result)
        else:
            assert result.passed and result.rating in ("excellent", "acceptable"), result
            assert result.worst == ()


@pytest.mark.parametrize("bug", sorted(SEEDED))
def test_correct_twin_passes(bug):
    report = check_file(f"{BUGS / (bug + '.py')}:Correct")
    assert report.passed, [(r.name, r.rel_error) for r in report.results]
    assert all(r.rating in ("excellent", "acceptable") for r in report.results)


@pytest.mark.parametrize("bug", sorted(SEEDED))
def test_torch_gradcheck_agrees_on_which_tensors_are_wrong(bug):
    module_path = BUGS / (bug + ".py")
    buggy = load_target(f"{module_path}:Buggy")
    correct = load_target(f"{module_path}:Correct")
    inputs = as_tuple(buggy.example_inputs)
    assert torch_reference_failures(buggy.obj, inputs) == SEEDED[bug]
    assert torch_reference_failures(correct.obj, inputs) == set()


def test_upstream_gradient_bug_is_hidden_by_sum_but_not_by_the_default_projection():
    loaded = load_target(f"{BUGS / 'ignores_grad_output.py'}:Buggy")
    x = loaded.example_inputs
    # With .sum() the upstream gradient is all ones, so ignoring it goes unnoticed ...
    assert check(loaded.obj, x, loss_fn=lambda out, x: out.sum()).passed
    # ... which is why gradtool projects on a fixed random direction instead.
    assert not check(loaded.obj, x).passed


# --- model-level bugs ------------------------------------------------------------------------


NEVER_REACHED = {
    "detached_weight": "scale",
    "no_grad_param": "gain",
    "data_param": "offset",
    "item_param": "temperature",
}


@pytest.mark.parametrize("bug", sorted(NEVER_REACHED))
def test_gradient_that_never_reaches_a_parameter(bug):
    report = check_file(MODEL_BUGS / f"{bug}.py")
    name = NEVER_REACHED[bug]
    assert failing(report) == {name}
    result = report.result(name)
    assert result.kind == "parameter"
    assert NEVER_REACHES in message_of(result), result.note
    for hint in (".detach()", ".data", "no_grad", ".item()"):
        assert hint in message_of(result)
    assert {"hidden.weight", "hidden.bias", "input:x"} <= {r.name for r in report.results}


def test_buggy_function_inside_a_model_fails_everything_upstream_of_it():
    report = check_file(MODEL_BUGS / "function_in_model.py")
    assert failing(report) == {"first.weight", "first.bias", "input:x"}
    assert report.result("second.weight").passed and report.result("second.bias").passed
    for name in failing(report):
        result = report.result(name)
        assert result.rating == "bug" and result.worst
        assert NEVER_REACHES not in message_of(result)  # it reaches them, wrongly


def test_nan_in_the_analytic_gradient_says_nan_and_where():
    class NanBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x * w

        @staticmethod
        def backward(ctx, grad_output):
            x, w = ctx.saved_tensors
            grad_x = grad_output * w
            grad_x[1, 2] = float("nan")  # BUG: NaN in one entry
            return grad_x, (grad_output * x).sum(0)

    generator = torch.Generator().manual_seed(5)
    report = check(NanBackward, (torch.randn(3, 4, generator=generator), torch.randn(4)))
    assert failing(report) == {"x"}
    result = report.result("x")
    assert "nan" in message_of(result) and "[1, 2]" in result.note
    assert result.rating == "bug"

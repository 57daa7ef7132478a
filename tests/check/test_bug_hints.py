"""Bug-pattern hints: each classic backward mistake of fixtures/hints/ gets its own hint, named
first, in the JSON and in the table; correct models get no hint anywhere. (Each hint on
hand-made vectors: unit/test_hints.py.)

Independent reference: torch.autograd.gradcheck in float64, one input at a time, says which
tensor is wrong.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    HINT_PATTERNS,
    HINTS,
    KINKS,
    RANDOMNESS,
    SECOND_ORDER,
    assert_user_error,
    check_cli,
    failing,
    invoke_cli,
    spec,
)
from models import (
    as_float64_leaves,
    module_function,
    torch_gradcheck_module,
    torch_reference_failures,
)

from gradcheck_tool import check
from gradcheck_tool.errors import UserCodeError
from gradcheck_tool.loading import load_target


@pytest.mark.parametrize("pattern", sorted(HINT_PATTERNS))
def test_each_bug_pattern_gets_its_hint_in_json_and_table(tmp_path, pattern):
    tensor, words = HINT_PATTERNS[pattern]
    loaded = load_target(f"{HINTS}:{pattern}")
    assert torch_reference_failures(loaded.obj, loaded.example_inputs) == {tensor}

    run = check_cli(tmp_path, f"{HINTS}:{pattern}")
    assert run.code == 1, run.output
    failed = [r for r in run.report["results"] if not r["passed"]]
    assert [r["name"] for r in failed] == [tensor]
    hint = failed[0]["hint"]
    assert hint is not None, failed[0]
    assert hint.startswith(words[0]), hint  # names this pattern, and first
    for word in words[1:]:
        assert word in hint, hint
    assert all(r["hint"] is None for r in run.report["results"] if r["passed"])
    assert f"hint: {hint}" in run.table_cell(tensor, "note")  # shown in the table


def test_a_vanishing_gradient_is_reported_as_missing():
    class TinyWeightGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias):
            ctx.save_for_backward(x, weight)
            return x @ weight.T + bias

        @staticmethod
        def backward(ctx, g):
            x, weight = ctx.saved_tensors
            return g @ weight, 1e-6 * (g.T @ x), g.sum(0)  # BUG: ≈ 0, not exactly 0

    inputs = load_target(f"{HINTS}:Correct").example_inputs
    report = check(TinyWeightGrad, inputs)
    assert failing(report) == {"weight"}
    assert report.result("weight").hint.startswith("gradient missing")


@pytest.mark.parametrize(
    "target, second_order",
    [
        (f"{HINTS}:Correct", True),
        (spec(KINKS / "relu_at_zero.py", "Net"), True),
        (spec(KINKS / "abs_clamp_at_zero.py", "AbsClamp"), False),  # its 2nd order: test_kinks.py
        (spec(RANDOMNESS / "private_generator.py", "GlobalDropout"), True),
        (spec(SECOND_ORDER / "double_backward_model.py", "Net"), True),
    ],
)
def test_correct_models_get_no_hint_anywhere(tmp_path, target, second_order):
    run = check_cli(tmp_path, target, "--sweep", *(["--second-order"] if second_order else []))
    assert run.code == 0, run.output
    assert run.report["results"]
    assert all(r["passed"] and r["hint"] is None for r in run.report["results"])
    assert "hint:" not in run.output


# --- backwards that are not the gradient on purpose; near-misses; integer inputs ------------

NOT_GRADIENTS = HINTS.parent / "not_gradients.py"
NEAR_MISSES = HINTS.parent / "near_misses.py"
INTEGER_INPUTS = HINTS.parent / "integer_inputs.py"
BEFORE = {"features.weight", "features.bias", "input:x"}  # upstream of the rounding/scaling


@pytest.mark.parametrize(
    "name, words",
    [
        ("QuantizedMLP", "piecewise-constant forward: the loss does not move"),
        ("ReversedGradient", "constant factor: analytic ≈ -0.3 × numeric"),
        ("Reversed", "sign flipped: analytic ≈ −numeric"),
        ("DoubledGradient", "constant factor: analytic ≈ 2 × numeric"),
    ],
)
def test_a_backward_that_is_not_the_gradient_on_purpose_is_named_for_what_it_does(name, words):
    loaded = load_target(spec(NOT_GRADIENTS, name))
    reference = copy.deepcopy(loaded.obj)  # torch's gradcheck agrees (on a float64 copy)
    assert not torch_gradcheck_module(reference, loaded.example_inputs)
    report = check(loaded.obj, loaded.example_inputs)
    assert failing(report) == BEFORE
    for tensor in BEFORE:
        assert report.result(tensor).hint.startswith(words), report.result(tensor).hint
    if name == "QuantizedMLP":
        assert "straight-through estimator" in report.result("input:x").hint
        assert "--skip" in report.result("input:x").hint
    assert all(r.hint is None for r in report.results if r.passed)


def test_a_multiplier_of_two_in_a_batch_of_two_names_both_readings():
    model = load_target(spec(NOT_GRADIENTS, "DoubledGradient")).obj
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    report = check(model, x)
    assert failing(report) == BEFORE
    hint = report.result("features.weight").hint
    assert hint.startswith("batch reduction wrong, or a stray factor 2: analytic ≈ numeric × 2")
    assert "a batch of another size tells the two apart" in hint


@pytest.mark.parametrize("name", ["SigmoidPlusEpsilon", "WobblySigmoid", "SigmoidByAHair"])
def test_a_backward_off_in_no_pattern_fails_without_a_misleading_hint(name):
    loaded = load_target(spec(NEAR_MISSES, name))
    f, _ = module_function(copy.deepcopy(loaded.obj))
    leaves = as_float64_leaves((loaded.example_inputs, *loaded.obj.parameters()))
    # torch agrees at gradtool's tolerance (its own rtol=1e-3 passes the 0.02 % one)
    assert not torch.autograd.gradcheck(f, leaves, rtol=1e-5, atol=0.0, raise_exception=False)
    report = check(loaded.obj, loaded.example_inputs)
    assert failing(report) == {"hidden.weight", "hidden.bias", "input:x"}
    assert all(r.hint is None for r in report.results), [r.hint for r in report.results]


def test_integer_inputs_to_a_model_that_computes_with_them_get_a_true_hint():
    model = load_target(spec(INTEGER_INPUTS, "Regressor")).obj
    ids = torch.randint(0, 10, (2, 4), generator=torch.Generator().manual_seed(0))
    with pytest.raises(UserCodeError) as raised:
        check(model, ids)
    assert "the forward raised RuntimeError" in raised.value.message  # the error's own text
    hint = raised.value.hint
    assert "integer inputs to the forward as they are (never converted, never perturbed)" in hint
    assert "constant" not in hint and "--dtype float32" not in hint

    result = invoke_cli(
        "check", spec(INTEGER_INPUTS, "Regressor"), "--input-shape", "2,4", "--input-dtype", "int64"
    )
    assert_user_error(result, "the forward raised", "integer inputs", "never perturbed")
    assert "create constants" not in result.output


def test_floating_ids_for_an_embedding_get_a_hint_about_indices():
    model = load_target(spec(INTEGER_INPUTS, "TokenClassifier")).obj
    ids = torch.randint(0, 10, (2, 3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(UserCodeError) as raised:
        check(model, ids.double())
    assert "needs integer indices but got a float64 tensor" in raised.value.hint
    report = check(model, ids)  # the same ids as integers: checked, and right
    assert report.passed and all(r.hint is None for r in report.results)

"""Which tensors a check covers and how: complex outputs (both parts), nested (dict) inputs, a
forward that writes into its input, a bound forward or a closure as the target, and a target
with nothing to check.

Independent reference: torch.autograd.gradcheck in float64 (the in-place input).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    CHECKED_TENSORS,
    assert_user_error,
    check_file,
    failing,
    invoke_cli,
    message_of,
)
from torch import nn

from gradcheck_tool import check
from gradcheck_tool.errors import GradtoolError, InputError
from gradcheck_tool.loading import load_target

# --- complex outputs are checked on both parts -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "wrong"),
    [("M", {"im.weight", "im.bias", "input:x"}), ("ImagDouble", {"x"})],
)
def test_sign_flip_on_the_imaginary_path_fails(name, wrong):
    report = check_file(f"{CHECKED_TENSORS / 'complex_outputs.py'}:{name}")
    assert failing(report) == wrong, [(r.name, r.passed, r.note) for r in report.results]


@pytest.mark.parametrize("name", ["MOk", "ImagDoubleOk"])
def test_correct_complex_output_passes(name):
    report = check_file(f"{CHECKED_TENSORS / 'complex_outputs.py'}:{name}")
    assert report.passed, [(r.name, r.rel_error, r.note) for r in report.results]
    for result in report.results:
        assert "no gradient" not in message_of(result), result  # the imaginary part counts


def test_complex_model_with_imaginary_bug_fails_the_cli():
    result = invoke_cli("check", f"{CHECKED_TENSORS / 'complex_outputs.py'}:M")
    assert result.code == 1, result.output


# --- nested inputs ---------------------------------------------------------------------------


def test_dict_input_is_converted_and_checked():
    report = check_file(f"{CHECKED_TENSORS / 'nested_inputs.py'}:M")
    names = [r.name for r in report.results]
    assert "input:batch['x']" in names and "input:batch['w']" in names, names
    assert report.passed, [(r.name, r.rel_error, r.note) for r in report.results]


def test_bug_on_a_nested_input_is_caught():
    report = check_file(f"{CHECKED_TENSORS / 'nested_inputs.py'}:Buggy")
    assert failing(report) == {"input:batch['x']"}


# --- a forward writing into its input in place -----------------------------------------------


def _reference_gradcheck(model: nn.Module, x: torch.Tensor) -> bool:
    """torch.autograd.gradcheck over the input and the parameters, in float64."""
    model = copy.deepcopy(model).double()
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

    def fn(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, dict(zip(names, ps)), (x.clone(),))

    x = x.detach().double().requires_grad_(True)
    return torch.autograd.gradcheck(fn, (x, *params), raise_exception=False)


@pytest.mark.parametrize(("name", "correct"), [("M", True), ("Buggy", False)])
def test_inplace_write_to_the_input_is_checked_like_torch_gradcheck(name, correct):
    loaded = load_target(f"{CHECKED_TENSORS / 'inplace_input.py'}:{name}")
    x = loaded.example_inputs
    x_before = x.clone()
    report = check(loaded.obj, x)
    assert torch.equal(x, x_before)  # the user's input is left as found
    assert _reference_gradcheck(loaded.obj, x) is correct
    assert report.passed is correct, [(r.name, r.rel_error, r.note) for r in report.results]
    assert {r.name for r in report.results} == {"l.weight", "l.bias", "input:x"}
    if not correct:
        assert "input:x" in failing(report)


# --- bound forward and closures over a module ------------------------------------------------


class _WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def _bn_model_and_input() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _WithBatchNorm().double().train(), torch.randn(5, 3, dtype=torch.float64)


def test_bound_forward_checks_the_modules_parameters():
    model, x = _bn_model_and_input()
    stats = copy.deepcopy(model.bn.state_dict())
    report = check(model.forward, x)
    names = {r.name for r in report.results}
    assert {"fc.weight", "fc.bias", "bn.weight", "bn.bias"} <= names, names
    assert report.passed
    for key, value in model.bn.state_dict().items():
        assert torch.equal(value, stats[key]), key


def test_closure_over_a_module_is_refused_and_leaves_it_untouched():
    model, x = _bn_model_and_input()
    stats = copy.deepcopy(model.bn.state_dict())
    with pytest.raises(GradtoolError):
        check(lambda x: model(x), x)
    for key, value in model.bn.state_dict().items():
        assert torch.equal(value, stats[key]), key  # running stats, num_batches_tracked


# --- nothing to check is an error, not a pass ------------------------------------------------


def test_nothing_to_check_is_exit_2():
    result = invoke_cli("check", CHECKED_TENSORS / "frozen.py")
    assert_user_error(result, "nothing to check")
    assert "PASS" not in result.output


def test_nothing_to_check_raises_in_the_api():
    with pytest.raises(InputError, match="nothing to check"):
        check_file(CHECKED_TENSORS / "frozen.py")

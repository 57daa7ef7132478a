"""gradcheck_tool.testing: the assertions for users' own unit tests, judged against
torch.autograd.gradcheck on the same Functions (an independent verdict) and against
relative errors derived by hand."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from conftest import BUGS
from torch import nn

from gradcheck_tool.errors import GradtoolError
from gradcheck_tool.loading import load_target
from gradcheck_tool.results import CheckReport, FlowReport
from gradcheck_tool.testing import (
    ReportAssertionError,
    assert_flow_healthy,
    assert_gradients_match,
)

# seeded bugs whose Correct and Buggy Functions both run under torch.autograd.gradcheck
BUG_FILES = ["bias_averaged", "factor_missing", "sign_flipped", "weight_transposed"]


def _loaded(stem: str, name: str):
    loaded = load_target(f"{BUGS / stem}.py:{name}")
    inputs = loaded.example_inputs
    return loaded.obj, inputs if isinstance(inputs, tuple) else (inputs,)


def _gradcheck_wrong_input(fn: type, inputs: tuple) -> str | None:
    """torch.autograd.gradcheck's verdict: None when it passes, else the name (from the
    forward's signature) of the input it reports a Jacobian mismatch for."""
    doubled = tuple(t.detach().double().requires_grad_() for t in inputs)
    try:
        torch.autograd.gradcheck(fn.apply, doubled)
    except RuntimeError as exc:  # torch's GradcheckError
        index = int(re.search(r"with respect to input (\d+)", str(exc)).group(1))
        names = list(inspect.signature(fn.forward).parameters)[1:]  # after ctx
        return names[index]
    return None


def _failing_rows(message: str) -> set[str]:
    """Tensor names of the table rows marked FAIL."""
    return {m.group(1) for m in re.finditer(r"^│(\S+)\s+│.*│ FAIL\s+│", message, re.M)}


@pytest.mark.parametrize("stem", BUG_FILES)
def test_correct_function_passes_as_gradcheck_says(stem):
    fn, inputs = _loaded(stem, "Correct")
    assert _gradcheck_wrong_input(fn, inputs) is None
    report = assert_gradients_match(fn, inputs)
    assert isinstance(report, CheckReport) and report.passed


@pytest.mark.parametrize("stem", BUG_FILES)
def test_wrong_backward_raises_naming_the_tensor_gradcheck_names(stem):
    fn, inputs = _loaded(stem, "Buggy")
    wrong = _gradcheck_wrong_input(fn, inputs)
    assert wrong is not None
    with pytest.raises(AssertionError) as caught:
        assert_gradients_match(fn, inputs)
    message = str(caught.value)
    assert wrong in _failing_rows(message), message
    assert message.startswith(f"gradtool check: gradients of Buggy do not match: {wrong} ")


def test_message_has_the_relative_error():
    # db averaged over 6 rows where it should be summed: analytic = numeric / 6, so
    # |a - n| / (|a| + |n|) = (6 - 1) / (6 + 1) = 5/7 for every entry
    fn, inputs = _loaded("bias_averaged", "Buggy")
    with pytest.raises(ReportAssertionError) as caught:
        assert_gradients_match(fn, inputs)
    rel = f"{5 / 7:.2e}"
    assert re.search(rf"^│bias\s+│.*│\s+{re.escape(rel)} │", str(caught.value), re.M)
    assert f"bias (relative error {rel})" in str(caught.value).splitlines()[0]
    assert caught.value.report.result("bias").rel_error == pytest.approx(5 / 7, rel=1e-3)


def test_message_is_plain_text_of_the_width(monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # a CI setting must not put escapes in a message
    fn, inputs = _loaded("sign_flipped", "Buggy")
    for width in (80, 100):
        with pytest.raises(AssertionError) as caught:
            assert_gradients_match(fn, inputs, width=width)
        lines = str(caught.value).splitlines()
        assert "\x1b" not in str(caught.value)
        assert max(len(line) for line in lines) <= width
        assert any(len(line) > 70 for line in lines)  # the table uses the width it has
        assert "FAIL" in str(caught.value)


def _scaled_square(x, *, scale):
    return scale * x * x


def test_inputs_as_check_takes_them():
    x = torch.randn(3, dtype=torch.float64)
    assert assert_gradients_match(torch.sin, x).passed  # one tensor
    assert assert_gradients_match(torch.mul, (x, x.flip(0))).passed  # positional
    assert assert_gradients_match(_scaled_square, {"x": x, "scale": 3.0}).passed  # keywords
    report = assert_gradients_match(_scaled_square, (x,), kwargs={"scale": 3.0}, wrt=["x"])
    assert [r.name for r in report.results] == ["x"]


def test_a_users_mistake_is_a_gradtool_error_not_a_failed_assertion():
    with pytest.raises(GradtoolError, match="tolerance"):
        assert_gradients_match(torch.sin, torch.randn(3), tolerance=-1.0)


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class _LogOfNegative(_Mlp):
    def forward(self, x):
        return self.fc2(torch.log(self.fc1(x) - 100.0))  # NaN for every entry


def test_flow_healthy_model_passes():
    torch.manual_seed(0)
    report = assert_flow_healthy(_Mlp(), torch.randn(16, 4))
    assert isinstance(report, FlowReport) and report.passed
    assert "nan" in report.fail_on and "exploding" in report.fail_on
    assert "dead_relu" not in report.fail_on  # only what stops training by default


def test_flow_nan_fails_with_the_table():
    torch.manual_seed(0)
    with pytest.raises(ReportAssertionError) as caught:
        assert_flow_healthy(_LogOfNegative(), torch.randn(16, 4))
    message = str(caught.value)
    assert message.splitlines()[0].startswith("gradtool flow: _LogOfNegative has findings")
    assert "nan" in caught.value.report.failed_kinds
    assert "fc1" in message and max(len(line) for line in message.splitlines()) <= 80


def test_flow_fail_on_is_the_users_choice():
    torch.manual_seed(0)
    model, x = _LogOfNegative(), torch.randn(16, 4)
    assert assert_flow_healthy(model, x, fail_on=["dead_relu"]).fail_on == ("dead_relu",)
    with pytest.raises(AssertionError):
        assert_flow_healthy(model, x, fail_on="all")
    with pytest.raises(GradtoolError, match="unknown finding kind"):
        assert_flow_healthy(model, x, fail_on=["nope"])

"""--forward-mode: a Function's jvp is checked against finite differences.

Independent reference: torch.autograd.gradcheck(check_forward_ad=True) in float64.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    FORWARD_MODE,
    check_cli,
    check_file,
    spec,
)
from models import (
    as_float64_leaves,
)

from gradcheck_tool.loading import load_target


def test_correct_jvp_passes_forward_mode(tmp_path):
    run = check_cli(tmp_path, spec(FORWARD_MODE / "forward_mode.py", "Correct"), "--forward-mode")
    assert run.code == 0, run.output
    assert [r["name"] for r in run.report["results"]] == ["x", "y"]
    assert all(r["rating"] == "excellent" for r in run.report["results"])


def test_wrong_jvp_fails_forward_mode_only(tmp_path):
    backward = check_cli(tmp_path, spec(FORWARD_MODE / "forward_mode.py", "WrongJvp"))
    assert backward.code == 0, backward.output  # its backward is right
    forward = check_cli(
        tmp_path, spec(FORWARD_MODE / "forward_mode.py", "WrongJvp"), "--forward-mode"
    )
    assert forward.code == 1, forward.output
    assert [r["name"] for r in forward.report["results"] if not r["passed"]] == ["y"]
    assert forward.result("y")["rating"] == "bug"


@pytest.mark.parametrize("name, ok", [("Correct", True), ("WrongJvp", False)])
def test_torch_forward_ad_gradcheck_agrees(name, ok):
    loaded = load_target(spec(FORWARD_MODE / "forward_mode.py", name))
    leaves = as_float64_leaves(loaded.example_inputs)
    reference = torch.autograd.gradcheck(
        loaded.obj.apply,
        leaves,
        check_forward_ad=True,
        check_backward_ad=False,
        check_undefined_grad=False,
        check_batched_grad=False,
        raise_exception=False,
    )
    assert reference is ok
    assert check_file(spec(FORWARD_MODE / "forward_mode.py", name), forward_mode=True).passed is ok

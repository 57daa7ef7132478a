"""--second-order: the backward's own derivative, for Functions and models.

Independent reference: torch.autograd.gradgradcheck in float64.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    SECOND_ORDER,
    check_cli,
    check_file,
    failing,
    spec,
)
from models import (
    as_float64_leaves,
    module_function,
)

from gradcheck_tool.loading import load_target


def test_detached_double_backward_fails_only_with_second_order(tmp_path):
    first = check_cli(tmp_path, spec(SECOND_ORDER / "double_backward.py", "Detached"))
    assert first.code == 0, first.output
    assert [r["name"] for r in first.report["results"]] == ["x", "w"]

    second = check_cli(
        tmp_path, spec(SECOND_ORDER / "double_backward.py", "Detached"), "--second-order"
    )
    assert second.code == 1, second.output
    names = [r["name"] for r in second.report["results"]]
    assert names == ["x", "w", "x (2nd order)", "w (2nd order)"]
    assert second.result("x")["passed"] and second.result("w")["passed"]
    for name in ("x (2nd order)", "w (2nd order)"):
        result = second.result(name)
        assert not result["passed"] and result["rating"] == "bug"
        assert "detached" in result["note"]
        assert second.table_cell(name, "result") == "FAIL"
    assert "FAIL: 2 of 4 gradient(s) wrong: x (2nd order), w (2nd order)" in second.output


def test_correct_double_backward_passes_with_and_without_second_order(tmp_path):
    first = check_cli(tmp_path, spec(SECOND_ORDER / "double_backward.py", "Correct"))
    second = check_cli(
        tmp_path, spec(SECOND_ORDER / "double_backward.py", "Correct"), "--second-order"
    )
    assert first.code == 0 and second.code == 0, second.output
    assert [r["name"] for r in second.report["results"]] == [
        "x",
        "w",
        "x (2nd order)",
        "w (2nd order)",
    ]
    assert all(r["passed"] and r["rating"] == "excellent" for r in second.report["results"])


@pytest.mark.parametrize("name, ok", [("Correct", True), ("Detached", False)])
def test_gradgradcheck_agrees_on_the_functions(name, ok):
    loaded = load_target(spec(SECOND_ORDER / "double_backward.py", name))
    leaves = as_float64_leaves(loaded.example_inputs)
    assert torch.autograd.gradcheck(loaded.obj.apply, leaves, raise_exception=False)
    assert torch.autograd.gradgradcheck(loaded.obj.apply, leaves, raise_exception=False) is ok
    report = check_file(spec(SECOND_ORDER / "double_backward.py", name), second_order=True)
    assert report.passed is ok


@pytest.mark.parametrize("name, ok", [("Net", True), ("DetachedNet", False)])
def test_second_order_of_a_model_agrees_with_gradgradcheck(name, ok):
    loaded = load_target(spec(SECOND_ORDER / "double_backward_model.py", name))
    report = check_file(spec(SECOND_ORDER / "double_backward_model.py", name), second_order=True)
    first = [r for r in report.results if not r.name.endswith("(2nd order)")]
    second = [r for r in report.results if r.name.endswith("(2nd order)")]
    assert all(r.passed for r in first)  # the first-order backward is right either way
    assert [r.name for r in second] == [f"{r.name} (2nd order)" for r in first]
    assert report.passed is ok
    if not ok:
        assert "fc1.weight (2nd order)" in failing(report)
        assert "fc2.weight (2nd order)" not in failing(report)  # fc2 sits after the bug

    f, _ = module_function(loaded.obj)
    leaves = as_float64_leaves((loaded.example_inputs, *loaded.obj.parameters()))
    assert torch.autograd.gradgradcheck(f, leaves, raise_exception=False) is ok

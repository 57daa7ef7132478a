"""Kinks: ReLU, abs, clamp and max-pool ties evaluated exactly at a point where they are not
differentiable. A correct model there passes with the kinks counted (where
torch.autograd.gradcheck fails it); a wrong backward there still fails.

Independent references: torch.autograd.gradcheck in float64, and counts derived from where
the fixture's pre-activations are 0.
"""

from __future__ import annotations

import torch
from conftest import (
    KINKS,
    check_cli,
    check_file,
    spec,
)
from models import (
    torch_gradcheck_module,
)
from torch import nn

from gradcheck_tool import check
from gradcheck_tool.loading import load_target


def relu_net_expected_kinks(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Coordinates whose ±h move pushes a pre-activation that is exactly 0 across the kink."""
    with torch.no_grad():
        at_zero = model.fc1(x) == 0  # (batch, hidden)
    weight = model.fc1.weight.detach()
    return {
        # W1[i, j] moves z[b, i] by h·x[b, j]
        "fc1.weight": int((at_zero.T.double() @ (x != 0).double() > 0).sum()),
        # b1[i] moves z[b, i] for every b
        "fc1.bias": int(at_zero.any(0).sum()),
        # x[b, j] moves z[b, i] by h·W1[i, j]
        "input:x": int((at_zero.double() @ (weight != 0).double() > 0).sum()),
        "fc2.weight": 0,
        "fc2.bias": 0,
    }


def test_relu_fixture_really_sits_on_the_kink():
    loaded = load_target(spec(KINKS / "relu_at_zero.py", "Net"))
    z = loaded.obj.fc1(loaded.example_inputs)
    assert int((z == 0).sum()) >= 4  # several hidden units exactly at 0.0 ...
    assert int((z.double() == 0).sum()) == int((z == 0).sum())  # ... in float64 as well


def test_relu_network_at_zero_passes_with_kinks_counted_in_json_and_table(tmp_path):
    run = check_cli(tmp_path, spec(KINKS / "relu_at_zero.py", "Net"))
    assert run.code == 0, run.output
    assert run.report["passed"] is True
    loaded = load_target(spec(KINKS / "relu_at_zero.py", "Net"))
    expected = relu_net_expected_kinks(loaded.obj, loaded.example_inputs)
    assert {r["name"]: r["kinks"] for r in run.report["results"]} == expected
    assert sum(expected.values()) > 0
    for r in run.report["results"]:
        assert r["passed"] and r["hint"] is None and r["rating"] == "excellent"
    # the table shows the count in its kinks column, and the verdict sums them up
    for name, n in expected.items():
        assert run.table_cell(name, "kinks") == (str(n) if n else ""), name
    assert f"{sum(expected.values())} kink(s) skipped" in run.output


def test_torch_gradcheck_fails_the_same_correct_relu_network():
    # The reason kinks exist: torch's own checker rejects this correct network in float64.
    loaded = load_target(spec(KINKS / "relu_at_zero.py", "Net"))
    assert not torch_gradcheck_module(loaded.obj, loaded.example_inputs)


def test_relu_network_at_zero_with_a_sign_flipped_backward_still_fails(tmp_path):
    run = check_cli(tmp_path, spec(KINKS / "relu_at_zero.py", "BuggyNet"))
    assert run.code == 1, run.output
    # the flipped ReLU backward corrupts everything upstream of it, nothing downstream
    assert {r["name"] for r in run.report["results"] if not r["passed"]} == {
        "fc1.weight",
        "fc1.bias",
        "input:x",
    }
    assert run.result("fc2.weight")["passed"] and run.result("fc2.bias")["passed"]
    for name in ("fc1.weight", "fc1.bias", "input:x"):
        assert run.result(name)["rating"] == "bug"
        assert run.table_cell(name, "result") == "FAIL"


def test_abs_and_clamp_at_their_corners_pass_with_kinks(tmp_path):
    loaded = load_target(spec(KINKS / "abs_clamp_at_zero.py", "AbsClamp"))
    z = loaded.obj.fc(loaded.example_inputs)
    assert int((z[:, :2] == 0).sum()) == 2 and int((z[:, 2:] == 0).sum()) == 1  # abs, clamp
    assert int((z[:, 2:] == 1).sum()) == 1  # clamp's upper corner
    run = check_cli(tmp_path, spec(KINKS / "abs_clamp_at_zero.py", "AbsClamp"))
    assert run.code == 0, run.output
    kinks = {r["name"]: r["kinks"] for r in run.report["results"]}
    assert kinks["fc.weight"] > 0 and kinks["fc.bias"] > 0 and kinks["input:x"] > 0
    assert kinks["head.weight"] == 0 and kinks["head.bias"] == 0  # downstream: smooth
    assert run.table_cell("fc.weight", "kinks") == str(kinks["fc.weight"])
    assert all(r["hint"] is None for r in run.report["results"])
    assert not torch_gradcheck_module(loaded.obj, loaded.example_inputs)


def test_abs_and_clamp_with_a_wrong_abs_backward_still_fail(tmp_path):
    run = check_cli(tmp_path, spec(KINKS / "abs_clamp_at_zero.py", "BuggyAbsClamp"))
    assert run.code == 1, run.output
    assert {r["name"] for r in run.report["results"] if not r["passed"]} == {
        "fc.weight",
        "fc.bias",
        "input:x",
    }


def test_max_pool_ties_pass_where_gradcheck_fails():
    x = torch.tensor([[[1.0, 1.0, 2.0, 2.0, -1.0, -1.0, 0.25, 0.25]]])  # every window a tie
    torch.manual_seed(0)
    model = nn.Sequential(nn.MaxPool1d(2), nn.Flatten(), nn.Linear(4, 2))
    report = check(model, x)
    assert report.passed, report.results
    assert report.result("input:input").kinks == 8  # both members of each of the 4 ties
    reference = model.double()
    leaf = x.double().requires_grad_(True)
    assert not torch.autograd.gradcheck(reference, (leaf,), raise_exception=False)


def test_kinks_are_found_the_same_way_without_vmap():
    batched = check_file(spec(KINKS / "relu_at_zero.py", "Net"))
    serial = check_file(spec(KINKS / "relu_at_zero.py", "Net"), batched=False)
    assert batched.evaluation == "batched" and serial.evaluation == "serial"
    assert serial.passed
    assert [r.kinks for r in serial.results] == [r.kinks for r in batched.results]


def test_relu_network_with_a_zero_input_row_passes():
    # A padded batch: one input row is all zeros and the first layer's bias is 0, so every
    # hidden pre-activation of that sample is exactly 0. The network is correct.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].bias.zero_()
    x = torch.randn(3, 4)
    x[1] = 0.0
    report = check(model, x)
    assert report.result("input:input").kinks > 0
    assert report.passed, [(r.name, r.rel_error, r.worst[:1]) for r in report.failures]


def test_relu_network_with_a_zero_initialized_first_layer_passes():
    # Zero weights and bias: every hidden pre-activation is exactly 0, torch's ReLU gradient
    # there is 0, so fc1's analytic gradient is all zeros, a valid subgradient at every kink.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    report = check(model, torch.randn(5, 3))
    assert report.result("0.weight").kinks > 0
    assert report.passed, [(r.name, r.note) for r in report.failures]


def test_second_order_at_an_abs_corner_is_not_called_a_bug(tmp_path):
    run = check_cli(tmp_path, spec(KINKS / "abs_clamp_at_zero.py", "AbsClamp"), "--second-order")
    assert run.code == 0, run.output

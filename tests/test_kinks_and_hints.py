"""Issue #4: what `gradtool check` does beyond torch.autograd.gradcheck.

Kinks, second order, bug-pattern hints, the step-size sweep, nondeterminism, float32 mode,
forward mode, Ctrl-C and the serial (non-vmap) fallback. The user-like files live in
fixtures/, a folder per topic. Independent references: torch.autograd.gradcheck / gradgradcheck in
float64, and, for kinks, counts derived from where the fixture's pre-activations are 0.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import (
    EVALUATION,
    FORWARD_MODE,
    HINTS,
    INTERRUPT,
    KINKS,
    RANDOMNESS,
    SECOND_ORDER,
    SWEEP,
    check_file,
    failing,
)
from torch import nn
from typer.testing import CliRunner

from gradcheck_tool import check
from gradcheck_tool.cli import app
from gradcheck_tool.engines.check import Interrupted
from gradcheck_tool.engines.check.numerics import SWEEP_STEPS
from gradcheck_tool.loading import load_target

# --- helpers ------------------------------------------------------------------------------


class Cli:
    """One in-process `gradtool check` run: exit code, the printed table, the JSON report."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        json_path = tmp_path / "report.json"
        # a fixed width: the table is parsed, and the caller's COLUMNS must not wrap it
        result = CliRunner().invoke(
            app, ["check", *args, "--json", str(json_path)], env={"COLUMNS": "200"}
        )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        self.code = result.exit_code
        self.output = result.output
        self.report = json.loads(json_path.read_text()) if json_path.exists() else None

    def result(self, name: str) -> dict:
        found = [r for r in self.report["results"] if r["name"] == name]
        assert found, (name, [r["name"] for r in self.report["results"]])
        return found[0]

    def table_cell(self, name: str, column: str) -> str:
        """The text in the tensor's row under the header `column`, wrapped lines joined."""
        lines = self.output.splitlines()
        header = next(ln for ln in lines if ln.startswith("┃tensor"))
        index = [c.strip() for c in header.split("┃")].index(column)
        starts = [i for i, ln in enumerate(lines) if re.match(rf"^│{re.escape(name)}\s+│", ln)]
        assert len(starts) == 1, (name, self.output)
        pieces = [lines[starts[0]].split("│")[index].strip()]
        for line in lines[starts[0] + 1 :]:
            cells = line.split("│")
            if len(cells) < 3 or cells[1].strip():  # a border, or the next tensor's row
                break
            pieces.append(cells[index].strip())
        return " ".join(p for p in pieces if p)


def cli(tmp_path: Path, *args: str) -> Cli:
    return Cli(tmp_path, *[str(a) for a in args])


def spec(path: Path, name: str | None = None) -> str:
    return f"{path}:{name}" if name else str(path)


def module_function(model: nn.Module):
    """(f, names): f(x, *params) = model(x) with the parameters as explicit float64 inputs."""
    model = model.double()
    names = [n for n, _ in model.named_parameters()]

    def f(x, *params):
        return torch.func.functional_call(model, dict(zip(names, params)), (x,))

    return f, names


def torch_gradcheck_module(model: nn.Module, x: torch.Tensor) -> bool:
    f, _ = module_function(model)
    leaves = [x.double().requires_grad_(True)] + [
        p.detach().double().clone().requires_grad_(True) for p in model.parameters()
    ]
    return torch.autograd.gradcheck(f, leaves, raise_exception=False)


def as_float64_leaves(inputs: tuple) -> list[torch.Tensor]:
    return [t.detach().double().clone().requires_grad_(True) for t in inputs]


# --- kinks --------------------------------------------------------------------------------


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
    run = cli(tmp_path, spec(KINKS / "relu_at_zero.py", "Net"))
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
    run = cli(tmp_path, spec(KINKS / "relu_at_zero.py", "BuggyNet"))
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
    run = cli(tmp_path, spec(KINKS / "abs_clamp_at_zero.py", "AbsClamp"))
    assert run.code == 0, run.output
    kinks = {r["name"]: r["kinks"] for r in run.report["results"]}
    assert kinks["fc.weight"] > 0 and kinks["fc.bias"] > 0 and kinks["input:x"] > 0
    assert kinks["head.weight"] == 0 and kinks["head.bias"] == 0  # downstream: smooth
    assert run.table_cell("fc.weight", "kinks") == str(kinks["fc.weight"])
    assert all(r["hint"] is None for r in run.report["results"])
    assert not torch_gradcheck_module(loaded.obj, loaded.example_inputs)


def test_abs_and_clamp_with_a_wrong_abs_backward_still_fail(tmp_path):
    run = cli(tmp_path, spec(KINKS / "abs_clamp_at_zero.py", "BuggyAbsClamp"))
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
    run = cli(tmp_path, spec(KINKS / "abs_clamp_at_zero.py", "AbsClamp"), "--second-order")
    assert run.code == 0, run.output


# --- second order -------------------------------------------------------------------------


def test_detached_double_backward_fails_only_with_second_order(tmp_path):
    first = cli(tmp_path, spec(SECOND_ORDER / "double_backward.py", "Detached"))
    assert first.code == 0, first.output
    assert [r["name"] for r in first.report["results"]] == ["x", "w"]

    second = cli(tmp_path, spec(SECOND_ORDER / "double_backward.py", "Detached"), "--second-order")
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
    first = cli(tmp_path, spec(SECOND_ORDER / "double_backward.py", "Correct"))
    second = cli(tmp_path, spec(SECOND_ORDER / "double_backward.py", "Correct"), "--second-order")
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


# --- bug-pattern hints --------------------------------------------------------------------

# seeded Function -> (the one tensor it breaks, words its hint must contain)
PATTERNS = {
    "SignFlipped": ("x", ["sign flipped"]),
    "FactorHalf": ("x", ["constant factor", "0.5 ×"]),
    "WeightGradMissing": ("weight", ["gradient missing"]),
    "IgnoresGradOutput": ("x", ["upstream gradient ignored"]),
    "WeightTransposed": ("weight", ["transposed"]),
    "RowsWrong": ("weight", ["only part of the tensor is wrong", "rows 1–2 of 4"]),
    "BiasAveraged": ("bias", ["batch reduction wrong", "numeric / 6"]),
    "BiasTimesBatch": ("bias", ["batch reduction wrong", "numeric × 6"]),
}


def torch_reference_failures(fn: type, inputs: tuple) -> set[str]:
    """Which inputs torch.autograd.gradcheck (float64, one input at a time) rejects."""
    bad = set()
    for i, name in enumerate(["x", "weight", "bias"]):
        xs = [t.detach().double().clone().requires_grad_(j == i) for j, t in enumerate(inputs)]
        if not torch.autograd.gradcheck(fn.apply, xs, raise_exception=False):
            bad.add(name)
    return bad


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_each_bug_pattern_gets_its_hint_in_json_and_table(tmp_path, pattern):
    tensor, words = PATTERNS[pattern]
    loaded = load_target(f"{HINTS}:{pattern}")
    assert torch_reference_failures(loaded.obj, loaded.example_inputs) == {tensor}

    run = cli(tmp_path, f"{HINTS}:{pattern}")
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
        (spec(KINKS / "abs_clamp_at_zero.py", "AbsClamp"), False),  # 2nd order: engine bug #4
        (spec(RANDOMNESS / "private_generator.py", "GlobalDropout"), True),
        (spec(SECOND_ORDER / "double_backward_model.py", "Net"), True),
    ],
)
def test_correct_models_get_no_hint_anywhere(tmp_path, target, second_order):
    run = cli(tmp_path, target, "--sweep", *(["--second-order"] if second_order else []))
    assert run.code == 0, run.output
    assert run.report["results"]
    assert all(r["passed"] and r["hint"] is None for r in run.report["results"])
    assert "hint:" not in run.output


# --- step-size sweep ----------------------------------------------------------------------


def test_a_failing_tensor_gets_a_sweep_that_calls_it_a_real_bug(tmp_path):
    run = cli(tmp_path, f"{HINTS}:SignFlipped")
    assert run.code == 1
    x = run.result("x")
    assert [p["eps"] for p in x["sweep"]] == list(SWEEP_STEPS)
    assert all(abs(p["rel_error"] - 1.0) < 1e-3 for p in x["sweep"])  # a = −n at every h
    assert x["sweep_verdict"].startswith("stable mismatch")
    assert x["sweep_verdict"].endswith("a real bug")
    for name in ("weight", "bias"):  # passing tensors are not swept without --sweep
        assert "sweep" not in run.result(name)
    assert "step-size sweep of x" in run.output
    assert "step-size sweep of weight" not in run.output


def test_sweep_flag_sweeps_every_tensor(tmp_path):
    run = cli(tmp_path, spec(KINKS / "relu_at_zero.py", "Net"), "--sweep")
    assert run.code == 0, run.output
    for r in run.report["results"]:
        assert [p["eps"] for p in r["sweep"]] == list(SWEEP_STEPS), r["name"]
        assert r["sweep_verdict"] and "bug" not in r["sweep_verdict"]
        assert f"step-size sweep of {r['name']}:" in run.output


def test_tiny_step_on_a_correct_function_is_not_called_a_bug(tmp_path):
    run = cli(tmp_path, f"{HINTS}:Correct", "--eps", "1e-12")
    assert run.code == 0, run.output
    for r in run.report["results"]:
        assert r["passed"] and r["rating"] != "bug" and r["hint"] is None


def test_tiny_step_still_fails_a_real_bug(tmp_path):
    run = cli(tmp_path, f"{HINTS}:SignFlipped", "--eps", "1e-12")
    assert run.code == 1, run.output
    assert run.result("x")["sweep_verdict"].endswith("a real bug")
    assert run.result("x")["hint"].startswith("sign flipped")


def test_round_off_is_classified_and_the_correct_function_passes(tmp_path):
    # E[(x+c)²] − E[x+c]² cancels catastrophically: round-off swamps small steps.
    run = cli(tmp_path, spec(SWEEP / "step_size.py", "naive_variance"))
    assert run.code == 0, run.output
    x = run.result("x")
    assert x["passed"] and x["hint"] is None
    assert x["sweep_verdict"].startswith("round-off error")
    errors = [p["rel_error"] for p in x["sweep"]]
    assert errors[-1] > 100 * errors[0]  # grows as h shrinks
    assert "round-off" in x["note"]


def test_truncation_is_classified_and_the_correct_function_passes(tmp_path):
    run = cli(tmp_path, spec(SWEEP / "step_size.py", "wave"), "--eps", "1e-2")
    assert run.code == 0, run.output
    x = run.result("x")
    assert x["passed"] and x["kinks"] == 0 and x["hint"] is None
    assert x["sweep_verdict"].startswith("truncation error")
    errors = [p["rel_error"] for p in x["sweep"]]
    assert errors[0] > 1e-4 > 100 * errors[2]  # shrinks (as h²) as h shrinks
    assert "truncation" in x["note"]


def test_truncation_of_a_curved_function_is_not_mistaken_for_kinks():
    report = check_file(spec(SWEEP / "step_size.py", "curved"), eps=1e-2)
    x = report.result("x")
    assert x.kinks == 0  # sin(5x)·exp(x) has no non-differentiable point
    assert x.sweep_verdict is not None and x.sweep_verdict.startswith("truncation")


# --- nondeterminism -----------------------------------------------------------------------


def test_private_generator_is_reported_as_nondeterministic_not_as_a_bug(tmp_path):
    run = cli(tmp_path, spec(RANDOMNESS / "private_generator.py", "PrivateDropout"))
    assert run.code != 0  # not verified ...
    report = run.report
    assert report["nondeterministic"] is True
    assert report["noise"] > 0
    warnings = " ".join(report["warnings"])
    assert "nondeterministic" in warnings and "generator" in warnings
    assert f"{report['noise']:.3g}" in warnings  # the noise, against the FD signal
    assert "finite-difference units" in warnings
    for r in report["results"]:  # ... but not judged a gradient bug either
        assert r["rating"] != "bug" and r["hint"] is None and not r["worst"]
        assert "nondeterministic" in r["note"]
    assert "NOT JUDGED" in run.output
    assert "gradient(s) wrong" not in run.output


def test_the_same_dropout_from_the_global_rng_passes(tmp_path):
    run = cli(tmp_path, spec(RANDOMNESS / "private_generator.py", "GlobalDropout"))
    assert run.code == 0, run.output
    assert run.report["nondeterministic"] is False
    assert not any("nondetermin" in w for w in run.report["warnings"])
    assert all(r["rating"] == "excellent" for r in run.report["results"])


# --- float32 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", [f"{HINTS}:Correct", spec(RANDOMNESS / "private_generator.py", "GlobalDropout")]
)
def test_float32_check_passes_a_correct_model_with_a_warning(tmp_path, target):
    run = cli(tmp_path, target, "--dtype", "float32")
    assert run.code == 0, run.output
    assert run.report["dtype"] == "float32"
    assert run.report["eps"] == pytest.approx(1e-3) and run.report["tolerance"] == 1e-2
    assert any("float32" in w and "weaker" in w for w in run.report["warnings"])
    assert "much weaker" in " ".join(run.output.split())


@pytest.mark.parametrize("pattern", ["SignFlipped", "FactorHalf", "WeightTransposed"])
def test_float32_check_still_fails_a_clear_bug(tmp_path, pattern):
    tensor, words = PATTERNS[pattern]
    run = cli(tmp_path, f"{HINTS}:{pattern}", "--dtype", "float32")
    assert run.code == 1, run.output
    assert [r["name"] for r in run.report["results"] if not r["passed"]] == [tensor]
    assert run.result(tensor)["hint"].startswith(words[0])


# --- forward mode -------------------------------------------------------------------------


def test_correct_jvp_passes_forward_mode(tmp_path):
    run = cli(tmp_path, spec(FORWARD_MODE / "forward_mode.py", "Correct"), "--forward-mode")
    assert run.code == 0, run.output
    assert [r["name"] for r in run.report["results"]] == ["x", "y"]
    assert all(r["rating"] == "excellent" for r in run.report["results"])


def test_wrong_jvp_fails_forward_mode_only(tmp_path):
    backward = cli(tmp_path, spec(FORWARD_MODE / "forward_mode.py", "WrongJvp"))
    assert backward.code == 0, backward.output  # its backward is right
    forward = cli(tmp_path, spec(FORWARD_MODE / "forward_mode.py", "WrongJvp"), "--forward-mode")
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


# --- Ctrl-C -------------------------------------------------------------------------------


def test_ctrl_c_in_the_cli_gives_a_partial_report_and_exit_130(tmp_path):
    run = cli(tmp_path, spec(INTERRUPT / "interrupt_midway.py"))
    assert run.code == 130, run.output
    assert "INTERRUPTED: partial report, 2 result(s) before Ctrl-C" in run.output
    report = run.report  # the JSON is still written
    assert report["interrupted"] is True and report["passed"] is False
    # the parameters were finished before Ctrl-C came, while input:x was being perturbed
    assert [r["name"] for r in report["results"]] == ["fc.weight", "fc.bias"]
    assert all(r["passed"] for r in report["results"])
    assert run.table_cell("fc.bias", "result") == "pass"


def test_ctrl_c_through_the_api_raises_interrupted_with_the_partial_report():
    loaded = load_target(spec(INTERRUPT / "interrupt_midway.py"))
    dtype_before = torch.get_default_dtype()
    rng_before = torch.get_rng_state()
    with pytest.raises(Interrupted) as stop:
        check(loaded.obj, loaded.example_inputs)
    report = stop.value.report
    assert report.interrupted and not report.passed
    assert [r.name for r in report.results] == ["fc.weight", "fc.bias"]  # not input:x
    assert all(r.passed for r in report.results)
    assert torch.get_default_dtype() == dtype_before  # the user's state is restored
    assert torch.equal(torch.get_rng_state(), rng_before)


# --- serial fallback ----------------------------------------------------------------------


def test_vmap_friendly_model_is_evaluated_batched():
    report = check_file(spec(EVALUATION / "serial_fallback.py", "Batchable"))
    assert report.passed
    assert report.evaluation == "batched" and report.fallback_reason is None


@pytest.mark.parametrize("name, why", [("NanGuard", ".item()"), ("Branchy", "control flow")])
def test_model_vmap_cannot_run_falls_back_to_serial_and_passes(name, why):
    report = check_file(spec(EVALUATION / "serial_fallback.py", name))
    assert report.evaluation == "serial"
    assert report.fallback_reason and "vmap" in report.fallback_reason
    assert why in report.fallback_reason
    assert report.passed, report.failures
    loaded = load_target(spec(EVALUATION / "serial_fallback.py", name))
    assert torch_gradcheck_module(loaded.obj, loaded.example_inputs)  # the reference agrees


def test_batched_and_serial_evaluation_agree_on_a_vmap_friendly_model():
    batched = check_file(spec(EVALUATION / "serial_fallback.py", "Batchable"))
    serial = check_file(spec(EVALUATION / "serial_fallback.py", "Batchable"), batched=False)
    assert serial.evaluation == "serial" and "--serial" in serial.fallback_reason
    assert [r.name for r in serial.results] == [r.name for r in batched.results]
    for b, s in zip(batched.results, serial.results):
        assert b.passed and s.passed
        assert abs(b.rel_error - s.rel_error) < 1e-8


def test_seeded_bug_in_a_model_vmap_cannot_run_still_fails():
    report = check_file(spec(EVALUATION / "serial_fallback.py", "BuggyNanGuard"))
    assert report.evaluation == "serial" and report.fallback_reason
    assert failing(report) == {"fc1.weight", "fc1.bias", "input:x"}  # upstream of the hook
    for name in failing(report):
        result = report.result(name)
        assert result.rating == "bug"
        assert result.hint.startswith("constant factor") and "2 ×" in result.hint
    assert report.result("fc2.weight").passed and report.result("fc2.bias").passed
    loaded = load_target(spec(EVALUATION / "serial_fallback.py", "BuggyNanGuard"))
    assert not torch_gradcheck_module(loaded.obj, loaded.example_inputs)


def test_serial_fallback_in_the_cli_says_why(tmp_path):
    run = cli(tmp_path, spec(EVALUATION / "serial_fallback.py", "NanGuard"))
    assert run.code == 0, run.output
    assert run.report["evaluation"] == "serial"
    assert "vmap" in run.report["fallback_reason"]
    assert "evaluated one point at a time: vmap could not run the model" in run.output

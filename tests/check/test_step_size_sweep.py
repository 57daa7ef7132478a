"""The step-size sweep: a failing tensor is checked again at several steps, and how its error
changes with the step tells a real bug from round-off and truncation error; --sweep sweeps
every tensor. (classify_sweep() on hand-worked values: unit/test_numerics.py.)
"""

from __future__ import annotations

import re

from conftest import (
    HINTS,
    KINKS,
    SWEEP,
    check_cli,
    check_file,
    invoke_cli,
    spec,
)

from gradcheck_tool.engines.check.numerics import SWEEP_STEPS


def test_a_failing_tensor_gets_a_sweep_that_calls_it_a_real_bug(tmp_path):
    run = check_cli(tmp_path, f"{HINTS}:SignFlipped")
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
    run = check_cli(tmp_path, spec(KINKS / "relu_at_zero.py", "Net"), "--sweep")
    assert run.code == 0, run.output
    for r in run.report["results"]:
        assert [p["eps"] for p in r["sweep"]] == list(SWEEP_STEPS), r["name"]
        assert r["sweep_verdict"] and "bug" not in r["sweep_verdict"]
        assert f"step-size sweep of {r['name']}:" in run.output


def test_tiny_step_on_a_correct_function_is_not_called_a_bug(tmp_path):
    run = check_cli(tmp_path, f"{HINTS}:Correct", "--eps", "1e-12")
    assert run.code == 0, run.output
    for r in run.report["results"]:
        assert r["passed"] and r["rating"] != "bug" and r["hint"] is None


def test_tiny_step_still_fails_a_real_bug(tmp_path):
    run = check_cli(tmp_path, f"{HINTS}:SignFlipped", "--eps", "1e-12")
    assert run.code == 1, run.output
    assert run.result("x")["sweep_verdict"].endswith("a real bug")
    assert run.result("x")["hint"].startswith("sign flipped")


def test_round_off_is_classified_and_the_correct_function_passes(tmp_path):
    # E[(x+c)²] − E[x+c]² cancels catastrophically: round-off swamps small steps.
    run = check_cli(tmp_path, spec(SWEEP / "step_size.py", "naive_variance"))
    assert run.code == 0, run.output
    x = run.result("x")
    assert x["passed"] and x["hint"] is None
    assert x["sweep_verdict"].startswith("round-off error")
    errors = [p["rel_error"] for p in x["sweep"]]
    assert errors[-1] > 100 * errors[0]  # grows as h shrinks
    assert "round-off" in x["note"]


def test_truncation_is_classified_and_the_correct_function_passes(tmp_path):
    run = check_cli(tmp_path, spec(SWEEP / "step_size.py", "wave"), "--eps", "1e-2")
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


# --- the sweep must not pass a bug beyond the first 64 coordinates ---------------------------


def test_sweep_does_not_pass_a_bug_after_coordinate_64():
    report = check_file(f"{SWEEP / 'sweep_bug_after_64.py'}:SteepExp")
    (x,) = report.results
    assert x.checked == 128
    assert not x.passed and not report.passed, x
    assert x.rating == "bug"
    assert re.search(r"100\D{1,3}127", x.hint or ""), x.hint  # names entries 100–127


def test_sweep_bug_after_coordinate_64_fails_the_cli():
    result = invoke_cli("check", f"{SWEEP / 'sweep_bug_after_64.py'}:SteepExp")
    assert result.code == 1, result.output
    assert "FAIL" in result.stdout

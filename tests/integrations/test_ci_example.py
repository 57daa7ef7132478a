"""examples/ci/, the sample project of the README's CI section, gives the verdicts it promises:
its pyproject.toml parses and names targets that exist; each check target, run with its own
options, passes or fails exactly as configured (only `k` of the attention, whose backward
misses the 1/√d factor); torch.autograd.gradcheck, an independent reference, agrees tensor by
tensor; the flow target passes with its `fail_on`, which a broken model does fail.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, SAMPLES, invoke_cli

import gradcheck_tool
from gradcheck_tool.config import tomllib  # tomli before Python 3.11

EXAMPLE = REPO / "examples" / "ci"

# What the sample project promises: target -> the tensors that fail (every other one passes).
EXPECTED_CHECK = {
    "ops/activations.py:TanhGELU": set(),
    "ops/linear.py:FusedLinear": set(),
    "ops/attention.py:FusedAttention": {"k"},
}
EXPECTED_FLOW = {"models/net.py": 0}

# Option keys a target may carry (the Python names of the CLI options, issue #13's interface).
CHECK_KEYS = {
    "tolerance", "eps", "full", "samples", "budget", "second_order", "sweep", "forward_mode",
    "dtype", "device", "serial", "skip", "wrt", "seed", "input_shape", "input_dtype", "weights",
}  # fmt: skip
FLOW_KEYS = {
    "steps", "lr", "optimizer", "plot", "fail_on", "device", "seed", "input_shape",
    "input_dtype", "weights",
}  # fmt: skip
RUN_KEYS = {"format", "junit", "json", "timeout"}


def _tool() -> dict[str, Any]:
    return tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["tool"]["gradtool"]


def _defaults() -> dict[str, Any]:
    return {k: v for k, v in _tool().items() if k not in ("check", "flow")}


def _targets(command: str) -> dict[str, dict[str, Any]]:
    """target -> its options, the [tool.gradtool] defaults merged under the target's keys."""
    found = {}
    for entry in _tool()[command]:
        options = {**_defaults(), **entry}
        found[options.pop("target")] = options
    return found


def _flags(options: dict[str, Any], allowed: set[str]) -> list[str]:
    """The command line a user would type for these options (today's CLI, TARGET given)."""
    flags: list[str] = []
    for key, value in options.items():
        if key not in allowed:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            continue
        elif key == "fail_on":
            flags += [flag, ",".join(value)]
        elif isinstance(value, list):
            for item in value:
                flags += [flag, str(item)]
        else:
            flags += [flag, str(value)]
    return flags


def _import(path: Path) -> types.ModuleType:
    """The sample's file, imported directly (not through gradtool's loader) for the reference."""
    spec = importlib.util.spec_from_file_location(f"_ci_example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pyproject_parses_and_configures_three_checks_and_one_flow():
    tool = _tool()
    assert set(_defaults()) <= CHECK_KEYS | FLOW_KEYS | RUN_KEYS
    assert set(_targets("check")) == set(EXPECTED_CHECK)
    assert set(_targets("flow")) == set(EXPECTED_FLOW)
    for entry in tool["check"]:
        assert set(entry) - {"target"} <= CHECK_KEYS, entry
    for entry in tool["flow"]:
        assert set(entry) - {"target"} <= FLOW_KEYS, entry
    # per-target options as in the example, and exactly one wrong target
    assert _targets("check")["ops/activations.py:TanhGELU"]["second_order"] is True
    assert _targets("check")["ops/attention.py:FusedAttention"]["skip"] == ["mask"]
    assert sum(bool(failing) for failing in EXPECTED_CHECK.values()) == 1


@pytest.mark.parametrize("target", [*EXPECTED_CHECK, *EXPECTED_FLOW])
def test_each_target_names_a_file_and_a_top_level_name_that_exist(target):
    path, _, name = target.partition(":")
    file = EXAMPLE / path
    assert file.is_file(), file
    tree = ast.parse(file.read_text())
    defined = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    assert "example_inputs" in defined  # gradtool's loader builds the inputs from it
    if name:
        assert name in defined, (name, defined)
    else:
        assert "build_model" in defined


@pytest.mark.parametrize("target", list(EXPECTED_CHECK))
def test_check_target_with_its_options_fails_exactly_the_seeded_tensor(target, tmp_path):
    options = _targets("check")[target]
    report_path = tmp_path / "report.json"
    flags = _flags(options, CHECK_KEYS)
    result = invoke_cli("check", f"{EXAMPLE}/{target}", *flags, "--json", report_path)
    report = json.loads(report_path.read_text())
    failing = {r["name"] for r in report["results"] if not r["passed"]}
    assert failing == EXPECTED_CHECK[target], result.output
    assert result.code == (1 if failing else 0), result.output
    assert report["tolerance"] == options["tolerance"]
    if options.get("second_order"):
        assert any(r["name"].endswith("(2nd order)") for r in report["results"])
    for name in options.get("skip", []):
        assert name in {u["name"] for u in report["unchecked"]}
    if failing:  # the seeded bug is a missing factor, and gradtool says so
        (wrong,) = (r for r in report["results"] if not r["passed"])
        assert "constant factor" in (wrong["hint"] or ""), wrong


def test_the_attention_target_needs_its_skip():
    """Without `skip = ["mask"]` the mask, whose gradient the backward leaves out on purpose,
    fails too: the per-target option is what makes `k` the only failure."""
    report = json.loads(
        invoke_cli("check", f"{EXAMPLE}/ops/attention.py:FusedAttention", "--json", "-").stdout
    )
    assert {r["name"] for r in report["results"] if not r["passed"]} == {"k", "mask"}


# --- torch.autograd.gradcheck as the independent reference ------------------------------------


def _gradcheck_verdicts(target: str) -> dict[str, bool]:
    """Per tensor, does torch.autograd.gradcheck (float64, every entry) pass it alone?"""
    path, _, name = target.partition(":")
    module = _import(EXAMPLE / path)
    obj = getattr(module, name)
    inputs = module.example_inputs()
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    inputs = tuple(t.double() for t in inputs)
    skip = set(_targets("check")[target].get("skip", []))
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        layer = obj().double()
        params = {k: p.detach() for k, p in layer.named_parameters()}
        tensors = {**params, **{f"input:{n}": t for n, t in zip(["x"], inputs)}}

        def call(values: dict[str, torch.Tensor]) -> torch.Tensor:
            own = {k: v for k, v in values.items() if not k.startswith("input:")}
            return torch.func.functional_call(layer, own, (values["input:x"],))
    else:
        argnames = ["x"] if len(inputs) == 1 else ["q", "k", "v", "mask"]
        tensors = dict(zip(argnames, inputs))

        def call(values: dict[str, torch.Tensor]) -> torch.Tensor:
            return obj.apply(*values.values())

    verdicts = {}
    for tensor_name in tensors:
        if tensor_name in skip:
            continue

        def of_one(t: torch.Tensor, tensor_name: str = tensor_name) -> torch.Tensor:
            return call({**tensors, tensor_name: t})

        leaf = tensors[tensor_name].clone().requires_grad_(True)
        verdicts[tensor_name] = torch.autograd.gradcheck(of_one, (leaf,), raise_exception=False)
        if _targets("check")[target].get("second_order"):
            verdicts[f"{tensor_name} (2nd order)"] = torch.autograd.gradgradcheck(
                of_one, (leaf,), raise_exception=False
            )
    return verdicts


@pytest.mark.parametrize("target", list(EXPECTED_CHECK))
def test_gradcheck_agrees_tensor_by_tensor(target, tmp_path):
    verdicts = _gradcheck_verdicts(target)
    report_path = tmp_path / "report.json"
    flags = _flags(_targets("check")[target], CHECK_KEYS)
    invoke_cli("check", f"{EXAMPLE}/{target}", *flags, "--json", report_path)
    gradtool = {r["name"]: r["passed"] for r in json.loads(report_path.read_text())["results"]}
    assert gradtool == verdicts
    assert {n for n, ok in verdicts.items() if not ok} == EXPECTED_CHECK[target]


def test_the_seeded_bug_is_exactly_the_missing_scale():
    """Against autograd through the plain forward: q and v agree, k is off by 1/√d only."""
    module = _import(EXAMPLE / "ops" / "attention.py")
    q, k, v, mask = (t.double() for t in module.example_inputs())
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    upstream = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = torch.autograd.grad(
        (module._probabilities(leaves[0], leaves[1], mask) @ leaves[2] * upstream).sum(), leaves
    )
    got = torch.autograd.grad((module.FusedAttention.apply(*leaves, mask) * upstream).sum(), leaves)
    scale = q.shape[-1] ** -0.5
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[2], expected[2])
    torch.testing.assert_close(got[1] * scale, expected[1])
    assert not torch.allclose(got[1], expected[1])


# --- flow ------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", list(EXPECTED_FLOW))
def test_flow_target_passes_its_fail_on(target, tmp_path):
    options = _targets("flow")[target]
    assert options["fail_on"], "a flow target that can never fail proves nothing"
    report_path = tmp_path / "flow.json"
    flags = _flags(options, FLOW_KEYS)
    result = invoke_cli("flow", EXAMPLE / target, *flags, "--json", report_path)
    assert result.code == EXPECTED_FLOW[target], result.output
    findings = json.loads(report_path.read_text())["findings"]
    kinds = {f["kind"] for f in findings} | {
        c["kind"] for f in findings for c in f.get("consequences", [])
    }
    assert not kinds & set(options["fail_on"]), kinds


def test_the_flow_targets_fail_on_does_fail_a_broken_model():
    """The same `fail_on` on a model whose gradients explode: exit 1 (the option bites)."""
    (options,) = _targets("flow").values()
    flags = _flags({"fail_on": options["fail_on"]}, FLOW_KEYS)
    result = invoke_cli("flow", SAMPLES / "exploding_linear.py", *flags)
    assert result.code == 1, result.output
    assert "exploding" in result.output


# --- as configured: `gradtool check` / `gradtool flow` without TARGET, in examples/ci ---------

# the package's own folder, not find_spec: an editable install elsewhere can answer for it
PACKAGE = Path(gradcheck_tool.__file__).parent
needs_config = pytest.mark.skipif(
    not (PACKAGE / "config.py").is_file(),
    reason="needs [tool.gradtool] targets (issue #13's configured run)",
)


@needs_config
@pytest.mark.parametrize("command", ["check", "flow"])
def test_the_configured_run_gives_each_targets_verdict(command, tmp_path, monkeypatch):
    monkeypatch.chdir(EXAMPLE)
    report_path = tmp_path / "runs.json"
    result = invoke_cli(command, "--json", report_path)
    written = json.loads(report_path.read_text())
    # several targets: an envelope of runs; one target: its report, as with TARGET given
    runs = written.get("runs") or [
        {"target": written["target"], "exit_code": result.code, "report": written}
    ]
    expected = EXPECTED_CHECK if command == "check" else EXPECTED_FLOW
    assert [r["target"] for r in runs] == list(expected)
    for run in runs:
        if command == "check":
            results = run["report"]["results"]
            failing = {r["name"] for r in results if not r["passed"]}
            assert failing == EXPECTED_CHECK[run["target"]], run
            assert run["exit_code"] == (1 if failing else 0)
        else:
            assert run["exit_code"] == EXPECTED_FLOW[run["target"]], run
            assert run["report"]["passed"] and not run["report"]["failed_kinds"]
    assert result.code == max(r["exit_code"] for r in runs), result.output


# the plugin of the scaffold only adds the option; the one that collects targets defines items
needs_plugin = pytest.mark.skipif(
    "pytest.Item" not in (PACKAGE / "pytest_plugin.py").read_text(),
    reason="needs the pytest plugin's items (issue #13)",
)


@needs_config
@needs_plugin
def test_pytest_gradtool_in_the_sample_fails_exactly_the_wrong_target():
    """`pytest --gradtool` run in examples/ci, as its README says (a fresh process: pytest
    finds its rootdir and the plugin its pyproject.toml from there)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--gradtool", "-p", "no:cacheprovider", "-q"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "1 failed, 3 passed" in output, output
    failed = [line for line in output.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1 and "ops/attention.py:FusedAttention" in failed[0], output


def test_the_readme_shows_the_sample_project_s_configuration():
    """The README's [tool.gradtool] block is the sample project's, key for key."""
    import re

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## In CI") :]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    shown = tomllib.loads(block[1])["tool"]["gradtool"]
    sample = tomllib.loads((REPO / "examples" / "ci" / "pyproject.toml").read_text())
    assert shown == sample["tool"]["gradtool"]

"""Batched (vmap) and serial evaluation: a model vmap cannot run is evaluated one point at a time
and the report says why; both ways agree; batching stays within its memory budget. (The
nn.Linear path of batched evaluation: test_linear_path.py.)

Independent reference: torch.autograd.gradcheck in float64.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import pytest
from conftest import (
    EVALUATION,
    REPO,
    check_cli,
    check_file,
    failing,
    spec,
)
from models import (
    torch_gradcheck_module,
)

from gradcheck_tool.loading import load_target


def test_vmap_friendly_model_is_evaluated_batched():
    report = check_file(spec(EVALUATION / "serial_fallback.py", "Batchable"))
    assert report.passed
    assert report.evaluation == "batched" and report.fallback_reason is None


@pytest.mark.parametrize("name, why", [("NanGuard", ".item()"), ("Branchy", "control flow")])
def test_model_vmap_cannot_run_falls_back_to_serial_and_passes(name, why):
    report = check_file(spec(EVALUATION / "serial_fallback.py", name))
    # decided per tensor: vmap fails only where a batched tensor reaches the guard
    assert report.evaluation == "mixed"
    assert report.fallback_reason and "vmap" in report.fallback_reason
    assert why in report.fallback_reason
    serial = {r.name for r in report.results if r.serial_reason}
    assert serial == {"fc1.weight", "fc1.bias", "input:x"}
    assert all(why in report.result(name).serial_reason for name in serial)
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
    assert report.evaluation == "mixed" and report.fallback_reason
    assert failing(report) == {"fc1.weight", "fc1.bias", "input:x"}  # upstream of the hook
    for name in failing(report):
        result = report.result(name)
        assert result.rating == "bug"
        assert result.hint.startswith("constant factor") and "2 ×" in result.hint
    assert report.result("fc2.weight").passed and report.result("fc2.bias").passed
    loaded = load_target(spec(EVALUATION / "serial_fallback.py", "BuggyNanGuard"))
    assert not torch_gradcheck_module(loaded.obj, loaded.example_inputs)


def test_serial_fallback_in_the_cli_says_why(tmp_path):
    run = check_cli(tmp_path, spec(EVALUATION / "serial_fallback.py", "NanGuard"))
    assert run.code == 0, run.output
    assert run.report["evaluation"] == "mixed"
    assert "vmap" in run.report["fallback_reason"]
    assert "vmap could not run the model" in run.report["results"][0]["serial_reason"]
    assert "evaluated one point at a time: vmap could not run the model" in run.output


# --- batched evaluation stays within its memory budget ---------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_batched_check_of_a_small_cnn_peaks_well_under_2_gb(tmp_path):
    """Before the fix, 514 perturbed copies of a 32-element tensor went through the CNN in
    one vmap call: 4-9 GB. Measured in a fresh process: the child's own peak RSS. Sampled
    coordinates (`--samples`), not the default directions: hundreds of rows per tensor, the
    chunking under test."""
    import resource

    limit = 4 * 2**30  # a regression fails here instead of taking the machine's memory

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = dict(os.environ, COLUMNS="400")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = (tmp_path / "out.txt").open("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradcheck_tool",
            "check",
            str(EVALUATION / "small_cnn.py"),
            "--samples",
            "256",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=cap_memory,
    )
    timer = threading.Timer(60, proc.kill)  # a few seconds when batching is budgeted
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    output = out.read()
    out.close()
    assert proc.returncode != -9, f"killed after 60 s\n{output}"
    assert proc.returncode == 0, output
    # the path under test, not the serial fallback; "mixed" where the forward is slow enough
    # (SLOW_FORWARD) that the one-entry bias's two rows run serially
    assert re.search(r"\b(batched|mixed) evaluation", output), output
    peak_gb = usage.ru_maxrss * 1024 / 1e9
    assert peak_gb < 1.5, f"peak RSS {peak_gb:.2f} GB"

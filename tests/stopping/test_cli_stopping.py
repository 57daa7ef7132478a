"""The command line, bounded: `--timeout` on a forward that never returns ends with exit 124,
the partial table and `"interrupted": "timeout"` in the JSON; SIGTERM (how CI runners cancel)
during `flow --steps` ends with exit 143 and the steps measured so far. Fresh processes: the
exit code and the signal are the process's. Skipped until the CLI has `--timeout`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# long enough for torch's import and the parameters' check on a loaded machine (2 s alone; a
# timeout during the import stops the run before any report: exit 124 and no table)
TIMEOUT = "8"


def _cli_has_timeout() -> bool:
    import typer.main

    from gradcheck_tool.cli import app

    commands = typer.main.get_command(app).commands
    return all(
        any("--timeout" in p.opts for p in commands[name].params) for name in ("check", "flow")
    )


pytestmark = pytest.mark.skipif(not _cli_has_timeout(), reason="the CLI has no --timeout yet")


def the_report(path: Path) -> dict:
    """The report in a --json file: the file is the report, or a run of targets holding it."""
    data = json.loads(path.read_text())
    if "runs" in data:
        data = data["runs"][0]
    return data.get("report", data)


def test_check_with_a_timeout_on_a_stalled_forward_exits_124_with_a_partial_report(tmp_path):
    report = tmp_path / "report.json"
    started = time.monotonic()
    run = run_cli(
        "check",
        f"{FIXTURES / 'stalls.py'}:Sleeps",
        "--timeout",
        TIMEOUT,
        "--json",
        report,
        timeout=90,
    )
    took = time.monotonic() - started
    assert run.code == 124, run.output
    assert "INTERRUPTED: partial report, 2 result(s) before the timeout" in run.stdout
    assert "Traceback" not in run.output
    data = the_report(report)
    assert data["interrupted"] == "timeout" and data["passed"] is False
    assert [r["name"] for r in data["results"]] == ["fc.weight", "fc.bias"]
    assert took < float(TIMEOUT) + 30, took  # the timeout, an interpreter start-up, a busy CI box


def test_a_timeout_while_the_file_is_imported_exits_124_with_one_line():
    run = run_cli("check", FIXTURES / "slow_import.py", "--timeout", "1", timeout=60)
    assert run.code == 124, run.output
    assert "timeout" in run.stderr and "Traceback" not in run.output
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_sigterm_during_flow_steps_exits_143_with_the_steps_measured(tmp_path):
    report = tmp_path / "report.json"
    env = dict(os.environ, COLUMNS="120")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradcheck_tool", "flow", str(FIXTURES / "slow_training.py"),
         "--steps", "1000", "--json", str(report)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in proc.stderr:  # the model says when its training is under way
            if "slow_training: training" in line:
                break
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, out + err
    assert "INTERRUPTED: partial report" in out and "of 1000 step(s) measured before SIGTERM" in out
    assert "Traceback" not in err
    data = the_report(report)
    assert data["interrupted"] == "terminated" and data["passed"] is False
    assert 3 <= data["steps"] < 1000 and len(data["history"]) == data["steps"]

"""`flow --nproc N` with real processes (torch.distributed.run, gloo): the report equals the
one-process report on the same global batch, and a rank that raises, a rank that hangs and
Ctrl-C each end the run as they should. (Each test starts N+1 Python processes: ~10 s.)"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gradcheck_tool.engines.flow.distributed_flow import run_flow_nproc
from gradcheck_tool.errors import UserCodeError
from gradcheck_tool.formats import table
from gradcheck_tool.results import FlowReport
from gradcheck_tool.runner import run_target

REPO = Path(__file__).resolve().parents[2]
NPROC = REPO / "tests" / "fixtures" / "flow_nproc"
SAMPLES = REPO / "sample_models"


def rendered(report: FlowReport) -> str:
    out = io.StringIO()
    table.write(report, out, width=80)
    return out.getvalue()


def assert_close_dicts(a: Any, b: Any, path: str = "report") -> None:
    """The JSON of two reports: the same keys and values, floats to 1e-5 relative (the
    processes add their float32 numbers in another order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: {a.keys() ^ b.keys()}"
        for key in a:
            assert_close_dicts(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_dicts(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9) or (
            math.isnan(a) and math.isnan(b)
        ), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_same_report(target: Path, options: dict[str, Any], nproc: int) -> FlowReport:
    one = run_target("flow", str(target), options)
    assert one.report is not None, one.error
    many = run_flow_nproc(str(target), options, nproc)
    assert many.processes == nproc and many.batch_size == one.report.batch_size
    assert f"in {nproc} processes (DDP)" in rendered(many)
    assert many.to_dict()["processes"] == nproc and "processes" not in one.report.to_dict()
    # apart from the seconds and the line that says N processes, the same table
    alike = dataclasses.replace(many, seconds=one.report.seconds, processes=1)
    assert rendered(alike) == rendered(one.report)
    assert_close_dicts(alike.to_dict(), one.report.to_dict())
    return many


def test_dead_units_of_the_whole_batch_without_loss_fn():
    """A unit dead on one process's examples may fire on another's: the dead fractions are
    the whole batch's (78.1% and 87.5%), not one process's."""
    report = assert_same_report(SAMPLES / "dead_relu_mlp.py", {}, 2)
    assert [f.kind for f in report.findings] == ["dead_relu", "dead_relu"]


def test_a_healthy_model_with_loss_fn_split_four_ways():
    report = assert_same_report(SAMPLES / "healthy_resnet_mlp.py", {"fail_on": "all"}, 4)
    assert report.findings == () and report.passed


def test_lstm_and_transformer_trained_three_steps_with_adam():
    report = assert_same_report(
        NPROC / "seq_model.py", {"steps": 3, "optimizer": "adam", "lr": 1e-3}, 2
    )
    assert report.steps == 3 and len(report.history) == 3


def test_an_unseeded_model_is_the_same_in_every_process_and_in_one():
    """build_model() and example_inputs() draw from the global RNG, unseeded: the parent,
    each process and one process seed it from --seed, so they build the same model."""
    assert_same_report(NPROC / "unseeded_seq.py", {}, 2)
    assert_same_report(NPROC / "unseeded_seq.py", {"seed": 7}, 2)


def test_a_loss_summed_over_the_examples_trains_as_in_one_process():
    assert_same_report(NPROC / "sum_loss.py", {"steps": 2}, 2)


def test_an_exception_in_one_rank_is_a_user_error_naming_the_rank():
    started = time.perf_counter()
    with pytest.raises(UserCodeError) as err:
        run_flow_nproc(str(NPROC / "rank_raises.py"), {}, 2)
    text = str(err.value)
    assert text.startswith("rank 1 of 2: the model's forward raised")
    assert re.search(r"ValueError: rank one cannot go on \(at \S*rank_raises\.py:15\)$", text)
    assert "Traceback" not in text
    assert time.perf_counter() - started < 40  # the waiting rank did not wait for a timeout


def test_forwards_that_take_different_paths_are_not_combined():
    """Rank 0's forward runs a ReLU that rank 1's does not: their numbers are not about the
    same things, so the run stops instead of mixing them. (A forward that takes its path from
    another example of the batch, data_dependent.py, is refused before: test_split.py.)"""
    with pytest.raises(UserCodeError, match="forwards took different paths"):
        run_flow_nproc(str(NPROC / "rank_dependent.py"), {}, 2)


def test_a_hung_rank_is_bounded_by_the_collective_timeout():
    started = time.perf_counter()
    with pytest.raises(UserCodeError, match="rank 1 of 2 stopped responding: rank 0 waited 8 s"):
        run_flow_nproc(str(NPROC / "rank_hangs.py"), {}, 2, collective_timeout=8)
    assert time.perf_counter() - started < 40


PARENT = """
import sys
from gradcheck_tool.engines.flow.distributed_flow import run_flow_nproc
try:
    run_flow_nproc(sys.argv[1], {}, 2)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_stops_every_process(tmp_path):
    """SIGINT to the parent (every rank hangs in its forward): it exits, and so does every
    process it started."""
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "GRADTOOL_TEST_HANG_ALL": "1",
        "PYTHONPATH": str(REPO),
    }
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(NPROC / "rank_hangs.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        pids = _worker_pids(tmp_path, 2, deadline=time.monotonic() + 60)
        time.sleep(1.0)  # into the forward
        parent.send_signal(signal.SIGINT)
        assert parent.wait(timeout=30) == 130
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids)
        # the job's folder is gone too, torchrun's logs with it
        assert not list(tmp_path.iterdir())
    finally:
        if parent.poll() is None:
            parent.kill()


def _worker_pids(tmp: Path, nproc: int, deadline: float) -> list[int]:
    while time.monotonic() < deadline:
        found = {}
        for path in tmp.glob("gradtool-nproc-*/rank*.json"):
            try:
                found[path.name] = json.loads(path.read_text())["pid"]
            except (OSError, ValueError, KeyError):
                pass
        if len(found) == nproc:
            return list(found.values())
        time.sleep(0.2)
    raise AssertionError("the processes did not start")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_the_command_line_prints_the_same_table_with_nproc(tmp_path, monkeypatch):
    """`gradtool flow FILE --nproc 2` (and `nproc = 2` in the config) print the table of one
    process, apart from the header's "in 2 processes (DDP)" and the seconds."""
    from conftest import invoke_cli

    def table_of(*args: str) -> list[str]:
        result = invoke_cli("flow", SAMPLES / "dead_relu_mlp.py", *args)
        assert result.code == 0, result.output
        lines = result.stdout.splitlines()
        return [ln for ln in lines if not re.fullmatch(r"\d+\.\d+s", ln.strip())]

    one, two = table_of(), table_of("--nproc", "2")
    assert "in 2 processes (DDP)" in " ".join(two)
    assert [ln for ln in two if "processes" not in ln and "seeded random" not in ln] == [
        ln for ln in one if "train mode" not in ln and "seeded random" not in ln
    ]

"""The trainer callbacks under DDP, in real 2-process jobs (gloo on CPU): a Lightning Trainer
with strategy="ddp" (Lightning launches the second process) and a transformers.Trainer under
torch.distributed.run. Rank 0's report is the job's: it equals the same callback's in one
process on the same global batches (norms to 1e-6 relative in float64, dead fractions
exactly), and no rank warns that it reports its own gradients. Every rank gets that
report, so that fail_on stops every rank at the same step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from ddp_callback_setup import assert_same_report, build_layers, rank_data
from trainer_support import library

from gradcheck_tool import Monitor

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)
# a launcher's variables in the test's own environment would make the job join another one
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch(args: list[str], out: Path) -> dict[str, Any]:
    """Run a 2-process job (~9 s: each process imports torch and the trainer); rank 0's JSON
    report and what each rank wrote."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    # its own process group: a hung job is killed whole, ranks included
    proc = subprocess.Popen(
        [sys.executable, *args, str(out)],
        cwd=out,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    ranks = {r: out / f"ddp_rank{r}.txt" for r in (0, 1)}
    assert proc.returncode == 0 and all(p.exists() for p in ranks.values()), output[-4000:]
    fails = {f"fail{r}": out / f"fail_rank{r}.txt" for r in (0, 1)}
    return {
        "report": json.loads((out / "ddp.json").read_text()),
        **{r: p.read_text() for r, p in ranks.items()},
        **{k: p.read_text() for k, p in fails.items() if p.exists()},
    }


def assert_the_jobs_report(job: dict[str, Any], reference: dict[str, Any]) -> None:
    got = job["report"]
    assert got["found_by"].startswith("Monitor, DDP on 2 ranks"), got["found_by"]
    assert not got["warnings"]
    # every rank gets the job's report (fail_on is decided alike), and none warned
    for rank in (0, 1):
        assert job[rank] == f"found_by: {got['found_by']}", job[rank]
    assert_same_report(got, reference)


def test_the_reference_is_not_what_one_rank_sees() -> None:
    """The comparisons can fail: one rank's own part of a global batch gives other norms
    and dead fractions (units 12 and 13 each fire on one rank's examples only)."""
    x, y = rank_data(0)
    enc, head = build_layers()
    model = torch.nn.Sequential(enc, head)
    with Monitor(model) as mon:
        torch.nn.functional.mse_loss(model(x[:8]), y[:8]).backward()
    dead = {r["key"]: r["dead_fraction"] for r in mon.report()["layers"]}
    assert dead["0.1"] == 13 / 16  # globally 12/16: what the jobs' reports must show


def test_lightning_ddp_reports_the_jobs_gradients(tmp_path: Path) -> None:
    library("lightning")
    import lightning_ddp_job

    job = launch([str(HERE / "lightning_ddp_job.py")], tmp_path)
    lightning_ddp_job.run(tmp_path, distributed=False)
    reference = json.loads((tmp_path / "single.json").read_text())
    assert reference["layers"][1]["dead_fraction"] == 12 / 16
    assert [h["step"] for h in reference["history"]] == [1, 3]  # every=2: one step a batch
    assert_the_jobs_report(job, reference)
    # fail_on (every unit dead): both ranks stop at the same step and raise, instead of
    # rank 0 stopping alone while rank 1 waits for it in DDP's next all-reduce (a hang)
    assert job["fail0"] == job["fail1"], (job["fail0"], job["fail1"])
    assert "training showed dead_relu (fail_on)" in job["fail0"]


def test_transformers_ddp_reports_the_jobs_gradients(tmp_path: Path) -> None:
    library("transformers")
    import transformers_ddp_job

    job = launch(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free port of its own
            "--nproc_per_node",
            "2",
            str(HERE / "transformers_ddp_job.py"),
        ],
        tmp_path,
    )
    transformers_ddp_job.run(tmp_path)
    reference = json.loads((tmp_path / "single.json").read_text())
    assert reference["layers"][1]["dead_fraction"] == 12 / 16
    assert [h["step"] for h in reference["history"]] == [1, 2, 3, 4]
    assert_the_jobs_report(job, reference)

"""The Monitor in a real 2-process job (torchrun, gloo on CPU) under DDP and under FSDP2:
rank 0's report equals a single-process Monitor's on the same global batch (the ranks'
batches concatenated), in as few collectives as the Note [reducing a step across ranks]
says; ranks whose forwards differ leave their steps out instead of hanging."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_setup import STEPS, build_model, global_batch, nan_batch, rank_batch, train

from gradcheck_tool import Monitor

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the job once (~12 s: two processes importing torch); what each rank wrote."""
    out = tmp_path_factory.mktemp("job")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port of its own
        "--nproc_per_node",
        "2",
        str(HERE / "monitor_job.py"),
        str(out),
    ]
    # its own process group: a hung job is killed whole, ranks included
    proc = subprocess.Popen(
        cmd,
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
    results = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert proc.returncode == 0 and len(results) == 18, output[-4000:]
    return results


def single_process(x: torch.Tensor, y: torch.Tensor, steps: int = STEPS) -> dict[str, Any]:
    model = build_model()
    with Monitor(model) as mon:
        train(model, x, y, steps)
    return mon.report()


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return single_process(*global_batch())


def close(a: float | None, b: float | None, rel: float = 1e-6) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def assert_same_report(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert [r["key"] for r in got["layers"]] == [r["key"] for r in want["layers"]]
    for g, w in zip(got["layers"], want["layers"]):
        where = g["key"]
        for name in ("type", "kind", "params", "numel", "units", "frozen", "note"):
            assert g[name] == w[name], (where, name, g[name], w[name])
        for name in ("grad_norm", "weight_norm", "max_abs_grad", "output_grad_norm"):
            assert close(g[name], w[name]), (where, name, g[name], w[name])
        assert close(g["update_ratio"], w["update_ratio"]), (where, g["update_ratio"])
        for name in ("dead_fraction", "inactive_fraction", "saturated_fraction"):
            assert g[name] == w[name], (where, name, g[name], w[name])  # exactly
    assert len(got["history"]) == len(want["history"]) == STEPS
    for gs, ws in zip(got["history"], want["history"]):
        assert gs["step"] == ws["step"]
        for key, w in ws["rows"].items():
            g = gs["rows"][key]
            for name, value in w.items():
                if "fraction" in name:
                    assert g[name] == value, (gs["step"], key, name)
                else:
                    assert close(g[name], value), (gs["step"], key, name, g[name], value)
    same = ("kind", "layer", "key", "step", "where", "message", "fix")
    assert [[f[k] for k in same] for f in got["findings"]] == [
        [f[k] for k in same] for f in want["findings"]
    ]
    for g, w in zip(got["findings"], want["findings"]):
        assert g["evidence"].keys() == w["evidence"].keys()
        assert all(close(g["evidence"][k], v) for k, v in w["evidence"].items()), g["kind"]


@pytest.mark.parametrize("case", ["ddp", "fsdp2", "fsdp1"])
def test_rank0_report_equals_one_process_on_the_global_batch(
    job: dict[str, Any], reference: dict[str, Any], case: str
) -> None:
    """FSDP1 with use_orig_params=True: each rank holds flat pieces of the parameters (and
    no .grad for a parameter it holds none of); the whole shapes come from FSDP's records."""
    got = job[f"{case}_rank0"]["report"]
    assert got["found_by"].startswith(f"Monitor, {case.upper()} on 2 ranks")
    assert got["steps"] == STEPS and not got["warnings"]
    assert_same_report(got, reference)
    assert reference["findings"]  # (the comparison of findings compares something)


def test_the_reference_is_not_what_one_rank_sees(reference: dict[str, Any]) -> None:
    """The comparison can fail: one rank's own half gives other norms and dead fractions
    (units 14 and 15 each fire on one half only)."""
    local = single_process(*rank_batch(0))
    dead = {r["key"]: r["dead_fraction"] for r in local["layers"] if r["kind"] == "activation"}
    assert dead["act1"] == 15 / 16 and reference["layers"][1]["dead_fraction"] == 14 / 16
    assert not close(local["layers"][0]["grad_norm"], reference["layers"][0]["grad_norm"], 1e-2)


def test_other_ranks_get_the_same_report_or_none(job: dict[str, Any]) -> None:
    """all_ranks=True (the DDP case): rank 1's report is rank 0's; by default (FSDP2) None."""
    ddp0, ddp1 = job["ddp_rank0"]["report"], job["ddp_rank1"]["report"]
    for g, w in zip(ddp1["layers"], ddp0["layers"]):
        assert g == w
    assert job["fsdp2_rank1"]["report"] is None


def test_fsdp1_flat_parameters_are_one_row_per_unit(
    job: dict[str, Any], reference: dict[str, Any]
) -> None:
    """Without use_orig_params the model is one flat parameter per FSDP unit: its row is the
    whole unit's (every layer's gradient in one norm); the activations are as usual."""
    got = job["fsdp1flat_rank0"]["report"]
    layers = [r for r in reference["layers"] if r["kind"] == "layer"]
    unit = got["layers"][0]
    assert (unit["key"], unit["type"]) == ("(model)", "MLP")
    assert unit["numel"] == sum(r["numel"] for r in layers)
    for name in ("grad_norm", "weight_norm"):
        assert close(unit[name], math.sqrt(sum(r[name] ** 2 for r in layers))), name
    acts = [(r["key"], r["dead_fraction"]) for r in reference["layers"] if r["kind"] != "layer"]
    assert [(r["key"], r["dead_fraction"]) for r in got["layers"][1:]] == acts


@pytest.mark.parametrize("case", ["ddp", "fsdp2", "fsdp1"])
def test_three_collectives_per_recorded_step(job: dict[str, Any], case: str) -> None:
    """Each recorded step (with the optimizer step before it) is combined in one layout
    check, one SUM and one MAX, whatever the number of layers; entering the Monitor checks
    that the ranks' Monitors agree in one more."""
    for rank in (0, 1):
        done = job[f"{case}_rank{rank}"]
        assert done["steps"] == STEPS
        assert done["all_reduce_calls"] == 3 * STEPS + 1


def test_a_nan_on_one_rank_is_found_as_on_the_global_batch(job: dict[str, Any]) -> None:
    """A NaN in rank 1's examples: rank 0's own numbers are finite until DDP's all-reduce;
    the combined report finds the NaN where the single process does (the forward probes
    add up; a NaN extreme travels as a flag)."""
    got = job["nan_rank0"]["report"]
    want = single_process(*nan_batch(), steps=1)
    nan = [(f["kind"], f["layer"], f["message"]) for f in want["findings"] if f["kind"] == "nan"]
    assert nan and nan == [
        (f["kind"], f["layer"], f["message"]) for f in got["findings"] if f["kind"] == "nan"
    ]
    for g, w in zip(got["layers"], want["layers"]):
        for name in ("grad_norm", "max_abs_grad"):
            assert str(g[name]) == str(w[name]), (g["key"], name, g[name], w[name])


def test_calls_under_no_sync_are_counted_not_recorded(job: dict[str, Any]) -> None:
    """Gradient accumulation: the micro-batch under DDP's no_sync() has each rank's own
    gradients; the synchronised one after it is recorded."""
    done = job["accumulate_rank0"]
    assert done["steps"] == 2 and done["report"]["steps_seen"] == 4
    assert [h["step"] for h in done["report"]["history"]] == [2, 4]
    assert not done["report"]["warnings"]


def test_ranks_whose_forwards_differ_leave_their_steps_out(job: dict[str, Any]) -> None:
    for rank in (0, 1):
        report = job[f"diverging_rank{rank}"]["report"]
        assert report["steps"] == 0 and report["layers"] == []
        assert any("3 recorded step(s) left out" in w for w in report["warnings"])


def test_monitors_that_differ_across_ranks_are_an_error_on_every_rank(
    job: dict[str, Any],
) -> None:
    """Another `every` on rank 1 (rank 0 would combine steps rank 1 does not: gloo aborts
    the job on the mismatch), or a model of the same shapes under other names: entering
    raises InputError on both ranks, with the same message, and the job goes on."""
    for rank in (0, 1):
        errors = job[f"mismatch_rank{rank}"]
        assert errors["every"] == job["mismatch_rank0"]["every"]
        assert "`every` is 1 on some ranks, 2 on others" in errors["every"]
        assert "the model's parameter names differ between ranks" in errors["names"]


def test_gradtools_gloo_group_is_made_again_for_a_new_process_group(
    job: dict[str, Any],
) -> None:
    """After destroy_process_group() and a new init_process_group() whose default group has
    the old one's id, gradtool's gloo group is a new, working one (not the destroyed one);
    the old one went with the job's own groups; the new one is kept for the new job."""
    for rank in (0, 1):
        done = job[f"gloo_group_rank{rank}"]
        assert done["error"] is None and done["sum"] == done["first_sum"] == 2.0, done
        assert done["old_destroyed"] and done["new_group"] and done["same_again"], done

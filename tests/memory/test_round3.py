"""The second round of review: the verdict is about checkpointing (a failure the plain
model shares is not its), a model that keeps an activation on itself, the user's errors in
the backward, --plot refused before the run, and advice that does not depend on timing."""

from __future__ import annotations

import json
from pathlib import Path
from runpy import run_path

import pytest
import torch
from conftest import FIXTURES, invoke_cli
from torch import nn

from gradcheck_tool.engines.memory import run_memory
from gradcheck_tool.errors import UserCodeError

WRONG = FIXTURES / "memory" / "wrong_grad.py"


def test_a_failure_the_plain_model_shares_is_not_checkpointings():
    file = run_path(str(WRONG))
    model, x = file["build_model"](), file["example_inputs"]()
    report = run_memory(model, (x,), {}, apply_checkpoint=True, checkpoint=["block"])
    ck = report.checkpoint
    # gradtool check fails these on the plain model too (the Function's backward doubles)
    assert set(ck.fails_without_checkpoint) == {"first.weight", "first.bias", "input:x"}
    assert ck.check_passed and report.exit_code == 0
    assert "also fails without checkpointing" in ck.check_summary
    assert ck.check_summary.startswith("checkpointing changed no gradient: gradtool check")
    result = invoke_cli("memory", WRONG, "--apply-checkpoint", "--checkpoint", "block")
    assert result.code == 0, result.output
    assert "not for checkpointing" in result.stdout
    assert json.loads(
        invoke_cli(
            "memory", WRONG, "--apply-checkpoint", "--checkpoint", "block", "--format", "json"
        ).stdout
    )["checkpoint"]["fails_without_checkpoint"]


def test_a_block_checkpointing_changes_still_exits_1_beside_a_shared_failure():
    result = invoke_cli(
        "memory", f"{WRONG}:with_side_effect", "--apply-checkpoint", "--checkpoint", "block"
    )
    assert result.code == 1, result.output
    assert "FAIL" in result.stdout and "differ from the plain copy" in result.stdout


class KeepsAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)

    def forward(self, x):
        a = torch.softmax(self.q(x) @ x.transpose(1, 2), -1)
        self.last_attn = a  # an activation kept on the module: a deep copy refuses it
        return x + a @ x


def test_a_model_keeping_an_activation_is_checked_on_a_fresh_copy():
    torch.manual_seed(0)
    model = nn.Sequential(KeepsAttention(), KeepsAttention(), nn.Linear(8, 1))
    report = run_memory(model, (torch.randn(2, 5, 8),), {}, apply_checkpoint=True)
    assert report.checkpoint is not None and report.checkpoint.check_passed
    assert report.exit_code == 0
    assert not hasattr(model[0], "last_attn")  # the user's model never ran
    # what the model keeps on itself is alive anyway: not predicted as freed
    ck = report.checkpoint
    assert ck.predicted_saving_bytes == ck.measured_saving_bytes > 0
    assert not [w for w in report.warnings if "apart" in w]


class InPlaceOnSaved(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = torch.relu_(self.lin(x))
        y.mul_(2)  # relu saved y: the backward raises
        return y.sigmoid()


class DetachedOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x).detach()


@pytest.mark.parametrize(
    "model, words",
    [(InPlaceOnSaved(), "the backward raised RuntimeError"), (DetachedOutput(), "require grad")],
)
def test_the_users_backward_errors_are_user_errors(model, words):
    with pytest.raises(UserCodeError, match=words):
        run_memory(model, (torch.randn(2, 4),), {})


def test_a_backward_that_raises_exits_2_on_one_screen(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch, torch.nn as nn\n"
        "class M(nn.Module):\n"
        "    def __init__(s): super().__init__(); s.l = nn.Linear(8, 8)\n"
        "    def forward(s, x):\n"
        "        y = torch.relu_(s.l(x)); y.mul_(2); return y.sigmoid()\n"
        "def build_model(): return M()\n"
        "def nogradout():\n"
        "    m = M(); m.forward = lambda x: m.l(x).detach(); return m\n"
        "def example_inputs(): return (torch.randn(4, 8),)\n"
    )
    for target in (bad, f"{bad}:nogradout"):
        result = invoke_cli("memory", target)
        assert result.code == 2, result.output
        assert "Traceback" not in result.output and "internal error" not in result.output
        assert len(result.output.splitlines()) < 25


@pytest.mark.parametrize("command", ["memory", "flow"])
def test_a_bad_plot_path_is_refused_before_the_run_and_makes_no_folder(tmp_path, command):
    missing = tmp_path / "nonexist" / "p.png"
    raising = tmp_path / "raises.py"  # the model raises: a refusal after the run can't be
    raising.write_text(
        "import torch\n"
        "def build_model():\n"
        "    raise RuntimeError('the model was built')\n"
        "def example_inputs(): return (torch.randn(2, 2),)\n"
    )
    result = invoke_cli(command, raising, "--plot", missing)
    assert result.code == 2
    assert "--plot" in result.output and "does not exist" in result.output
    assert "was built" not in result.output  # refused before the model was loaded
    assert not missing.parent.exists()
    if Path("/proc").is_dir():  # the permission bits allow it, the folder takes no file
        result = invoke_cli(command, raising, "--plot", "/proc/x.png")
        assert result.code == 2 and "--plot" in result.output
        assert "was built" not in result.output


def _candidates(report):
    return [
        (c.name, c.predicted_saving_bytes, c.recompute_flops, round(c.extra_compute, 9))
        for c in report.checkpoint_candidates
    ]


def test_the_advice_is_ranked_by_flops_the_same_twice():
    file = run_path(str(FIXTURES / "memory" / "resnetish.py"))
    x = file["example_inputs"]()
    first = run_memory(file["build_model"](), (x,), {}, top=5)
    second = run_memory(file["build_model"](), (x,), {}, top=5)
    assert _candidates(first) == _candidates(second)
    cands = first.checkpoint_candidates
    # the largest stack (by the bytes it frees) comes first, whatever one forward took
    assert cands[0].name == "layer1.0-1"
    assert cands[0].predicted_saving_bytes == max(c.predicted_saving_bytes for c in cands)
    # FLOPs from torch's own counter: a 3x3 conv with no bias, c -> c at HxW, batch B
    # is 2*B*H*W*c*c*9; layer1 is 2 blocks of 2 such convs (16 channels, 16x16, batch 2)
    assert cands[0].recompute_flops == 2 * 2 * (2 * 2 * 16 * 16 * 16 * 16 * 9)
    assert all(c.cost_from == "flops" for c in cands)


def test_extra_compute_is_the_blocks_share_of_the_steps_flops():
    """A Linear's forward is 2*B*in*out FLOPs, its backward twice that (input and weight
    grads; the first layer's input needs none)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Sequential(nn.Linear(64, 64), nn.Tanh()))
    report = run_memory(model, (torch.randn(8, 64),), {}, top=5)
    (c,) = [c for c in report.checkpoint_candidates if c.name == "2"]
    fwd = 2 * 8 * 64 * 64
    assert c.recompute_flops == fwd
    step = 2 * fwd + 2 * fwd + fwd  # forwards, layer 2's two grads, layer 0's weight grad
    assert c.extra_compute == pytest.approx(fwd / step)


def test_a_block_without_flops_never_outranks_one_with_them_by_its_measured_time():
    """wide_cnn's MaxPool2d (no FLOPs torch counts) ranked by its time's share came before or
    after stage3 depending on the machine's load; now the order is by FLOPs, then bytes."""
    from gradcheck_tool.engines.memory.candidates import rank_key
    from gradcheck_tool.results import CheckpointCandidate

    def cand(name, saving, extra, cost_from):
        return CheckpointCandidate(name, "T", saving, saving, 1.0, extra, cost_from=cost_from)

    stage3 = cand("stage3", 525_312, 0.065, "flops")
    pool_fast = cand("pool1", 524_288, 0.0001, "ms")  # a quiet machine: tiny time share
    pool_slow = cand("pool1", 524_288, 0.5, "ms")  # a loaded one
    big_pool = cand("pool0", 9_000_000, 0.3, "ms")
    for pool in (pool_fast, pool_slow):
        ranked = sorted([pool, stage3, big_pool], key=lambda c: rank_key(2, c))
        assert [c.name for c in ranked] == ["stage3", "pool0", "pool1"]
    # the tier still comes first
    assert rank_key(1, pool_fast) < rank_key(2, stage3)

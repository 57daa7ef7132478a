"""--apply-checkpoint: predicted savings within 20% of the measured ones, the checkpointed
copy checked (and really recomputing), and a block that checkpointing changes caught."""

from __future__ import annotations

from runpy import run_path

import pytest
import torch
from conftest import FIXTURES, SAMPLES
from torch import nn

from gradcheck_tool.engines.memory import run_memory
from gradcheck_tool.errors import OptionError


def sample(name: str):
    file = run_path(str(SAMPLES / name))
    return file["build_model"](), file["example_inputs"]()


def assert_verified(report, blocks=None):
    ck = report.checkpoint
    assert ck is not None
    if blocks is not None:
        assert list(ck.blocks) == blocks
    assert ck.predicted_saving_bytes > 0
    # the bar: predicted within 20% of measured
    assert abs(ck.measured_saving_bytes - ck.predicted_saving_bytes) <= 0.2 * abs(
        ck.measured_saving_bytes
    )
    assert ck.held_after < ck.held_before
    assert ck.check_passed, ck.check_summary
    assert ck.grad_difference is not None and ck.grad_difference <= 1e-4
    assert report.exit_code == 0
    assert not [w for w in report.warnings if "apart" in w]


def test_attention_block_sample():
    model, x = sample("attention_block.py")
    report = run_memory(model, (x,), {}, apply_checkpoint=True)
    names = sorted(c.name for c in report.checkpoint_candidates)
    assert names == ["blocks.0", "blocks.1"]  # the repeated blocks, nothing inside them
    # attention dominates: each block's attention saves most of its bytes
    r = {m.name: m for m in report.modules}
    assert r["blocks.0.attn"].saved_bytes > 0.7 * r["blocks.0"].saved_bytes
    assert_verified(report)
    assert sorted(report.checkpoint.blocks) == ["blocks.0", "blocks.1"]


def test_wide_cnn_sample():
    model, x = sample("wide_cnn.py")
    report = run_memory(model, (x,), {}, apply_checkpoint=True)
    cands = {c.name: c.predicted_saving_bytes for c in report.checkpoint_candidates}
    assert sorted(cands) == ["stage2", "stage3", "stem"]  # ranked by bytes per ms: timing
    assert max(cands, key=cands.get) == "stem"  # 64×64 frees the most
    r = {m.name: m for m in report.modules}
    assert r["stem"].saved_bytes > 0.5 * report.saved_bytes_total
    assert_verified(report)


def test_transformer_encoder():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 4)
    x = torch.randn(2, 16, 32)
    report = run_memory(enc, (x,), {}, apply_checkpoint=True, top=4)
    assert sorted(c.name for c in report.checkpoint_candidates) == [f"layers.{i}" for i in range(4)]
    assert_verified(report)


class Scale(nn.Module):
    def forward(self, x):
        return 2.0 * x  # saves nothing: its input is kept alive only by what saved it before


def test_adjacent_blocks_are_predicted_as_a_set():
    """Block 1 ends in a ReLU that saves its output, block 2's input; block 2 saves nothing
    of it. Alone, checkpointing 1 frees that output; with 2 checkpointed too, 2 keeps it
    as its input. Summing the two predictions would count it; the set does not."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16),
        nn.Sequential(nn.Linear(16, 16), nn.ReLU()),
        nn.Sequential(Scale(), nn.Tanh(), nn.Linear(16, 16)),
        nn.Linear(16, 2),
    )
    x = torch.randn(4, 8)
    alone = [
        run_memory(model, (x,), {}, apply_checkpoint=True, checkpoint=[b]).checkpoint
        for b in ("1", "2")
    ]
    both = run_memory(model, (x,), {}, apply_checkpoint=True, checkpoint=["1", "2"])
    assert_verified(both, ["1", "2"])
    summed = sum(ck.measured_saving_bytes for ck in alone)
    assert both.checkpoint.measured_saving_bytes == summed - 4 * 16 * 4  # the ReLU's output
    assert both.checkpoint.predicted_saving_bytes == both.checkpoint.measured_saving_bytes


def test_tiny_bert():
    run_path(str(FIXTURES / "flow_corpus" / "_library.py"))["library"]("transformers")
    models = run_path(str(FIXTURES / "flow_corpus" / "_models.py"))
    ids = models["token_ids"](2, 16, 100)
    report = run_memory(models["hf_bert"](), (ids,), {}, apply_checkpoint=True, top=2)
    assert_verified(report)


class Recorded(nn.Module):
    """Counts its forwards run inside a backward: recomputations by checkpoint."""

    recomputed: list[int] = [0]

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        if torch._C._current_graph_task_id() != -1:
            Recorded.recomputed[0] += 1
        return torch.sin(self.lin(x))


def test_gradtool_check_runs_through_the_checkpoint(monkeypatch):
    import gradcheck_tool.api as api

    seen = []
    real_check = api.check

    def counting_check(*args, **kwargs):
        before = Recorded.recomputed[0]
        report = real_check(*args, **kwargs)
        seen.append(Recorded.recomputed[0] - before)
        return report

    monkeypatch.setattr(api, "check", counting_check)
    torch.manual_seed(0)
    model = nn.Sequential(Recorded(), nn.Linear(6, 2))
    report = run_memory(model, (torch.randn(3, 6),), {}, apply_checkpoint=True, checkpoint=["0"])
    assert report.checkpoint.check_passed
    assert seen and seen[0] > 0  # the check's backward recomputed the checkpointed block


def test_a_block_that_checkpointing_changes_is_not_passed():
    file = run_path(str(FIXTURES / "memory" / "side_effect_block.py"))
    model, x = file["build_model"](), file["example_inputs"]()
    report = run_memory(model, (x,), {}, apply_checkpoint=True, checkpoint=["block"])
    assert not report.checkpoint.check_passed
    assert "differ" in report.checkpoint.check_summary
    assert report.exit_code == 1
    # the same model without its side effect's parity flip passes: the test can tell
    plain = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    ok = run_memory(plain, (x,), {}, apply_checkpoint=True, checkpoint=["1"])
    assert ok.checkpoint.check_passed and ok.exit_code == 0


def test_an_unknown_block_names_the_choices():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(OptionError) as caught:
        run_memory(model, (torch.randn(1, 2),), {}, apply_checkpoint=True, checkpoint=["nope"])
    assert "nope" in str(caught.value) and "Choose among: 0, 1" in str(caught.value)


class Shifty(nn.Module):
    """Saves a tensor whose shape changes every call: the recomputation cannot match."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        k = 2 + self.calls % 2
        return torch.tanh(self.lin(x)[:, :k]).sum(1, keepdim=True)


def test_a_recomputation_that_cannot_match_fails_the_check():
    torch.manual_seed(0)
    model = nn.Sequential(Shifty(), nn.Linear(1, 1))
    report = run_memory(model, (torch.randn(3, 4),), {}, apply_checkpoint=True, checkpoint=["0"])
    assert not report.checkpoint.check_passed
    assert "recomputation differs" in report.checkpoint.check_summary
    assert report.exit_code == 1


def test_checkpoint_names_need_apply_checkpoint():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(OptionError, match="apply_checkpoint is off"):
        run_memory(model, (torch.randn(1, 2),), {}, checkpoint=["0"])

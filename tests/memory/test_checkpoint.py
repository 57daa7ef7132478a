"""--apply-checkpoint: predicted savings within 20% of the measured ones, the checkpointed
copy checked (and really recomputing), and a block that checkpointing changes caught."""

from __future__ import annotations

from runpy import run_path

import pytest
import torch
from conftest import FIXTURES, SAMPLES
from torch import nn

from gradcheck_tool.engines.memory import run_memory
from gradcheck_tool.engines.memory.candidates import stacks
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
    # the two repeated blocks are one candidate, nothing inside them another
    [stack] = report.checkpoint_candidates
    assert (stack.name, stack.type, stack.modules) == (
        "blocks.0-1",
        "Block",
        ("blocks.0", "blocks.1"),
    )
    r = {m.name: m for m in report.modules}
    assert stack.recompute_ms == r["blocks.0"].forward_ms + r["blocks.1"].forward_ms
    # attention dominates: each block's attention saves most of its bytes
    assert r["blocks.0.attn"].saved_bytes > 0.7 * r["blocks.0"].saved_bytes
    assert_verified(report, ["blocks.0-1"])
    assert report.checkpoint.wrapped == ("blocks.0", "blocks.1")


def test_wide_cnn_sample():
    model, x = sample("wide_cnn.py")
    report = run_memory(model, (x,), {}, apply_checkpoint=True)
    cands = {c.name: c.predicted_saving_bytes for c in report.checkpoint_candidates}
    # single big modules stay candidates (no stack here: the stages are of other shapes);
    # the stem and stage2 free >= 10% each and come first, the third is ranked by bytes per
    # ms of recompute, a timing
    assert list(cands)[:2] in (["stem", "stage2"], ["stage2", "stem"])
    assert max(cands, key=cands.get) == "stem"  # 64×64 frees the most
    assert all(len(c.modules) == 1 for c in report.checkpoint_candidates)
    r = {m.name: m for m in report.modules}
    assert r["stem"].saved_bytes > 0.5 * report.saved_bytes_total
    assert_verified(report)


def test_transformer_encoder():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 4)
    x = torch.randn(2, 16, 32)
    report = run_memory(enc, (x,), {}, apply_checkpoint=True, top=4)
    # the stack of 4 layers is one candidate: every layer checkpointed, not 4 arbitrary
    # modules; nothing else frees memory (the model's input is kept anyway)
    [stack] = report.checkpoint_candidates
    layers = tuple(f"layers.{i}" for i in range(4))
    assert (stack.name, stack.modules) == ("layers.0-3", layers)
    assert_verified(report, ["layers.0-3"])
    assert report.checkpoint.wrapped == layers


class ScaledBlock(nn.Sequential):
    """2·x through a Linear and a ReLU: saves nothing of its input (the product by 2 saves
    nothing), and its ReLU saves its output, the next block's input."""

    def __init__(self) -> None:
        super().__init__(Scale(), nn.Linear(16, 16), nn.ReLU())


def test_a_stack_is_predicted_as_a_set():
    """Alone, checkpointing block 1 frees its ReLU's output (the next block saves nothing of
    it); in the stack, block 2's checkpoint keeps it as its input. The stack's prediction
    is the set's: the sum of the blocks' alone, less blocks 1 and 2's outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), ScaledBlock(), ScaledBlock(), ScaledBlock(), nn.Linear(16, 2)
    )
    x = torch.randn(4, 8)
    report = run_memory(model, (x,), {}, apply_checkpoint=True)
    stack = report.checkpoint_candidates[0]
    assert (stack.name, stack.modules) == ("1-3", ("1", "2", "3"))
    assert_verified(report, ["1-3"])
    assert report.checkpoint.wrapped == ("1", "2", "3")
    alone = [
        run_memory(model, (x,), {}, apply_checkpoint=True, checkpoint=[b]).checkpoint
        for b in ("1", "2", "3")
    ]
    summed = sum(ck.measured_saving_bytes for ck in alone)
    outputs = 2 * 4 * 16 * 4  # blocks 1 and 2's ReLU outputs
    assert stack.predicted_saving_bytes == summed - outputs
    assert report.checkpoint.measured_saving_bytes == summed - outputs


def test_transformer12_sample_is_one_stack():
    model, x = sample("transformer12.py")
    report = run_memory(model, (x,), {}, top=3)
    names = [c.name for c in report.checkpoint_candidates]
    assert names == ["encoder.layers.0-11"]  # not 3 of the 12 layers
    assert report.checkpoint_candidates[0].modules == tuple(
        f"encoder.layers.{i}" for i in range(12)
    )


def test_stacks_are_runs_of_one_layer_type():
    def block():
        return nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    class Layer(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.lin = nn.Linear(width, width)

    model = nn.Sequential(
        nn.Linear(4, 4),  # 0: no submodules: a layer, not a block
        nn.Linear(4, 4),
        block(),  # 2-3: a run of equal Sequentials
        block(),
        nn.Sequential(nn.Linear(4, 4), nn.Tanh()),  # 4: another shape
        Layer(4),  # 5-7: a custom type, any width
        Layer(4),
        Layer(8),
    )
    model.add_module("tail", nn.ModuleList([block(), block()]))
    assert stacks(model) == {
        "2-3": ("2", "3"),
        "5-7": ("5", "6", "7"),
        "tail.0-1": ("tail.0", "tail.1"),
    }
    assert stacks(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == {}


def test_a_range_names_a_stack_for_checkpoint():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 3)
    x = torch.randn(2, 4, 8)
    for bad in ("layers.0-5", "layers.2-1", "layers.0-"):
        with pytest.raises(OptionError) as caught:
            run_memory(enc, (x,), {}, apply_checkpoint=True, checkpoint=[bad])
        assert f"names no module of the model: {bad}" in str(caught.value)
        assert caught.value.hint.startswith("Choose a stack of layers (layers.0-2) or among: ")
    with pytest.raises(OptionError, match="twice"):
        run_memory(enc, (x,), {}, apply_checkpoint=True, checkpoint=["layers.0-1", "layers.1"])
    with pytest.raises(OptionError, match="inside"):
        run_memory(
            enc, (x,), {}, apply_checkpoint=True, checkpoint=["layers.0-1", "layers.1.norm1"]
        )


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

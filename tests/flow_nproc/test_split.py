"""`flow --nproc`, in this process: how the batch, the outputs and the loss split across
processes (Note [a batch split across processes]), what is refused before any process
starts, and how the processes' outcomes become the run's result."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from gradcheck_tool.engines.flow import distributed_flow as df
from gradcheck_tool.engines.flow import flow
from gradcheck_tool.errors import InputError, OptionError, UserCodeError
from gradcheck_tool.losses import ProjectionLoss
from gradcheck_tool.results import FlowReport

REPO = Path(__file__).resolve().parents[2]
NPROC = REPO / "tests" / "fixtures" / "flow_nproc"
SAMPLES = REPO / "sample_models"


def test_shards_cut_batched_inputs_into_consecutive_equal_parts():
    x = torch.arange(12.0).reshape(6, 2)
    labels = torch.arange(6)
    mask = torch.ones(3, 3)  # not batched: every process gets it whole
    parts = [df.Shard(r, 3, 6).rows_of(((x, mask), {"labels": labels})) for r in range(3)]
    assert torch.equal(torch.cat([p[0][0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1]["labels"] for p in parts]), labels)
    assert all(p[0][1] is mask for p in parts)
    assert [(s.start, s.stop) for s in (df.Shard(r, 3, 6) for r in range(3))] == [
        (0, 2),
        (2, 4),
        (4, 6),
    ]


def test_own_rows_of_the_projection_add_up_to_the_whole_batchs_loss():
    """The mean of the processes' projection losses is the one-process loss, and so is the
    mean of their gradients (what DDP averages)."""
    torch.manual_seed(0)
    out = torch.randn(8, 3, requires_grad=True)
    whole = ProjectionLoss(out, 5, torch.float32, differenced=False)
    full_loss = whole(out, (), {})[0]
    (full_grad,) = torch.autograd.grad(full_loss.sum(), out)
    losses, grads = [], []
    for rank in range(4):
        shard = df.Shard(rank, 4, 8)
        part = out[shard.start : shard.stop].detach().requires_grad_(True)
        proj = ProjectionLoss(shard.whole_batch(part), 5, torch.float32, differenced=False)
        proj.projections = shard.own_rows(proj.projections)
        loss = proj(part, (), {})[0]
        losses.append(loss)
        grads.append(torch.autograd.grad(loss.sum(), part)[0] / 4)  # DDP: the mean
    torch.testing.assert_close(sum(losses) / 4, full_loss)
    torch.testing.assert_close(torch.cat(grads), full_grad)


@pytest.mark.parametrize(
    ("file", "scales"),
    [
        (SAMPLES / "healthy_resnet_mlp.py", {"loss": 1.0}),  # cross_entropy: a mean
        (NPROC / "sum_loss.py", {"loss": 2.0}),  # reduction="sum"
        (NPROC / "terms_loss.py", {"data": 1.0, "size": 2.0}),  # each term on its own
    ],
)
def test_the_parent_tells_a_mean_from_a_sum_per_term(file, scales):
    plan = df._plan(str(file), {}, 2)
    assert plan.loss_scales == scales
    assert plan.backend == "gloo"


def test_the_scaled_loss_fn_multiplies_each_term_by_its_factor():
    loss_fn = df._scaled_loss(lambda out, x: {"a": out.sum(), "b": x.sum()}, {"a": 1.0, "b": 3.0})
    value = loss_fn(torch.tensor([2.0]), torch.tensor([1.0]))
    assert value == {"a": 2.0, "b": 3.0}
    plain = lambda out: F.mse_loss(out, out)  # noqa: E731
    assert df._scaled_loss(plain, {"loss": 1.0}) is plain


def test_projection_without_loss_fn_needs_batched_outputs():
    plan = df._plan(str(SAMPLES / "dead_relu_mlp.py"), {}, 4)
    assert plan.loss_scales == {} and plan.total == 16
    with pytest.raises(InputError, match=r"no output of the model has them as dim 0") as err:
        df._plan(str(NPROC / "pooled_output.py"), {}, 2)
    assert "(output has shape (2,)): either dim 0 of x is not the batch" in str(err.value)
    assert "or the model pools over the batch" in str(err.value)
    assert "define loss_fn(output, *inputs)" in err.value.hint


def test_a_batch_that_does_not_split_evenly_is_refused_with_what_would_split_it(tmp_path):
    with pytest.raises(OptionError, match="cannot split the batch of 16 examples") as err:
        df._plan(str(SAMPLES / "dead_relu_mlp.py"), {}, 3)
    assert err.value.option == "nproc"
    assert "(dim 0 of x, shape (16, 8))" in err.value.problem
    assert err.value.hint == (
        "Use --nproc 2, 4, 8 or 16 (they divide 16), or give a batch that is a multiple of 3 "
        "(e.g. 18) in example_inputs()."
    )
    shaped = tmp_path / "shaped.py"
    shaped.write_text("import torch\nmodel = torch.nn.Linear(4, 2)\n")
    with pytest.raises(OptionError) as err:
        df._plan(str(shaped), {"input_shape": ["7,4"]}, 2)
    assert err.value.hint == (
        "Use --nproc 7 (it divides 7), or give a batch that is a multiple of 2 (e.g. 8) with "
        "--input-shape (its first number)."
    )
    with pytest.raises(OptionError) as err:
        df._plan(str(shaped), {"input_shape": ["1,4"]}, 2)
    assert err.value.hint.startswith("A batch of 1 cannot be split: give a batch that is a")


def _refusal(file: Path) -> str:
    with pytest.raises(InputError) as err:
        df._plan(str(file), {}, 2)
    assert err.value.hint is not None and "batch_first=True" in err.value.hint
    return err.value.message


@pytest.mark.parametrize("file", ["seq_first.py", "seq_first_loss.py"])
def test_a_sequence_first_input_is_refused_with_or_without_loss_fn(file):
    """(sequence 4, batch 8, features) into an LSTM with batch_first=False: dim 0 is the
    sequence, and the output (8, 3) has no dim 0 of 4. With loss_fn each part's loss would
    equal the whole one's and pass for a mean: refused, and the 4 is not called a batch."""
    text = _refusal(NPROC / file)
    assert text.startswith(
        "--nproc 2 cuts every input along dim 0, taken as the batch: 4 examples by dim 0 of x "
        "(shape (4, 8, 6)). But no output of the model has them as dim 0 (output has shape "
        "(8, 3)): either dim 0 of x is not the batch (an RNN or Transformer with "
        "batch_first=False takes (sequence, batch, features)"
    )
    assert "the batch of 4 examples" not in text


def test_outputs_of_the_parts_must_put_together_to_the_whole_output():
    """Every step of a sequence-first LSTM, (sequence, batch, classes): dim 0 of the output is
    4 as the input's, but the second half of the sequence, run on its own, starts from a zero
    state; so is a forward whose path depends on another example of the batch."""
    text = _refusal(NPROC / "seq_first_steps.py")
    assert "But the model's output on process 1's part (rows 2:4 of x) is not those rows" in text
    assert "Either dim 0 of x is not the batch" in text
    text = _refusal(NPROC / "data_dependent.py")
    assert "or the forward mixes the examples" in text


def test_dropout_batchnorm_and_scalar_outputs_still_split(tmp_path):
    """Train-mode dropout draws other masks on a part, BatchNorm normalizes with the part's
    statistics: the parts are compared in eval mode. A model that returns only a scalar
    loss has no rows to compare: said in the report."""
    dropout = tmp_path / "dropout.py"
    dropout.write_text(
        "import torch\nfrom torch import nn\n"
        "model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), "
        "nn.Linear(8, 2))\n"
        "def example_inputs():\n    return torch.randn(8, 4)\n"
    )
    plan = df._plan(str(dropout), {}, 2)
    assert plan.total == 8
    assert any("BatchNorm1d normalizes" in w for w in plan.warnings)  # the precise warning
    # dropout alone: the report says it is not the one-process report (a tiny random BERT
    # in train mode gave other gradient norms under --nproc 2, with no word of it)
    alone = tmp_path / "dropout_alone.py"
    alone.write_text(
        "import torch\nfrom torch import nn\n"
        "model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))\n"
        "def example_inputs():\n    return torch.randn(8, 4)\n"
    )
    assert any("dropout draws its own masks" in w for w in df._plan(str(alone), {}, 2).warnings)
    still = tmp_path / "no_dropout.py"  # and without dropout, no such warning
    still.write_text(alone.read_text().replace("nn.Dropout(0.5), ", ""))
    assert not any("dropout" in w for w in df._plan(str(still), {}, 2).warnings)
    scalar = tmp_path / "scalar.py"
    scalar.write_text(
        "import torch\nfrom torch import nn\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(4, 1)\n"
        "    def forward(self, x):\n        return self.fc(x).pow(2).mean()\n"
        "def example_inputs():\n    return torch.randn(8, 4)\n"
        "def loss_fn(out, x):\n    return out\n"
    )
    plan = df._plan(str(scalar), {}, 2)
    assert any("every output of the model is a scalar" in w for w in plan.warnings)


def test_targets_that_do_not_split_with_the_batch_are_refused():
    with pytest.raises(InputError) as err:
        df._plan(str(NPROC / "flat_targets.py"), {}, 2)
    text = str(err.value)
    assert "loss_fn raised on the rows 0:2 of the batch, which process 0 gets" in text
    assert "the targets loss_fn compares with must be cut the same way" in text
    assert "Traceback" not in text


def test_a_loss_neither_mean_nor_sum_is_refused_with_its_numbers():
    with pytest.raises(InputError, match="neither a mean nor a sum over the examples") as err:
        df._plan(str(NPROC / "mixed_loss.py"), {}, 2)
    assert "Return a dict of named terms" in str(err.value)


def test_batchnorm_is_said_in_the_report():
    plan = df._plan(str(NPROC / "batchnorm_mlp.py"), {}, 2)
    assert len(plan.warnings) == 1 and "BatchNorm1d normalizes its 4 examples" in plan.warnings[0]


def test_a_model_without_a_trainable_parameter_is_refused():
    with pytest.raises(InputError, match="every parameter of this model is frozen"):
        df._plan(str(NPROC / "frozen.py"), {}, 2)


def test_options_are_checked_before_any_process_starts():
    dead = str(SAMPLES / "dead_relu_mlp.py")
    with pytest.raises(OptionError, match="at least 1"):
        df.run_flow_nproc(dead, {}, 0)
    with pytest.raises(OptionError, match="steps"):
        df._plan(dead, {"steps": 0}, 2)
    with pytest.raises(OptionError, match="optimizer"):
        df._plan(dead, {"optimizer": "lbfgs"}, 2)
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="CUDA is not available"):
            df._plan(dead, {"device": "cuda"}, 2)


# --- the processes' outcomes -> the run's result ----------------------------------------


def _outcomes(folder: Path, *outcomes: dict | None) -> Path:
    for rank, outcome in enumerate(outcomes):
        if outcome is not None:
            (folder / f"rank{rank}.json").write_text(json.dumps(outcome))
    return folder


def test_a_user_error_in_any_rank_is_named_with_the_rank_before_the_others_failures(tmp_path):
    folder = _outcomes(
        tmp_path,
        {"status": "collective", "message": "DistBackendError: Connection closed by peer"},
        {"status": "user", "message": "the model's forward raised ValueError: no", "hint": "h"},
    )
    with pytest.raises(UserCodeError) as err:
        df._collect(folder, 2, 1, 300.0)
    assert err.value.message == "rank 1 of 2: the model's forward raised ValueError: no"
    assert err.value.hint == "h"


def test_a_hung_rank_is_named_by_the_ones_that_waited(tmp_path):
    folder = _outcomes(
        tmp_path,
        {"status": "timeout", "message": "DistBackendError: Timed out waiting 3000ms"},
        {"status": "started", "pid": 1},
    )
    with pytest.raises(UserCodeError, match=r"rank 1 of 2 stopped responding: rank 0 waited 3 s"):
        df._collect(folder, 2, 1, 3.0)


def test_a_rank_that_ended_without_a_result_is_an_internal_error(tmp_path):
    folder = _outcomes(tmp_path, {"status": "collective", "message": "x"}, {"status": "started"})
    (tmp_path / "launcher.log").write_text("worker 1 exited with signal 9\n")
    with pytest.raises(RuntimeError, match="rank 1 of 2 ended without a result") as err:
        df._collect(folder, 2, 1, 300.0)
    assert "signal 9" in str(err.value)


def test_ranks_classify_how_they_ended():
    timeout = torch.distributed.DistBackendError("Timed out waiting 3000ms for recv")
    try:
        raise UserCodeError("backward raised DistBackendError: ...") from timeout
    except UserCodeError as exc:
        assert df._ended_by(exc)["status"] == "timeout"
    closed = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer")
    assert df._ended_by(closed)["status"] == "collective"
    gloo_timeout = RuntimeError("Application timeout caused pair closure")
    try:
        raise UserCodeError("backward raised RuntimeError: ...") from gloo_timeout
    except UserCodeError as exc:
        assert df._ended_by(exc)["status"] == "timeout"
    assert df._ended_by(UserCodeError("loss_fn raised KeyError"))["status"] == "user"
    assert df._ended_by(KeyError("ours"))["status"] == "internal"


def test_the_report_comes_back_equal_and_nothing_else_is_unpickled(tmp_path):
    torch.manual_seed(0)
    report = flow(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()), torch.randn(5, 3))
    (tmp_path / df.REPORT_FILE).write_bytes(pickle.dumps(report))
    folder = _outcomes(tmp_path, {"status": "ok"})
    assert df._collect(folder, 1, 0, 300.0) == report

    class Foreign:
        def __reduce__(self):
            return (print, ("this must not run",))

    (tmp_path / df.REPORT_FILE).write_bytes(pickle.dumps(Foreign()))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        df._collect(folder, 1, 0, 300.0)
    assert isinstance(report, FlowReport)

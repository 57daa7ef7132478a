"""Monitor(tensorboard=): the scalars read back from the event files (TensorBoard's own
reader) are the Monitor's own report numbers, step by step."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from trainer_support import global_hooks, library, module_hooks

from gradcheck_tool import Monitor
from gradcheck_tool.errors import OptionError

library("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

# the report's history fields each tag group reads
FIELDS = {
    "grad_norm": "grad_norm",
    "update_ratio": "update_ratio",
    "dead_fraction": "dead_fraction",
    "saturated_fraction": "saturated_fraction",
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 1)
    )
    with torch.no_grad():
        model[0].bias[:24] = -50.0  # 24 of 32 ReLU units never fire: dead fraction 0.75
        model[2].weight.mul_(8.0)  # the Tanh saturates on part of its outputs
    return model


def _train(model: nn.Module, mon: Monitor, steps: int, report_every: int = 0) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)
    for i in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if report_every and (i + 1) % report_every == 0:
            mon.flow_report()  # as a loop that logs would: writes what is complete so far


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _expected(report) -> dict[str, list[tuple[int, float]]]:
    """The report's own numbers, as the tags should carry them."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in report.history:
        for key, sample in record.rows:
            for group, field in FIELDS.items():
                value = getattr(sample, field)
                if value is not None:
                    out.setdefault(f"gradtool/{group}/{key}", []).append((record.step, value))
    return out


def _assert_same(written, expected) -> None:
    gradtool_tags = {t for t in written if t.split("/")[1] in FIELDS}
    assert gradtool_tags == set(expected)
    for tag, points in expected.items():
        got = sorted(written[tag])
        assert [s for s, _ in got] == [s for s, _ in points], tag
        for (_, a), (_, b) in zip(got, points):
            # TensorBoard keeps a scalar as float32
            assert a == pytest.approx(b, rel=1e-6, abs=1e-30), tag


@pytest.mark.parametrize("report_every", [0, 3], ids=["at-exit", "reports-in-loop"])
def test_scalars_read_back_equal_the_report(tmp_path, report_every):
    model = _model()
    before = global_hooks()
    with Monitor(model, every=2, tensorboard=tmp_path / "tb") as mon:
        _train(model, mon, steps=9, report_every=report_every)
    report = mon.flow_report()
    assert global_hooks() == before and module_hooks(model) == 0
    written = _scalars(tmp_path / "tb")
    expected = _expected(report)
    # the seeded pathologies are measured, so the test can tell a wrong tag from a right one
    assert expected["gradtool/dead_fraction/1"][0][1] == 0.75
    assert any(v > 0 for _, v in expected["gradtool/saturated_fraction/3"])
    assert [s for s, _ in expected["gradtool/update_ratio/0"]] == [1, 3, 5, 7, 9]
    _assert_same(written, expected)
    # the findings count comes with the newest step of each report that had something new
    last_step, count = written["gradtool/findings"][-1]
    assert last_step == 9 and count == len(report.findings) > 0
    errors = written["gradtool/error_findings"][-1][1]
    assert errors <= count


def test_a_folder_writer_is_closed_and_a_given_writer_is_not(tmp_path):
    model = _model()
    with Monitor(model, tensorboard=tmp_path / "own") as mon:
        _train(model, mon, steps=2)
    assert mon._scalars.sinks[0]._writer is None  # the writer it made for the folder: closed
    writer = SummaryWriter(log_dir=str(tmp_path / "theirs"))
    model = _model()
    with Monitor(model, tensorboard=writer) as mon:
        _train(model, mon, steps=2)
    writer.add_scalar("mine", 1.0, 0)  # still open: the user's to close
    writer.close()
    written = _scalars(tmp_path / "theirs")
    assert "mine" in written and "gradtool/grad_norm/0" in written


def test_nan_gradients_are_written_as_nan(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Monitor(model, tensorboard=tmp_path):
        x = torch.randn(4, 8)
        x[0, 0] = math.inf
        opt.zero_grad()
        model(x).sum().backward()
    written = _scalars(tmp_path)
    assert math.isnan(written["gradtool/grad_norm/0"][0][1])
    assert written["gradtool/findings"][0][1] >= 1  # the nan finding


def test_a_writer_that_fails_is_a_warning_not_the_loops_error(tmp_path):
    class Broken:
        def add_scalar(self, *args, **kwargs):
            raise OSError("disk full")

        def flush(self):
            pass

    model = _model()
    with pytest.warns(RuntimeWarning, match="writing scalars failed.*disk full"):
        with Monitor(model, tensorboard=Broken()) as mon:
            _train(model, mon, steps=3, report_every=1)
    assert mon.flow_report().steps == 3  # the Monitor itself kept measuring


@pytest.mark.parametrize(
    "value, words",
    [(3, "must be a folder or a SummaryWriter, not int"), ("FILE", "is a file, not a folder")],
)
def test_a_bad_tensorboard_value_is_named(tmp_path, value, words):
    if value == "FILE":
        value = tmp_path / "f.txt"
        value.write_text("x")
    with pytest.raises(OptionError, match=words):
        Monitor(_model(), tensorboard=value)


def test_no_tensorboard_no_writes(tmp_path):
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Monitor(model) as mon:
            _train(model, mon, steps=2)
    assert mon._scalars is None

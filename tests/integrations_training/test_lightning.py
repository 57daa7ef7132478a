"""GradFlowCallback inside a real lightning.Trainer (CPU, a tiny model, a few steps): the same
numbers as a Monitor on the same model in a plain loop, the scalars in the trainer's logger,
seeded pathologies found, no hook left, and gradtool's own failure never breaking training."""

from __future__ import annotations

import csv
import json
import math
import warnings

import pytest
import torch
from torch import nn
from trainer_support import global_hooks, library, module_hooks

from gradcheck_tool import Monitor
from gradcheck_tool.engines.flow.findings import rule_for
from gradcheck_tool.engines.flow.findings._rule import Severity

L = library("lightning").pytorch
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from gradcheck_tool.integrations.lightning import GradFlowCallback, GradFlowFailed  # noqa: E402

BATCHES = 8


class Regressor(L.LightningModule):
    """training_step calls the submodules, not the LightningModule itself (as Lightning's own
    examples do); `calls_self` makes it call `self(x)` twice instead."""

    def __init__(self, lr: float = 0.05, dead: bool = False, calls_self: bool = False):
        super().__init__()
        torch.manual_seed(0)
        # the first module a batch calls is a layer: the step begins at its call
        self.inp = nn.Linear(8, 32)
        self.enc = nn.Sequential(nn.ReLU(), nn.Linear(32, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)
        if dead:
            with torch.no_grad():
                self.inp.bias.fill_(-100.0)  # every ReLU unit off for every input
        self.lr = lr
        self.calls_self = calls_self

    def forward(self, x):
        return self.head(self.enc(self.inp(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.calls_self:
            loss = nn.functional.mse_loss((self(x) + self(x)) / 2, y)
        else:
            loss = nn.functional.mse_loss(self.head(self.enc(self.inp(x))), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class ManualRegressor(Regressor):
    """Manual optimization (as GANs use): Lightning hands the optimizer a do-nothing closure."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        loss = nn.functional.mse_loss(self.head(self.enc(self.inp(x))), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


def _data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16 * BATCHES, 8, generator=g)
    y = x[:, :4].sum(1, keepdim=True)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _fit(model, callback, tmp_path, logger=False, max_steps=BATCHES, **kwargs):
    trainer = L.Trainer(
        max_steps=max_steps,
        callbacks=[callback],
        logger=logger,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        trainer.fit(model, _data())
    return trainer


def _errors(report) -> list[str]:
    return [f.kind for f in report.findings if rule_for(f.kind).severity is Severity.ERROR]


@pytest.mark.parametrize("module", [Regressor, ManualRegressor], ids=["automatic", "manual"])
def test_the_callback_measures_what_a_monitor_in_a_plain_loop_measures(tmp_path, module):
    cb = GradFlowCallback(every=2, print_report=False)
    _fit(module(), cb, tmp_path)
    # the reference: the same model, data and optimizer in a plain loop calling the model
    model = Regressor()
    opt = model.configure_optimizers()
    with Monitor(model, every=2) as mon:
        for x, y in _data():
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    ref, got = mon.flow_report(), cb.report
    assert got.steps_seen == ref.steps_seen == BATCHES
    assert [h.step for h in got.history] == [h.step for h in ref.history] == [1, 3, 5, 7]
    for a, b in zip(got.history, ref.history):
        assert [k for k, _ in a.rows] == [k for k, _ in b.rows]
        for (key, ra), (_, rb) in zip(a.rows, b.rows):
            for field in ("grad_norm", "weight_norm", "update_ratio", "dead_fraction"):
                va, vb = getattr(ra, field), getattr(rb, field)
                assert (va is None) == (vb is None), (a.step, key, field)
                if va is not None:
                    assert va == pytest.approx(vb, rel=1e-6), (a.step, key, field)
    # the update ratios were measured (Lightning steps its optimizer with a closure, which
    # runs the forward in automatic optimization and does nothing in manual optimization)
    assert all(dict(h.rows)["head"].update_ratio for h in got.history)
    assert [f.kind for f in got.findings] == [f.kind for f in ref.findings]


def test_a_healthy_run_logs_its_scalars_and_has_no_error(tmp_path, capsys):
    before = global_hooks()
    model = Regressor(lr=0.01)
    cb = GradFlowCallback(every=2, json=str(tmp_path / "flow.json"))
    _fit(model, cb, tmp_path, logger=CSVLogger(tmp_path), log_every_n_steps=4)
    assert global_hooks() == before and module_hooks(model) == 0
    report = cb.report
    assert report.steps == 4 and not _errors(report)
    assert "findings" in capsys.readouterr().out  # the table and its findings panel, printed
    assert json.loads((tmp_path / "flow.json").read_text())["steps_seen"] == BATCHES
    # the logger's rows: each recorded step's numbers at Lightning's step (batch - 1)
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    logged: dict[tuple[int, str], float] = {}
    for row in rows:
        for name, value in row.items():
            if name.startswith("gradtool/") and value != "":
                logged[(int(row["step"]), name)] = float(value)
    for record in report.history:
        for key, sample in record.rows:
            for group in ("grad_norm", "update_ratio", "dead_fraction", "saturated_fraction"):
                value = getattr(sample, group)
                if value is not None:
                    got = logged.pop((record.step - 1, f"gradtool/{group}/{key}"))
                    assert got == pytest.approx(value, rel=1e-12)
    assert {name for _, name in logged} <= {"gradtool/findings", "gradtool/error_findings"}
    # Lightning's own metrics share the step axis: batch 4 (step 3) logged train_loss
    assert any(row["train_loss"] and int(row["step"]) == 3 for row in rows)


def test_dead_relus_are_found(tmp_path):
    cb = GradFlowCallback(every=1, print_report=False)
    _fit(Regressor(dead=True), cb, tmp_path, max_steps=3)
    dead = cb.report.findings_of("dead_relu")
    assert dead and dead[0].layer == "enc.0" and dead[0].value == 1.0


def test_fail_on_stops_a_diverging_run_and_raises_after_the_report(tmp_path, capsys):
    model = Regressor(lr=3.0)  # far too large: the weights blow up within a few steps
    cb = GradFlowCallback(every=1, fail_on="nan,diverging", json=str(tmp_path / "flow.json"))
    with pytest.raises(GradFlowFailed, match="nan"):
        trainer = None
        trainer = _fit(model, cb, tmp_path, max_steps=40, log_every_n_steps=2)
    assert trainer is None
    report = cb.report
    assert "nan" in report.failed_kinds and not report.passed
    assert report.steps_seen < 40  # stopped at the logging step that showed it
    written = json.loads((tmp_path / "flow.json").read_text())
    assert written["passed"] is False and "nan" in written["failed_kinds"]
    assert "nan" in capsys.readouterr().out
    assert module_hooks(model) == 0


def test_a_step_is_a_batch_however_often_it_calls_the_model(tmp_path):
    cb = GradFlowCallback(every=1, print_report=False)
    _fit(Regressor(calls_self=True), cb, tmp_path, max_steps=4)
    assert cb.report.steps_seen == 4 and cb.report.steps == 4
    assert all(dict(h.rows)["head"].update_ratio for h in cb.report.history)


def test_gradtools_own_failure_is_a_warning_and_training_goes_on(tmp_path, monkeypatch):
    from gradcheck_tool.integrations._batch_monitor import BatchMonitor

    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(BatchMonitor, "end_forward", broken)
    before = global_hooks()
    model = Regressor()
    cb = GradFlowCallback(every=1)
    with pytest.warns(RuntimeWarning, match="GradFlowCallback failed while ending a forward"):
        trainer = _fit(model, cb, tmp_path, max_steps=5)
    assert trainer.global_step == 5  # trained to the end
    assert cb.report is None
    assert global_hooks() == before and module_hooks(model) == 0
    assert all(math.isfinite(p.sum().item()) for p in model.parameters())

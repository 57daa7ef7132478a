"""flow --steps: the history, the trend, the overfit-one-batch verdict, and findings that appear
during training.
"""

from __future__ import annotations

import pytest
import torch
from models import (
    batch,
    load_sample,
)
from torch import nn
from torch.nn import functional as F

from gradcheck_tool import flow


def test_steps_give_history_trend_and_an_overfit_verdict() -> None:
    sample = load_sample("healthy_resnet_mlp.py")
    report = flow(
        sample.build_model(),
        sample.example_inputs(),
        loss_fn=sample.loss_fn,
        steps=40,
        optimizer="adam",
        lr=1e-2,
    )
    assert report.steps == 40 and len(report.history) == 40
    assert [h.step for h in report.history] == list(range(1, 41))
    assert report.overfit.applicable and report.overfit.reached
    assert report.overfit.last_loss < 0.01 * report.overfit.first_loss
    losses = [h.loss for h in report.history]
    assert losses[-1] < losses[0]
    first, last = report.trend["stem"]["grad_norm"]
    assert first == report.history[0].row("stem").grad_norm
    assert last == report.row("stem").grad_norm
    data = report.to_dict()
    assert len(data["history"]) == 40 and data["overfit"]["reached"] is True
    assert data["trend"]["stem"]["grad_norm"] == [first, last]


def test_a_model_that_cannot_fit_does_not_pass_the_overfit_check() -> None:
    model = nn.Linear(16, 10)
    x = batch(64, 16)
    labels = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    report = flow(
        model, x, loss_fn=lambda out, inp: F.cross_entropy(out, labels), steps=10, lr=1e-4
    )
    assert report.overfit.applicable and report.overfit.reached is False
    assert "not near zero" in report.overfit.message


def test_without_loss_fn_the_overfit_check_is_not_judged() -> None:
    report = flow(nn.Linear(4, 2), batch(8, 4), steps=3)
    assert report.overfit.applicable is False and report.overfit.reached is None
    assert "loss_fn" in report.overfit.message


def test_dead_relus_that_develop_during_training_are_found_at_the_last_step() -> None:
    # the loss pushes every hidden unit down (positive output weights); lr=1 overshoots, so
    # more and more units end up below zero for the whole batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
    with torch.no_grad():
        model[2].weight.fill_(1.0)
    report = flow(model, batch(64, 8), loss_fn=lambda out, inp: out.mean(), steps=4, lr=1.0)
    first = report.history[0].row("1").dead_fraction
    last = report.row("1").dead_fraction
    assert first < 0.5 < last
    (finding,) = report.findings_of("dead_relu")
    assert finding.step == report.steps and "at step 1" in finding.message


def test_steps_measure_each_update_through_the_optimizer_hooks() -> None:
    from torch.optim import optimizer as optim_hooks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    y = torch.arange(16) % 4
    hooks = len(optim_hooks._global_optimizer_pre_hooks)
    report = flow(
        model, batch(16, 16), loss_fn=lambda out, x: F.cross_entropy(out, y), steps=4, lr=0.1
    )
    assert len(optim_hooks._global_optimizer_pre_hooks) == hooks
    # plain SGD: Δw = lr·g, so each layer's ratio is lr·‖g‖/‖w‖ at the step it follows
    for h in report.history[:-1]:
        for key in ("0", "2"):
            row = h.row(key)
            assert row.update_ratio == pytest.approx(0.1 * row.grad_norm / row.weight_norm)
    assert report.history[-1].row("0").update_ratio is None  # no step after the last one
    assert not report.findings_of("update_too_large") and not report.findings_of("not_updated")

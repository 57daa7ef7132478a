"""The Monitor in real loops whose recorded gradients are not what the optimizer steps with:
AMP's GradScaler (gradients 65536× larger) and gradient clipping. Healthy SGD loops of both
kinds give no finding (Note [real steps] in findings/exploding.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradcheck_tool import Monitor


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )


@pytest.mark.parametrize(
    "growth_interval, steps",
    [(2000, 8), (1, 14)],  # the defaults; and a long run's growing scale (×2^13), compressed
)
def test_sgd_with_amps_grad_scaler_is_not_exploding(growth_interval: int, steps: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 32, generator=g), torch.randint(0, 4, (64,), generator=g)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", growth_interval=growth_interval)  # init 65536
    with Monitor(model) as mon:
        for _ in range(steps):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    if growth_interval == 1:
        assert scaler.get_scale() >= 65536 * 2**10  # the scale really grew, as in a long run
    report = mon.report()
    assert report["findings"] == []
    # what the table shows is the real step, not lr·‖g‖/‖w‖ of the scaled gradient (~1e2)
    ratios = [r["update_ratio"] for r in report["layers"] if r.get("update_ratio") is not None]
    assert ratios and max(ratios) < 0.1


def test_sgd_with_gradient_clipping_is_not_exploding() -> None:
    # unnormalised regression targets: raw gradients in the hundreds, clipped to norm 1
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = (x @ torch.randn(8, 1)) * 20 + 50
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Monitor(model) as mon:
        for _ in range(10):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    assert mon.report()["findings"] == []

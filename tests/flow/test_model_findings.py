"""gradtool flow's findings on user-like models: vanishing and exploding gradients, dead ReLUs,
saturation, NaN, parameters backward never reaches, and none on a healthy model. (Each
finding rule on hand-built samples: unit/test_findings.py.)

Every model is seeded and small; each test runs in well under a second or two.
"""

from __future__ import annotations

import pytest
import torch
from models import (
    LogOfNegatives,
    SeventyPercentDead,
    batch,
    sigmoid_mlp,
)
from torch import nn
from torch.nn import functional as F

from gradcheck_tool import flow
from gradcheck_tool.engines.flow import (
    FlowThresholds,
)

# --- user-like models ------------------------------------------------------------------------


def big_init_linear_stack(depth: int = 10, width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(width, width) for _ in range(depth)]
    for layer in layers:
        nn.init.normal_(layer.weight, 0.0, 1.0)
    return nn.Sequential(*layers)


class SaturatedTanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 64)
        self.squash = nn.Tanh()
        self.fc2 = nn.Linear(64, 64)
        self.calm = nn.Tanh()
        self.head = nn.Linear(64, 4)
        with torch.no_grad():
            self.fc1.weight.mul_(40.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.calm(self.fc2(self.squash(self.fc1(x)))))


class Residual(nn.Module):
    def __init__(self, width: int = 64, blocks: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
            )
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, 10)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


# --- each finding on a model that has it, none on a healthy one ------------------------------


def test_twenty_layer_sigmoid_mlp_has_vanishing_gradients() -> None:
    report = flow(sigmoid_mlp(), batch(64, 32))
    (finding,) = report.findings_of("vanishing")
    assert finding.layer == "0"  # the first Linear
    assert finding.value < 1e-6
    assert "exploding" not in report.kinds
    first, last = report.row("0"), report.row("40")
    assert first.grad_norm < 1e-8 * last.grad_norm


def test_deep_linear_stack_with_large_init_is_exploding() -> None:
    report = flow(big_init_linear_stack(), batch(64, 64))
    (finding,) = report.findings_of("exploding")
    assert finding.layer == "0"
    assert finding.value > 1e6
    assert "vanishing" not in report.kinds and "nan" not in report.kinds


def test_relu_with_seventy_percent_of_units_never_firing_is_dead_relu() -> None:
    report = flow(SeventyPercentDead(), batch(32, 16))
    row = report.row("act")
    assert row.kind == "activation" and row.type == "ReLU"
    assert row.dead_fraction == pytest.approx(0.70, abs=1e-9)
    assert row.units == 100 and row.unit == "feature"
    (finding,) = report.findings_of("dead_relu")
    assert (finding.layer, finding.key) == ("act", "act")
    assert finding.value == pytest.approx(0.70)
    assert "70.0%" in finding.message
    assert "LeakyReLU" in finding.fix


def test_tanh_driven_into_saturation_is_flagged_on_that_module() -> None:
    report = flow(SaturatedTanh(), batch(32, 16))
    findings = report.findings_of("saturation")
    assert [f.layer for f in findings] == ["squash"]
    assert report.row("squash").saturated_fraction > 0.5
    assert report.row("calm").saturated_fraction < 0.5


def test_log_of_negative_values_names_the_module_and_the_forward() -> None:
    report = flow(LogOfNegatives(), batch(8, 8))
    (finding,) = report.findings_of("nan")
    assert finding.layer == "logb"
    assert finding.where == "forward"
    assert "logb" in finding.message
    # the NaN must not be blamed on the layers around it
    assert report.kinds == ("nan",)


def test_healthy_residual_relu_mlp_has_no_findings() -> None:
    report = flow(
        Residual(),
        batch(64, 16),
        loss_fn=lambda out, x: F.cross_entropy(out, torch.arange(64) % 10),
    )
    assert report.findings == ()
    report = flow(Residual(), batch(64, 16))  # and with the default projection loss
    assert report.findings == ()


def test_thresholds_are_adjustable() -> None:
    report = flow(SeventyPercentDead(), batch(32, 16), thresholds=FlowThresholds(dead_fraction=0.8))
    assert report.findings_of("dead_relu") == ()


# --- no_grad ---------------------------------------------------------------------------------


def test_unused_and_detached_parameters_receive_no_gradient() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.detached = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)
            self.frozen = nn.Linear(4, 4).requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x) + self.detached(x).detach() + self.frozen(x)

    report = flow(Net(), batch(4, 4))
    by_layer = {f.layer: f for f in report.findings_of("no_grad")}
    assert set(by_layer) == {"detached", "unused"}
    assert "not reached by backward" in by_layer["detached"].message
    assert "never ran in forward" in by_layer["unused"].message
    assert report.row("frozen").frozen and "frozen" in report.row("frozen").note
    assert report.row("unused").order > report.row("used").order


# --- calibrated vanishing/exploding (#12; benchmarks/flow_calibration.py) --------------------


def mlp_initialised_with(std: float, depth: int = 6, width: int = 128) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(32, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
    return model


def cross_entropy(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, torch.arange(out.shape[0]) % 10)


def test_mlp_initialised_far_too_large_is_exploding_for_sgd_adam_and_the_projection() -> None:
    # the MLP: grad/weight ~1e3-1e4, no trend with depth (every layer scales alike)
    x = batch(16, 32)
    sgd = flow(mlp_initialised_with(1.0), x, loss_fn=cross_entropy)
    (f,) = sgd.findings_of("exploding")
    assert f.layer == "0" and f.value > f.threshold
    assert "one SGD step at lr 1.0e-02 would change 0 by" in f.message
    assert dict(f.evidence)["lr"] == 1e-2
    adam = flow(mlp_initialised_with(1.0), x, loss_fn=cross_entropy, optimizer="adam")
    (f,) = adam.findings_of("exploding")
    assert f.value > f.threshold and "the loss's gradient at the model output" in f.message
    (f,) = flow(mlp_initialised_with(1.0), x).findings_of("exploding")  # projection loss
    assert f.value > f.threshold
    # He init (std √(2/128) = 0.125), the same network: nothing
    for optimizer in ("sgd", "adam"):
        report = flow(mlp_initialised_with(0.125), x, loss_fn=cross_entropy, optimizer=optimizer)
        assert report.findings == ()


class ZeroInitResidual(nn.Module):
    """Residual blocks whose last BatchNorm scale starts at 0 (timm's zero_init_last)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        nn.init.zeros_(self.bn.weight)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        h = F.relu(h + self.bn(self.conv(h)))
        return self.head(h.mean((2, 3)))


def test_zero_initialised_residual_branch_is_not_a_missing_gradient() -> None:
    report = flow(ZeroInitResidual(), batch(8, 3, 8, 8))
    assert report.row("conv").grad_norm == 0.0  # exactly zero at init, by design
    assert report.findings == ()
    # after a step the scale has moved and the branch gets its gradient
    assert flow(ZeroInitResidual(), batch(8, 3, 8, 8), steps=2).findings == ()


def test_healthy_residual_mlp_has_no_findings_with_adam() -> None:
    report = flow(Residual(), batch(64, 16), loss_fn=cross_entropy, optimizer="adam")
    assert report.findings == ()

"""gradtool flow: the engine's findings, the hooks' manners, the Monitor, the CLI and the plot.

Every model is seeded and small; each test runs in well under a second or two.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as module_hooks
from typer.testing import CliRunner

import gradcheck_tool
from gradcheck_tool import FlowReport, Monitor, flow
from gradcheck_tool.cli import app
from gradcheck_tool.engines.flow import (
    ACTIVATIONS,
    FINDING_KINDS,
    FlowThresholds,
    activation_for_function,
    activation_for_module,
)
from gradcheck_tool.engines.flow.findings import parse_fail_on
from gradcheck_tool.errors import InputError, UserCodeError
from gradcheck_tool.formats.flow_table import flow_table, render_flow
from gradcheck_tool.formats.plot import plot_flow

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
runner = CliRunner()


# --- user-like models --------------------------------------------------------------------


def sigmoid_mlp(depth: int = 20, width: int = 32) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def big_init_linear_stack(depth: int = 10, width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(width, width) for _ in range(depth)]
    for layer in layers:
        nn.init.normal_(layer.weight, 0.0, 1.0)
    return nn.Sequential(*layers)


class SeventyPercentDead(nn.Module):
    """70 of the 100 hidden units have a bias of -100: they never fire."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 100)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(100, 4)
        with torch.no_grad():
            self.fc1.weight.mul_(0.1)
            self.fc1.bias[:70] = -100.0
            self.fc1.bias[70:] = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


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


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class LogOfNegatives(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 8)
        self.logb = Log()
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.logb(self.fc1(x)))


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


class ReusedInplace(nn.Module):
    """One nn.ReLU(inplace=True) used after two layers with different dead fractions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 10)
        self.b = nn.Linear(10, 8)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Linear(8, 2)
        with torch.no_grad():
            self.a.weight.mul_(0.01)
            self.b.weight.mul_(0.01)
            self.a.bias.copy_(torch.tensor([-9.0] * 2 + [9.0] * 8))  # 2 of 10 dead
            self.b.bias.copy_(torch.tensor([-9.0] * 6 + [9.0] * 2))  # 6 of 8 dead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.b(self.act(self.a(x)))))


def batch(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def hook_free(model: nn.Module) -> bool:
    for m in model.modules():
        for table in (
            m._forward_hooks,
            m._forward_pre_hooks,
            m._backward_hooks,
            m._backward_pre_hooks,
            m._forward_hooks_with_kwargs,
            m._forward_hooks_always_called,
            m._forward_pre_hooks_with_kwargs,
        ):
            if table:
                return False
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return False
    if torch._C._is_torch_function_mode_enabled():
        return False
    return all(p._backward_hooks is None for p in model.parameters())


# --- the issue's "done when" cases -----------------------------------------------------------


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


def test_healthy_sample_exits_zero_even_with_fail_on_all(tmp_path: Path) -> None:
    out = tmp_path / "flow.json"
    result = runner.invoke(
        app,
        ["flow", str(SAMPLES / "healthy_resnet_mlp.py"), "--fail-on", "all", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["findings"] == []
    assert "No findings" in result.output


# --- functional, in-place and reused activations -----------------------------------------------


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            self.fc1.weight.mul_(0.01)
            self.fc1.bias.copy_(torch.tensor([-5.0] * 3 + [5.0] * 5))  # 3 of 8 dead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = torch.sigmoid(self.fc2(x) * 100.0)  # saturated
        x = F.gelu(self.fc3(x))
        return self.head(x.relu())


def test_functional_activations_are_measured_and_attributed() -> None:
    report = flow(Functional(), batch(16, 6))
    acts = [r for r in report.layers if r.kind == "activation"]
    assert [(r.via, r.type) for r in acts] == [
        ("F.relu", "relu"),
        ("torch.sigmoid", "sigmoid"),
        ("F.gelu", "gelu"),
        ("Tensor.relu", "relu"),
    ]
    assert all(r.name == "" for r in acts)  # made in the model's own forward
    relu = acts[0]
    assert relu.dead_fraction == pytest.approx(3 / 8)
    assert relu.calls == 2 and relu.call == 1  # two relu calls: numbered, not merged
    assert acts[3].call == 2 and acts[3].key != relu.key
    assert acts[1].saturated_fraction > 0.9
    assert acts[2].inactive_fraction is not None and acts[2].dead_fraction is None
    # forward execution order: fc1, relu, fc2, sigmoid, fc3, gelu, relu, head
    order = [r.key for r in report.layers]
    assert order.index("fc1") < order.index(relu.key) < order.index("fc2")
    assert order.index(acts[3].key) < order.index("head")


def test_functional_call_inside_a_submodule_is_attributed_to_it() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.fc(x))

    model = nn.Sequential(Block(), Block())
    report = flow(model, batch(8, 4))
    acts = [r for r in report.layers if r.kind == "activation"]
    assert [(r.name, r.via, r.key) for r in acts] == [
        ("0", "torch.tanh", "0:tanh"),
        ("1", "torch.tanh", "1:tanh"),
    ]


def test_functional_call_inside_a_torch_composite_module_is_measured() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, activation="relu")
    model = nn.Sequential(layer, nn.Linear(16, 2))
    acts = [r for r in flow(model, batch(2, 5, 16)).layers if r.kind == "activation"]
    assert [(r.name, r.via) for r in acts] == [("0", "F.relu")]
    assert acts[0].units == 32  # the feed-forward width


def test_module_activation_is_not_double_counted_through_its_functional_call() -> None:
    report = flow(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), batch(8, 4))
    acts = [r for r in report.layers if r.kind == "activation"]
    assert [(r.key, r.via) for r in acts] == [("1", None)]


def test_inplace_reused_relu_is_reported_per_call_and_gradients_are_unchanged() -> None:
    model = ReusedInplace()
    x = batch(16, 8)
    report = flow(model, x, loss_fn=lambda out, inp: out.pow(2).sum())
    rows = [r for r in report.layers if r.kind == "activation"]
    assert [r.key for r in rows] == ["act#1", "act#2"]
    assert [(r.call, r.calls) for r in rows] == [(1, 2), (2, 2)]
    assert rows[0].dead_fraction == pytest.approx(0.2)
    assert rows[1].dead_fraction == pytest.approx(0.75)
    assert "[call 2/2]" in rows[1].display_name
    assert [f.key for f in report.findings_of("dead_relu")] == ["act#2"]
    # the hooks must not change the gradient: compare with a plain backward on a copy
    reference = copy.deepcopy(model)
    reference(x.clone()).pow(2).sum().backward()
    for name in ("a", "b", "out"):
        layer = getattr(reference, name)
        expected = torch.sqrt(layer.weight.grad.pow(2).sum() + layer.bias.grad.pow(2).sum())
        assert report.row(name).grad_norm == pytest.approx(expected.item(), rel=1e-5)


def test_conv_feature_maps_count_dead_channels() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    with torch.no_grad():
        conv.weight.mul_(0.01)
        conv.bias.copy_(torch.tensor([-9.0] * 2 + [9.0] * 6))  # 2 of 8 channels dead
    model = nn.Sequential(
        conv,
        nn.BatchNorm2d(8, affine=False, track_running_stats=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 2),
    )
    model[1] = nn.Identity()  # keep the channels' sign as the conv made it
    report = flow(model, batch(4, 3, 8, 8))
    relu = report.row("2")
    assert relu.unit == "channel" and relu.units == 8
    assert relu.dead_fraction == pytest.approx(0.25)


# --- NaN: where and which ----------------------------------------------------------------------


def test_nan_made_by_a_parent_before_calling_a_child_names_the_parent() -> None:
    class Parent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.child = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.child(x / 0.0 * 0.0)  # NaN, made here before the child runs

    model = nn.Sequential(nn.Linear(4, 4), Parent())
    (finding,) = flow(model, batch(4, 4)).findings_of("nan")
    assert finding.layer == "1" and finding.where == "forward"
    assert "before passing them to 1.child" in finding.message


def test_nan_in_the_inputs_is_reported_as_the_inputs() -> None:
    x = batch(4, 4)
    x[0, 0] = float("nan")
    (finding,) = flow(nn.Linear(4, 2), x).findings_of("nan")
    assert finding.layer == "(inputs)" and finding.where == "inputs"


def test_nan_in_the_backward_names_the_module_whose_backward_made_it() -> None:
    report = gradcheck_tool.flow(
        _load_sample("nan_backward_norm.py").build_model(),
        _load_sample("nan_backward_norm.py").example_inputs(),
    )
    (finding,) = report.findings_of("nan")
    assert (finding.layer, finding.where) == ("magnitude", "backward")
    assert math.isnan(report.row("embed").grad_norm)
    json.dumps(report.to_dict(), allow_nan=False)  # NaN is written as a string, not NaN


def test_nonfinite_loss_with_finite_output_blames_the_loss() -> None:
    report = flow(nn.Linear(4, 2), batch(4, 4), loss_fn=lambda out, x: torch.log(out - 100).sum())
    (finding,) = report.findings_of("nan")
    assert finding.layer == "(loss)" and finding.where == "loss"


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


# --- the user's model is a guest -------------------------------------------------------------


@pytest.mark.parametrize("steps,optimizer", [(1, "sgd"), (3, "adam")])
def test_users_model_rng_and_mode_are_left_as_found(steps: int, optimizer: str) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.ReLU(inplace=True), nn.Linear(8, 2))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    attrs = {id(m): set(vars(m)) for m in model.modules()}
    x = batch(8, 4)
    x_before = x.clone()

    flow(model, x, steps=steps, optimizer=optimizer)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and not any(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])
    assert hook_free(model)
    assert all(set(vars(m)) == attrs[id(m)] for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x_before)
    assert torch.is_grad_enabled()


def test_runs_in_the_models_own_dtype() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).to(torch.bfloat16)
    report = flow(model, batch(8, 4).to(torch.bfloat16))
    assert report.dtype == "bfloat16"
    assert report.row("0").grad_norm > 0
    assert next(model.parameters()).dtype == torch.bfloat16


def test_forward_errors_name_the_module_that_raised() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("shape mismatch in my code")

    model = nn.Sequential(nn.Linear(4, 4), Broken())
    with pytest.raises(UserCodeError, match=r"in 1: ValueError: shape mismatch"):
        flow(model, batch(2, 4))
    assert hook_free(model)


def test_a_failing_loss_fn_is_the_users_error_and_leaves_nothing_behind() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    def loss_fn(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise KeyError("labels")

    with pytest.raises(UserCodeError, match="loss_fn.*KeyError"):
        flow(model, batch(2, 4), loss_fn=loss_fn)
    assert hook_free(model)


def test_device_option_moves_the_copy_and_inputs() -> None:
    from gradcheck_tool.engines.flow import run_flow

    report = run_flow(nn.Linear(4, 2), (batch(3, 4),), {}, device="cpu")
    assert report.device == "cpu" and report.row("").grad_norm > 0
    with pytest.raises(InputError, match="device"):
        run_flow(nn.Linear(4, 2), (batch(3, 4),), {}, device="no-such-device")


def test_flow_rejects_what_it_cannot_measure() -> None:
    with pytest.raises(InputError, match="needs an nn.Module"):
        flow(lambda x: x, batch(2, 2))
    with pytest.raises(InputError, match="optimizer"):
        flow(nn.Linear(2, 2), batch(2, 2), steps=2, optimizer="lbfgs")
    with pytest.raises(InputError, match="steps"):
        flow(nn.Linear(2, 2), batch(2, 2), steps=0)


# --- steps: history, trend, overfit ----------------------------------------------------------


def test_steps_give_history_trend_and_an_overfit_verdict() -> None:
    sample = _load_sample("healthy_resnet_mlp.py")
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


# --- the registry ------------------------------------------------------------------------------


def test_registry_maps_module_types_and_functions_and_says_none_otherwise() -> None:
    for spec in ACTIVATIONS:
        for module_type in spec.module_types:
            assert activation_for_module(module_type()) is spec
    assert activation_for_module(nn.ReLU6()).name == "relu6"  # not its base class Hardtanh
    assert activation_for_module(nn.Hardtanh()).name == "hardtanh"
    assert activation_for_module(nn.Softmax(dim=-1)) is None
    assert activation_for_module(nn.Linear(2, 2)) is None

    class MyReLU(nn.ReLU):
        pass

    assert activation_for_module(MyReLU()).name == "relu"
    for func, name in (
        (F.relu, "relu"),
        (torch.relu, "relu"),
        (torch.Tensor.relu, "relu"),
        (F.leaky_relu, "leaky_relu"),
        (F.gelu, "gelu"),
        (F.silu, "silu"),
        (F.elu, "elu"),
        (torch.sigmoid, "sigmoid"),
        (torch.tanh, "tanh"),
    ):
        assert activation_for_function(func).name == name
    assert activation_for_function(torch.matmul) is None


# --- Monitor ---------------------------------------------------------------------------------


def mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    with torch.no_grad():
        model[0].bias[:8] -= 3.0  # a quarter of the first ReLU's units start (nearly) dead
    return model


def train(model: nn.Module, steps: int, *, validate: bool = False) -> list[dict]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch(32, 16), torch.arange(32) % 4
    grads = []
    for _ in range(steps):
        with torch.no_grad():  # an independent count of the first ReLU's dead units
            dead = (model[0](x) <= 0).all(dim=0).float().mean().item()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        grads[-1]["dead"] = dead
        opt.step()
        if validate:
            with torch.no_grad():
                model(x)
    return grads


def test_monitor_reports_the_flow_json_plus_history_and_leaves_no_trace() -> None:
    model = mlp()
    attrs = {id(m): set(vars(m)) for m in model.modules()}
    with Monitor(model, every=3) as mon:
        grads = train(model, 10, validate=True)
    report = mon.report()
    assert hook_free(model)
    assert all(set(vars(m)) == attrs[id(m)] for m in model.modules())
    assert report["source"] == "monitor" and report["command"] == "flow"
    assert report["steps_seen"] == 10  # the no_grad validation calls are not steps
    assert [h["step"] for h in report["history"]] == [1, 4, 7, 10]
    flow_keys = set(flow(mlp(), batch(32, 16)).to_dict())
    assert flow_keys <= set(report)
    # the recorded gradient norms are the loop's own gradients at those steps
    for h in report["history"]:
        g = grads[h["step"] - 1]
        expected = torch.sqrt(g["2.weight"].pow(2).sum() + g["2.bias"].pow(2).sum()).item()
        assert h["rows"]["2"]["grad_norm"] == pytest.approx(expected, rel=1e-5)
        assert h["rows"]["1"]["dead_fraction"] == pytest.approx(g["dead"])
    json.dumps(report, allow_nan=False)


def test_monitor_does_not_change_training() -> None:
    watched, plain = mlp(), mlp()
    with Monitor(watched, every=1):
        train(watched, 5)
    train(plain, 5)
    for a, b in zip(watched.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_monitor_hooks_are_off_on_steps_it_does_not_record() -> None:
    seen: list[int] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(
                len(self._forward_hooks)
                + len(self._forward_pre_hooks)
                + len(module_hooks._global_forward_hooks)
                + len(module_hooks._global_forward_pre_hooks)
            )
            return x

    model = nn.Sequential(nn.Linear(16, 4), Probe())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, every=3):
        for _ in range(7):
            opt.zero_grad()
            model(batch(4, 16)).pow(2).sum().backward()
            opt.step()
    assert [n > 0 for n in seen] == [True, False, False, True, False, False, True]


def test_monitor_reads_back_once_at_report_not_during_training(monkeypatch) -> None:
    calls = {"tolist": 0, "item": 0}
    real_tolist, real_item = torch.Tensor.tolist, torch.Tensor.item

    def tolist(self):  # noqa: ANN001, ANN202
        calls["tolist"] += 1
        return real_tolist(self)

    def item(self):  # noqa: ANN001, ANN202
        calls["item"] += 1
        return real_item(self)

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch(32, 16), torch.arange(32) % 4
    with Monitor(model, every=1) as mon:
        monkeypatch.setattr(torch.Tensor, "tolist", tolist)
        monkeypatch.setattr(torch.Tensor, "item", item)
        for _ in range(6):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        during = dict(calls)
        report = mon.report()
    assert during == {"tolist": 0, "item": 0}
    assert calls == {"tolist": 1, "item": 0}  # one transfer for all six recorded steps
    assert report["steps"] == 6


def test_monitor_finds_dead_relus_and_survives_an_exception_in_the_loop() -> None:
    model = SeventyPercentDead()
    with pytest.raises(RuntimeError, match="user stops"):
        with Monitor(model) as mon:
            model(batch(32, 16)).sum().backward()
            raise RuntimeError("user stops")
    assert hook_free(model)
    report = mon.flow_report()
    assert isinstance(report, FlowReport)
    (finding,) = report.findings_of("dead_relu")
    assert finding.layer == "act" and finding.value == pytest.approx(0.7)


def test_monitor_cleans_up_when_the_forward_raises() -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("boom")

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Fails())
    with pytest.raises(ValueError):
        with Monitor(model):
            model(batch(2, 4))
    assert hook_free(model)
    assert not torch._C._is_torch_function_mode_enabled()


def test_monitor_sees_functional_activations_and_the_first_nan() -> None:
    model = LogOfNegatives()
    with Monitor(model, every=1) as mon:
        model(batch(8, 8)).sum().backward()
    report = mon.flow_report()
    (finding,) = report.findings_of("nan")
    assert finding.layer == "logb"

    model = Functional()
    with Monitor(model) as mon:
        model(batch(16, 6)).sum().backward()
    rows = [r for r in mon.flow_report().layers if r.kind == "activation"]
    assert [r.via for r in rows] == ["F.relu", "torch.sigmoid", "F.gelu", "Tensor.relu"]


# --- JSON, rendering, plot, CLI ------------------------------------------------------------------


def test_json_has_the_issues_schema() -> None:
    data = flow(SeventyPercentDead(), batch(32, 16)).to_dict()
    assert {"tool", "version", "command", "target", "layers", "findings"} <= set(data)
    assert (data["tool"], data["command"]) == ("gradtool", "flow")
    for row in data["layers"]:
        assert {
            "name",
            "type",
            "grad_norm",
            "weight_norm",
            "dead_fraction",
            "saturated_fraction",
        } <= set(row)
    assert [r["name"] for r in data["layers"]] == ["fc1", "act", "fc2"]
    assert {"kind", "layer", "message"} <= set(data["findings"][0])
    assert "history" not in data  # only with steps > 1
    json.dumps(data, allow_nan=False)


def test_render_shows_every_row_and_the_findings() -> None:
    from rich.console import Console

    report = flow(ReusedInplace(), batch(16, 8))
    console = Console(record=True, width=160, color_system=None)
    render_flow(report, console)
    text = console.export_text()
    for needle in ("act [call 1/2]", "act [call 2/2]", "dead_relu", "75.0%", "fix:"):
        assert needle in text
    assert flow_table(report).row_count == len(report.layers)


def test_fail_on_parsing() -> None:
    assert parse_fail_on("nan, exploding") == {"nan", "exploding"}
    assert parse_fail_on("all") == set(FINDING_KINDS)
    assert parse_fail_on(None) == set()
    with pytest.raises(InputError, match="nope"):
        parse_fail_on("nan,nope")


def test_plot_is_written_as_png_and_svg(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    report = flow(SeventyPercentDead(), batch(32, 16), steps=2)
    png = plot_flow(report, tmp_path / "flow.png")
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    svg = plot_flow(report, tmp_path / "flow.svg").read_text()
    assert "gradient norm" in svg and "dead" in svg
    with pytest.raises(InputError):
        plot_flow(report, tmp_path / "flow.jpg")


@pytest.mark.parametrize(
    "sample,kind,layer",
    [
        ("exploding_linear.py", "exploding", "0"),
        ("saturated_tanh.py", "saturation", "squash1"),
        ("nan_log.py", "nan", "compress"),
        ("nan_backward_norm.py", "nan", "magnitude"),
        ("dead_relu_mlp.py", "dead_relu", ""),
        ("deep_sigmoid_mlp.py", "vanishing", "0"),
    ],
)
def test_cli_sample_models_exit_codes_and_json(
    tmp_path: Path, sample: str, kind: str, layer: str
) -> None:
    out = tmp_path / "report.json"
    target = str(SAMPLES / sample)
    result = runner.invoke(app, ["flow", target, "--json", str(out)])
    assert result.exit_code == 0, result.output  # findings alone do not fail the run
    data = json.loads(out.read_text())
    assert kind in {f["kind"] for f in data["findings"]}
    assert layer in {f["layer"] for f in data["findings"] if f["kind"] == kind}
    failing = runner.invoke(app, ["flow", target, "--fail-on", kind])
    assert failing.exit_code == 1, failing.output
    others = ",".join(k for k in FINDING_KINDS if k not in {f["kind"] for f in data["findings"]})
    if others:
        assert runner.invoke(app, ["flow", target, "--fail-on", others]).exit_code == 0


def test_cli_steps_plot_and_errors(tmp_path: Path) -> None:
    healthy = str(SAMPLES / "healthy_resnet_mlp.py")
    png = tmp_path / "flow.png"
    result = runner.invoke(
        app, ["flow", healthy, "--steps", "5", "--optimizer", "adam", "--plot", str(png)]
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trend, step 1 → 5" in result.output and "overfit one batch" in result.output
    assert runner.invoke(app, ["flow", healthy, "--fail-on", "nonsense"]).exit_code == 2
    assert runner.invoke(app, ["flow", healthy, "--plot", str(tmp_path / "x.gif")]).exit_code == 2
    assert runner.invoke(app, ["flow", healthy, "--optimizer", "rmsprop"]).exit_code == 2
    function = runner.invoke(app, ["flow", str(SAMPLES / "custom_activation.py")])
    assert function.exit_code == 2 and "needs an nn.Module" in function.output
    stdout = runner.invoke(app, ["flow", healthy, "--json", "-"])
    assert stdout.exit_code == 0 and json.loads(stdout.stdout)["command"] == "flow"


def test_thresholds_are_adjustable() -> None:
    report = flow(SeventyPercentDead(), batch(32, 16), thresholds=FlowThresholds(dead_fraction=0.8))
    assert report.findings_of("dead_relu") == ()


def _load_sample(name: str):  # noqa: ANN202
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"flow_sample_{name[:-3]}", SAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""Activations in flow: modules and functional calls (F.relu, torch.tanh, Tensor.relu) measured
and attributed to the module that made them, in-place and reused activations reported per
call, channels of a feature map; and the registry that maps them to their statistics.
"""

from __future__ import annotations

import copy

import pytest
import torch
from models import (
    Functional,
    ReusedInplace,
    batch,
)
from torch import nn
from torch.nn import functional as F

from gradcheck_tool import flow
from gradcheck_tool.engines.flow import (
    ACTIVATIONS,
    activation_for_function,
    activation_for_module,
)

# --- functional, in-place and reused activations ---------------------------------------------


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


# --- the registry ----------------------------------------------------------------------------


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

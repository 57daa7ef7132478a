"""Saved-bytes accounting against hand-computed values and torch's own saved tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradcheck_tool.engines.memory import run_memory

F32 = 4  # bytes


def total_only(out, *inputs):  # a loss that saves nothing: sum's backward needs no tensor
    return out.sum()


def rows(report):
    return {m.name: m for m in report.modules}


def test_linear_saves_its_input_and_the_models_input_is_not_an_activation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    report = run_memory(model, (x,), {}, loss_fn=total_only)
    r = rows(report)
    assert r["0"].saved_bytes == 0  # it saves x: the step's input
    assert report.input_bytes == 5 * 8 * F32
    assert r["1"].saved_bytes == 5 * 16 * F32  # the first layer's output, B·in·4
    assert report.saved_bytes_total == 5 * 16 * F32
    assert report.loss_saved_bytes == 0
    assert r["0"].param_bytes == (8 * 16 + 16) * F32
    assert r["1"].grad_bytes == (16 * 4 + 4) * F32
    assert r[""].param_bytes == report.param_bytes_total == ((8 * 16 + 16) + (16 * 4 + 4)) * F32


def test_relu_saves_its_output_and_a_storage_saved_twice_counts_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    report = run_memory(model, (x,), {}, loss_fn=total_only)
    r = rows(report)
    # ReLU saves its output; the next Linear saves the same tensor as its input
    assert r["1"].saved_bytes == r["2"].saved_bytes == 5 * 16 * F32
    assert r[""].saved_bytes == report.saved_bytes_total == 5 * 16 * F32
    # the held measurement sees the same storage alive, once, and the output the loss keeps
    # is not kept (sum saves nothing)
    assert report.held_bytes == 5 * 16 * F32


class Views(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 16)

    def forward(self, x):
        h = self.lin(x)
        a, b = h.view(-1), h[1:3]  # two views of one storage, each saved by a mul
        return (a * a).sum() + (b * b).sum()


def test_views_of_one_storage_count_once():
    torch.manual_seed(0)
    report = run_memory(Views(), (torch.randn(5, 8),), {}, loss_fn=lambda out, x: out)
    r = rows(report)
    assert r[""].own_saved_bytes == 5 * 16 * F32  # not 2× (a saved twice) nor 3× (b too)
    assert report.saved_bytes_total == 5 * 16 * F32


def torch_saved_bytes(model, x) -> int:
    """The reference: every `_saved_*` tensor on the autograd graph, read from torch's own
    nodes, once per storage; parameters, buffers (BatchNorm's running statistics) and the
    input left out. Run under an identity
    saved-tensors hook, as the measurement is (some kernels choose their path by it)."""
    fixed = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), x]}
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        out = model(x)
    seen, todo, storages = set(), [out.sum().grad_fn], {}
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            value = getattr(node, attr)
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor):
                    s = t.untyped_storage()
                    if s.data_ptr() not in fixed:
                        storages[s.data_ptr()] = s.nbytes()
        todo.extend(n for n, _ in node.next_functions)
    return sum(storages.values())


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, 0.0), 2), (8, 2, 32)),
        (
            lambda: nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 8 * 8, 3),
            ),
            (2, 3, 16, 16),
        ),
    ],
    ids=["transformer", "cnn"],
)  # fmt: skip
def test_saved_total_matches_torchs_saved_tensors(build, shape):
    torch.manual_seed(0)
    model = build().train()
    x = torch.randn(*shape)
    report = run_memory(model, (x,), {}, loss_fn=total_only)
    expected = torch_saved_bytes(model, x)
    assert expected > 0
    assert report.saved_bytes_total == expected
    # the held measurement is independent of the hooks: within 5% (it also sees storages a
    # node keeps outside its saved tensors)
    assert abs(report.held_bytes - expected) <= 0.05 * expected


def test_the_users_model_and_state_are_left_as_found():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    x = torch.randn(3, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    grad_mode = torch.is_grad_enabled()
    run_memory(model, (x,), {}, apply_checkpoint=True, checkpoint=["1"])
    assert not model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all("forward" not in vars(m) for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.is_grad_enabled() == grad_mode


class WritesItsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        x.mul_(2.0)  # in place, on the input it was given
        return self.lin(x)


def test_a_forward_that_writes_into_its_input_leaves_the_users_tensor_alone():
    x = torch.ones(2, 3)
    run_memory(WritesItsInput(), (x,), {}, apply_checkpoint=True, checkpoint=["lin"])
    assert torch.equal(x, torch.ones(2, 3))

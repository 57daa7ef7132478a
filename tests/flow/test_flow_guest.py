"""flow and the user's objects: the model, its inputs, the RNGs and modes left as found, the
model's own dtype, the user's errors named, and what flow cannot measure refused.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from models import (
    batch,
    hook_free,
)
from torch import nn

from gradcheck_tool import flow
from gradcheck_tool.errors import InputError, UserCodeError


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

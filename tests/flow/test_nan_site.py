"""Where the first NaN appears and who made it: a parent's forward, the inputs, a module's
backward, the loss.
"""

from __future__ import annotations

import json
import math

import torch
from models import (
    batch,
    load_sample,
)
from torch import nn

import gradcheck_tool
from gradcheck_tool import flow


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
        load_sample("nan_backward_norm.py").build_model(),
        load_sample("nan_backward_norm.py").example_inputs(),
    )
    (finding,) = report.findings_of("nan")
    assert (finding.layer, finding.where) == ("magnitude", "backward")
    assert math.isnan(report.row("embed").grad_norm)
    json.dumps(report.to_dict(), allow_nan=False)  # NaN is written as a string, not NaN


def test_nonfinite_loss_with_finite_output_blames_the_loss() -> None:
    report = flow(nn.Linear(4, 2), batch(4, 4), loss_fn=lambda out, x: torch.log(out - 100).sum())
    (finding,) = report.findings_of("nan")
    assert finding.layer == "(loss)" and finding.where == "loss"

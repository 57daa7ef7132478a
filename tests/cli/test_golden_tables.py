"""The rendered check and flow tables of the sample models at 80 columns, pinned in
tests/golden/ (refresh with `pytest --update-golden`, then review the diff): a change in
rendering shows in review."""

from __future__ import annotations

import dataclasses
import io

import pytest
from conftest import SAMPLES, check_file

from gradcheck_tool import flow, formats
from gradcheck_tool.loading import load_target


def table(report) -> str:
    out = io.StringIO()
    # timings differ run to run: pinned at 0
    formats.write(dataclasses.replace(report, seconds=0.0), formats.OutputFormat.TABLE, out, 80)
    return out.getvalue()


# (no convolutions: their threaded kernels may round differently from run to run)
@pytest.mark.parametrize(
    "spec",
    ["exercise_net.py", "custom_activation.py", "custom_activation_buggy.py", "gate.py:gate"],
)
def test_check_table(golden, spec):
    name = spec.replace(".py", "").replace(":", "_")
    golden(f"check_{name}.txt", table(check_file(f"{SAMPLES / spec}")))


@pytest.mark.parametrize(
    "sample, steps",
    [("dead_relu_mlp", 1), ("healthy_resnet_mlp", 1), ("nan_log", 1), ("deep_sigmoid_mlp", 3)],
)
def test_flow_table(golden, sample, steps):
    loaded = load_target(str(SAMPLES / f"{sample}.py"))
    report = flow(loaded.obj, loaded.example_inputs, loss_fn=loaded.loss_fn, steps=steps)
    golden(f"flow_{sample}_steps{steps}.txt", table(report))

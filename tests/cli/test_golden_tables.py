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
    "spec, passed",
    [
        ("exercise_net.py", True),
        ("custom_activation.py", True),
        ("custom_activation_buggy.py", False),
        ("gate.py:gate", True),
    ],
)
def test_check_table(golden, spec, passed):
    report = check_file(f"{SAMPLES / spec}")
    assert report.passed is passed  # the table shows the verdict the sample is known for
    text = table(report)
    assert ("PASS:" if passed else "FAIL:") in text
    golden(f"check_{spec.replace('.py', '').replace(':', '_')}.txt", text)


@pytest.mark.parametrize(
    "sample, steps, kinds",
    [
        ("dead_relu_mlp", 1, ("dead_relu",)),
        ("healthy_resnet_mlp", 1, ()),
        ("nan_log", 1, ("nan",)),
        ("deep_sigmoid_mlp", 3, ("vanishing",)),
    ],
)
def test_flow_table(golden, sample, steps, kinds):
    loaded = load_target(str(SAMPLES / f"{sample}.py"))
    report = flow(loaded.obj, loaded.example_inputs, loss_fn=loaded.loss_fn, steps=steps)
    assert report.kinds == kinds
    text = table(report)
    assert all(kind in text for kind in kinds) and ("No findings" in text) == (not kinds)
    golden(f"flow_{sample}_steps{steps}.txt", text)

"""A file that builds its model (at import, in build_model()) or its inputs from the global
RNG without seeding it: the runner seeds the global RNGs from --seed while it loads the
file, so every run (and every process of `flow --nproc`, test_processes.py) builds the same
weights, and restores the caller's RNG states afterwards (the pytest plugin runs inside the
user's own process)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gradcheck_tool.runner import run_target

NPROC = Path(__file__).resolve().parents[1] / "fixtures" / "flow_nproc"


def _run(command: str, file: Path, **options) -> dict:
    run = run_target(command, str(file), options)
    assert run.report is not None, run.error
    return dataclasses.replace(run.report, seconds=0.0).to_dict()


def _rng_states() -> tuple:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].tolist()


def _same_states(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


@pytest.mark.parametrize(
    ("command", "file"),
    [
        ("flow", NPROC / "unseeded_seq.py"),  # build_model() and example_inputs() unseeded
        ("flow", NPROC / "unseeded_at_import.py"),  # the model built at import
        ("check", NPROC / "unseeded_at_import.py"),
    ],
)
def test_an_unseeded_file_gives_the_same_report_every_run(command, file):
    _run(command, file)  # imports first (importing rich draws from Python's random once)
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    kept = _rng_states()
    first = _run(command, file)
    assert _same_states(_rng_states(), kept)  # the caller's RNGs as they were
    torch.rand(7)  # the caller's RNG moves on between the runs
    assert _run(command, file) == first
    assert _run(command, file, seed=5) != first  # --seed is what the weights come from


def test_a_model_built_at_import_is_seeded_from_seed():
    """The same weights as the file imported right after torch.manual_seed(seed)."""
    from gradcheck_tool._guest import seeded_rng
    from gradcheck_tool.runner import load_seeded

    kept = torch.get_rng_state()
    loaded, (x,), _ = load_seeded(str(NPROC / "unseeded_at_import.py"), {}, 3)
    assert torch.equal(torch.get_rng_state(), kept)
    with seeded_rng(3):
        expected = torch.nn.Linear(4, 6)  # the file's first layer, built first
        torch.nn.Linear(6, 2)
        expected_x = torch.randn(4, 4)
    assert torch.equal(loaded.obj[0].weight, expected.weight)
    assert torch.equal(x, expected_x)

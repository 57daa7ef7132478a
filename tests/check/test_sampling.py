"""Large tensors: random directions by default (Note [directions]; tests/check/
test_directions.py), a sample of coordinates plus a random-direction check with samples=,
every coordinate with full=True; a bug in a sampled tensor is still caught."""

from __future__ import annotations

import torch
from conftest import (
    BUGS,
    CORRECT,
    assert_all_pass,
    failing,
    one_entry_wrong,
)

from gradcheck_tool import check
from gradcheck_tool.loading import load_target
from gradcheck_tool.options import DEFAULT_DIRECTIONS


def test_six_million_parameter_mlp_is_checked_along_directions_and_passes():
    loaded = load_target(str(CORRECT / "big_mlp.py"))
    assert sum(p.numel() for p in loaded.obj.parameters()) > 6_000_000
    report = check(loaded.obj, loaded.example_inputs)
    assert_all_pass(report)
    weight = report.result("2.weight")
    # every one of its 4M entries at once, along two random directions; no coordinate
    assert (weight.checked, weight.directions) == (0, DEFAULT_DIRECTIONS)
    assert weight.direction_error is not None and weight.direction_error <= 1e-5


def test_samples_asks_for_coordinates_as_before():
    loaded = load_target(str(CORRECT / "big_mlp.py"))
    report = check(loaded.obj, loaded.example_inputs, samples=16)
    assert_all_pass(report)
    weight = report.result("2.weight")
    assert 1 <= weight.checked < weight.numel  # a sample of its 4M coordinates ...
    assert weight.direction_error is not None  # ... plus a random-direction check
    assert "sampled" in weight.note and weight.directions == 0


def test_full_checks_every_coordinate():
    # 20.5k entries in one weight: sampled by default, every coordinate with full=True.
    model = torch.nn.Sequential(torch.nn.Linear(205, 100), torch.nn.Tanh(), torch.nn.Linear(100, 1))
    x = torch.randn(2, 205, generator=torch.Generator().manual_seed(0))
    sampled = check(model, x, samples=16)
    assert sampled.passed
    assert sampled.result("0.weight").checked < 20_500
    full = check(model, x, full=True)
    assert full.passed
    assert all(r.checked == r.numel for r in full.results)


def test_bug_in_a_large_sampled_tensor_is_still_caught():
    # 30k + 300 elements: past the size where every coordinate is checked by default.
    buggy = load_target(f"{BUGS / 'half_dropped.py'}:Buggy").obj
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(100, 300, generator=generator)
    w = torch.randn(300, generator=generator)
    report = check(buggy, (x, w))
    assert failing(report) == {"w"}
    assert report.result("x").checked < report.result("x").numel  # sampled, not full
    assert report.result("w").checked >= 1


def test_bug_hidden_from_the_sample_is_caught_by_the_direction_check():
    # One coordinate of a 30k-entry gradient is dropped: the stratified sample (and the
    # largest analytic entries) very likely miss it; the random-direction check does not.
    x = torch.randn(200, 150, generator=torch.Generator().manual_seed(4))
    report = check(one_entry_wrong(12_345), x, samples=16)
    result = report.result("x")
    assert result.checked < result.numel
    assert not result.passed
    assert result.direction_error is not None and result.direction_error > 1e-5

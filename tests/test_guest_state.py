"""The user's objects are guests: check() leaves model, inputs and global state as found,
and the same target gives the same report."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import BUGS, CORRECT, MODEL_BUGS, without_timing
from models import GuestNet, assert_same, snapshot
from torch import nn

from gradcheck_tool import check
from gradcheck_tool.loading import load_target


def make_guest() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = GuestNet().train()
    model.head.eval()  # mixed modes must survive too
    x = torch.randn(4, 5)
    return model, x


def test_model_and_inputs_untouched():
    model, x = make_guest()
    x_before = x.clone()
    before = snapshot(model)
    report = check(model, x)
    assert report.passed
    assert_same(before, snapshot(model))
    assert torch.equal(x, x_before) and x.dtype == torch.float32 and not x.requires_grad
    assert x.grad is None
    # the frozen layer is not checked, every parameter that requires grad is
    names = {r.name for r in report.results}
    assert "frozen.weight" not in names and {"layer.weight", "norm.weight", "head.bias"} <= names


def test_existing_grads_are_left_as_they_were():
    model, x = make_guest()
    model(x).sum().backward()
    before = snapshot(model)
    assert before["grads"]["layer.weight"] is not None
    check(model, x)
    assert_same(before, snapshot(model))


def test_float32_model_stays_float32():
    model, x = make_guest()
    check(model, x)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.norm.running_mean.dtype == torch.float32


def global_state() -> dict:
    return {
        "torch": torch.get_rng_state().clone(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "dtype": torch.get_default_dtype(),
        "grad": torch.is_grad_enabled(),
    }


def assert_global_state(before: dict) -> None:
    after = global_state()
    assert torch.equal(before["torch"], after["torch"])
    assert before["python"] == after["python"]
    np_before, np_after = before["numpy"], after["numpy"]
    assert np_before[0] == np_after[0] and np.array_equal(np_before[1], np_after[1])
    assert np_before[2:] == np_after[2:]
    assert before["dtype"] == after["dtype"]
    assert before["grad"] == after["grad"]


def test_global_rng_dtype_and_grad_mode_unchanged():
    model, x = make_guest()
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    before = global_state()
    check(model, x)
    assert_global_state(before)


def test_unchanged_even_when_the_check_fails():
    loaded = load_target(f"{BUGS / 'sign_flipped.py'}:Buggy")
    before = global_state()
    assert not check(loaded.obj, loaded.example_inputs).passed
    assert_global_state(before)
    loaded = load_target(str(MODEL_BUGS / "detached_weight.py"))  # builds a model: uses RNG
    before = global_state()
    model_before = snapshot(loaded.obj)
    assert not check(loaded.obj, loaded.example_inputs).passed
    assert_same(model_before, snapshot(loaded.obj))
    assert_global_state(before)


@pytest.mark.parametrize("grad_enabled", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_dtype_and_grad_mode_as_the_user_set_them(grad_enabled, dtype):
    model, x = make_guest()
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.set_grad_enabled(grad_enabled):
            report = check(model, x)
            assert torch.is_grad_enabled() is grad_enabled
            assert torch.get_default_dtype() == dtype
        assert report.passed  # checking works under no_grad too
    finally:
        torch.set_default_dtype(previous)


def test_batchnorm_running_stats_do_not_reach_the_users_model():
    model, x = make_guest()
    mean, var = model.norm.running_mean.clone(), model.norm.running_var.clone()
    tracked = model.norm.num_batches_tracked.clone()
    check(model, x)
    assert torch.equal(model.norm.running_mean, mean)
    assert torch.equal(model.norm.running_var, var)
    assert torch.equal(model.norm.num_batches_tracked, tracked)


# --- determinism --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        str(CORRECT / "dropout_mlp.py"),
        str(CORRECT / "batchnorm_train.py"),
        f"{BUGS / 'layernorm_missing_term.py'}:Buggy",
    ],
)
def test_same_target_twice_gives_the_same_report(spec):
    # Loaded once: building a model from the file draws from the global RNG, so two loads in
    # one process give two different models (cli/test_table_and_json.py checks two fresh
    # processes agree).
    loaded = load_target(spec)
    first = check(loaded.obj, loaded.example_inputs, loss_fn=loaded.loss_fn)
    second = check(loaded.obj, loaded.example_inputs, loss_fn=loaded.loss_fn)
    assert without_timing(first) == without_timing(second)
    assert "seconds" in first.to_dict()


def test_sampled_coordinates_are_the_same_twice():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(205, 100), nn.Tanh(), nn.Dropout(0.2), nn.Linear(100, 1))
    x = torch.randn(2, 205)
    first, second = check(model, x), check(model, x)
    assert first.result("0.weight").checked < first.result("0.weight").numel
    assert without_timing(first) == without_timing(second)


def test_same_model_object_twice_gives_the_same_report():
    model, x = make_guest()
    assert without_timing(check(model, x)) == without_timing(check(model, x))


def test_seed_is_part_of_the_contract():
    model, x = make_guest()
    a, b = check(model, x, seed=1), check(model, x, seed=1)
    assert without_timing(a) == without_timing(b)
    assert a.passed and check(model, x, seed=2).passed


# --- TF32 flags: exact_float32 (used by float32 checks on CUDA) restores what it changes -----


def test_exact_float32_turns_tf32_off_and_restores_the_legacy_flags():
    from gradcheck_tool._guest import exact_float32

    matmul, conv = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        with exact_float32(True):
            assert torch.get_float32_matmul_precision() == "highest"
            assert torch.backends.cudnn.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32 is True
        with exact_float32(False):  # a float64 check changes nothing
            assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = conv


NEW_API = """
import torch
from gradcheck_tool._guest import exact_float32
torch.backends.cuda.matmul.fp32_precision = "tf32"
torch.backends.cudnn.conv.fp32_precision = "tf32"
with exact_float32(True):
    print(torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
          torch.backends.cudnn.allow_tf32)
print(torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
"""


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
def test_exact_float32_with_the_new_precision_api():
    # a fresh process: once the new API is used, torch's legacy getters raise for good
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run(
        [sys.executable, "-c", NEW_API], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split("\n")
    # inside: no TF32 for matmuls (new API) nor convolutions (cuDNN's "none" = TF32 off);
    # afterwards the user's settings, readable with the API they used
    assert out[:2] == ["ieee none False", "tf32 tf32"]

"""Exit 2 for a bad flag value, with a message naming the flag: --tolerance, --device, --seed,
--budget, --input-shape.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    CLI_FILES,
    RANDOMNESS,
    SAMPLES,
    assert_user_error,
    flat,
    invoke_cli,
    run_cli,
)


def test_zero_tolerance_is_not_an_internal_error():
    result = run_cli("check", SAMPLES / "exercise_net.py", "--tolerance", "0")
    assert result.code == 2, result.output  # rejected as a bad argument: no pass, no crash
    assert "--tolerance must be a positive number" in flat(result.output)
    assert "internal error" not in result.output


# --- --device --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["gpu", "mps"])
def test_unsupported_device_is_exit_2(device):
    result = invoke_cli("check", CLI_FILES / "plain.py", "--input-shape", "2,3", "--device", device)
    assert_user_error(result, "--device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_exit_2():
    result = invoke_cli("check", CLI_FILES / "plain.py", "--input-shape", "2,3", "--device", "cuda")
    assert_user_error(result, "not available")


# --- bad numbers -----------------------------------------------------------------------------


def test_seed_beyond_64_bits_is_exit_2():
    result = invoke_cli("check", RANDOMNESS / "random_loss.py", "--seed", str(2**64))
    assert_user_error(result, "--seed")


def test_seed_beyond_64_bits_with_input_shape_is_exit_2():
    result = invoke_cli(
        "check", CLI_FILES / "plain.py", "--input-shape", "2,3", "--seed", str(2**64)
    )
    assert_user_error(result, "--seed")


@pytest.mark.parametrize("budget", ["-5", "0", "nan"])
def test_bad_budget_is_exit_2(budget):
    result = invoke_cli("check", CLI_FILES / "plain.py", "--input-shape", "2,3", "--budget", budget)
    assert_user_error(result, "--budget")


@pytest.mark.parametrize("shape", ["2,x", "2x3x", "2,,3"])
def test_malformed_input_shape_is_exit_2(shape):
    result = invoke_cli("check", CLI_FILES / "plain.py", "--input-shape", shape)
    assert_user_error(result, "bad --input-shape")

"""--input-shape supplies the inputs a file lacks; --weights loads a checkpoint, names the keys
that don't fit, and never runs a pickle's code. (The same through the API:
test_loading.py.)
"""

from __future__ import annotations

import json
import pickle

import torch
from conftest import (
    BAD,
    CLI_FILES,
    FIXTURES,
    TARGETS,
    PicklePayload,
    assert_no_traceback,
    assert_user_error,
    flat,
    invoke_cli,
    run_cli,
)

# --- --input-shape ---------------------------------------------------------------------------


def test_input_shape_supplies_missing_inputs():
    result = run_cli("check", BAD / "no_inputs.py", "--input-shape", "2,4")
    assert result.code == 0, result.output
    two = run_cli(
        "check",
        TARGETS / "two_inputs_no_example.py",
        "--input-shape",
        "2,4",
        "--input-shape",
        "2,3",
        "--input-dtype",
        "float64",
        "--json",
        "-",
    )
    assert two.code == 0, two.output
    inputs = [r["name"] for r in json.loads(two.stdout)["results"] if r["kind"] == "input"]
    assert inputs == ["input:a", "input:b"]


# --- --weights -------------------------------------------------------------------------------


def test_weights_good_mismatched_and_malicious(tmp_path):
    net = FIXTURES / "checkpoint_net.py"
    good = tmp_path / "good.pt"
    torch.save({"model": {k: torch.full(v, 0.1) for k, v in _shapes().items()}}, good)
    result = run_cli("check", net, "--weights", good)
    assert result.code == 0, result.output

    mismatched = tmp_path / "mismatched.pt"
    state = {k: torch.zeros(v) for k, v in _shapes().items()}
    del state["head.weight"]
    state["head.extra"] = torch.zeros(1)
    torch.save(state, mismatched)
    result = run_cli("check", net, "--weights", mismatched)
    assert result.code == 2
    assert "head.weight" in flat(result.output) and "head.extra" in flat(result.output)
    assert_no_traceback(result)

    marker = tmp_path / "pwned-marker"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": PicklePayload(str(marker))}, fh, protocol=2)
    result = run_cli("check", net, "--weights", evil)
    assert result.code == 2
    assert not marker.exists()
    assert "evil.pt" in flat(result.output)
    assert_no_traceback(result)


def _shapes() -> dict[str, torch.Size]:
    shapes = {"layer.weight": (4, 3), "layer.bias": (4,), "head.weight": (2, 4), "head.bias": (2,)}
    return {k: torch.Size(v) for k, v in shapes.items()}


def test_checkpoint_with_list_values_is_exit_2_naming_the_keys(tmp_path):
    weights = tmp_path / "ck_list.pt"
    state = {"l.weight": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "l.bias": torch.zeros(2)}
    torch.save({"state_dict": state}, weights)
    result = invoke_cli(
        "check", CLI_FILES / "plain.py", "--input-shape", "2,3", "--weights", weights
    )
    assert_user_error(result, "l.weight")

"""`gradtool memory` as a user runs it: the table at 80 columns, the JSON, --plot, exit codes."""

from __future__ import annotations

import json
from runpy import run_path

import pytest
from conftest import FIXTURES, SAMPLES, invoke_cli
from typer.testing import CliRunner

from gradcheck_tool.cli import app
from gradcheck_tool.formats.memory_table import human


def at_80(*args):
    env = {"COLUMNS": "80", "NO_COLOR": "1", "FORCE_COLOR": None}
    result = CliRunner().invoke(app, ["memory", *map(str, args)], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_table_fits_80_columns_with_the_candidates_and_the_verdict(tmp_path):
    plot = tmp_path / "memory.png"
    result = at_80(
        SAMPLES / "wide_cnn.py", "--apply-checkpoint", "--checkpoint", "stem", "--plot", plot
    )
    assert result.exit_code == 0, result.stdout
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    text = result.stdout
    assert "stem Sequential" in text and "checkpointing candidates" in text
    assert "checkpointed: stem" in text and "PASS gradtool check" in text
    assert "saved-tensor accounting" in text
    assert plot.stat().st_size > 10_000  # the figure, written


def test_json_has_the_issues_keys():
    result = invoke_cli("memory", SAMPLES / "attention_block.py", "--format", "json")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)
    run = data["runs"][0]["report"] if "runs" in data else data
    for key in ("modules", "saved_bytes_total", "peak_bytes", "checkpoint_candidates"):
        assert key in run
    module = run["modules"][0]
    for key in ("name", "saved_bytes", "param_bytes", "grad_bytes", "forward_ms", "backward_ms"):
        assert key in module
    assert run["peak_source"] == "saved-tensor accounting"
    assert run["peak_bytes"] == (
        run["param_bytes_total"] + run["grad_bytes_total"] + run["saved_bytes_total"]
    )
    model = run_path(str(SAMPLES / "attention_block.py"))["build_model"]()
    names = [m["name"] for m in run["modules"]]
    assert sorted(names) == sorted(n for n, _ in model.named_modules())  # every module
    # in forward order, not definition order: the attention's dropout runs before `out`
    assert names.index("blocks.0.attn.dropout") < names.index("blocks.0.attn.out")


def test_a_failed_check_of_the_checkpointed_copy_exits_1():
    result = invoke_cli(
        "memory",
        FIXTURES / "memory" / "side_effect_block.py",
        "--apply-checkpoint",
        "--checkpoint",
        "block",
    )
    assert result.code == 1, result.output
    assert "FAIL" in result.stdout and "differ" in result.stdout


def test_an_unknown_block_exits_2_naming_the_choices():
    result = invoke_cli(
        "memory", SAMPLES / "wide_cnn.py", "--apply-checkpoint", "--checkpoint", "stem,nope"
    )
    assert result.code == 2
    assert "--checkpoint names no module of the model: nope" in result.output
    assert "Choose among: stem, stem.0" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "n, text",
    [(0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"), (5 << 20, "5 MiB")],
)
def test_human_bytes(n, text):
    assert human(n) == text


def test_a_big_model_is_shown_to_the_depth_that_fits():
    import io

    import torch
    from torch import nn

    from gradcheck_tool.engines.memory import run_memory
    from gradcheck_tool.formats.table import write

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    report = run_memory(nn.TransformerEncoder(layer, 12), (torch.randn(2, 8, 16),), {})
    assert len(report.modules) > 100  # every module in the report
    out = io.StringIO()
    write(report, out, width=80)
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= 80
    assert "modules to depth 2 of 4 shown" in out.getvalue()
    table = [line for line in lines if "TransformerEncoderLayer" in line]
    assert len(table) == 12 + 3  # the 12 layers, and the 3 candidates below the table

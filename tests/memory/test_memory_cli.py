"""`gradtool memory` as a user runs it: the table at 80 columns, the JSON, --plot, exit codes."""

from __future__ import annotations

import json
import re
from runpy import run_path

import pytest
from conftest import FIXTURES, SAMPLES, invoke_cli
from typer.testing import CliRunner

from gradcheck_tool.cli import app
from gradcheck_tool.formats.memory_table import human
from gradcheck_tool.results import CheckpointCandidate, MemoryReport, ModuleMemory


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
    # what the columns are, under the table
    assert "saved: bytes its operations saved for the backward; held: bytes its forward" in text
    assert "(each charged to the module that made it)" in text
    assert re.search(r"gradtool check of the checkpointed copy: \d+ s of the run's \d+ s", text)
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
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (5 << 20, "5 MiB"),
        (1000 << 20, "1000 MiB"),
    ],
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
    text = out.getvalue()
    assert "…" not in text  # no name cut
    for i in range(12):  # every layer's name and type whole, on one line at 80
        assert re.search(rf"^ {{4}}{i} TransformerEncoderLayer +\d", text, re.M)
    # the stack is one candidate
    assert re.search(r"^layers\.0-11 12 × TransformerEncoderLayer +[\d.]+ [KM]iB", text, re.M)


def _row(name, kind, depth, saved):
    return ModuleMemory(
        name=name,
        type=kind,
        depth=depth,
        calls=1,
        saved_bytes=saved,
        own_saved_bytes=saved,
        param_bytes=123 << 20,
        grad_bytes=0,
        forward_ms=1234.56,
        backward_ms=9876.54,
        held_bytes=saved,
    )


def _report(modules, candidates=()):
    return MemoryReport(
        target="m.py",
        version="0",
        modules=tuple(modules),
        saved_bytes_total=0,
        param_bytes_total=0,
        grad_bytes_total=0,
        held_bytes=0,
        peak_bytes=0,
        peak_source="saved-tensor accounting",
        checkpoint_candidates=tuple(candidates),
    )


def _long_names(kind, width):
    import io

    from gradcheck_tool.formats.table import write

    rows = [_row("", "Model", 0, 1000 << 20)]
    path = ""
    for depth, part in enumerate(["encoder", "layer", "0", "attention", "self"], 1):
        path = f"{path}.{part}" if path else part
        rows.append(_row(path, kind if part == "self" else "Module", depth, 999 << 20))
    cand = CheckpointCandidate(
        name="encoder.layer.0-23",
        type=kind,
        saved_bytes=999 << 20,
        predicted_saving_bytes=998 << 20,
        recompute_ms=1234.5,
        extra_compute=0.5,
        blocks=tuple(f"encoder.layer.{i}" for i in range(24)),
        recompute_flops=123_456_789_012,
    )
    out = io.StringIO()
    write(_report(rows, [cand]), out, width=width)
    text = out.getvalue()
    assert max(map(len, text.splitlines())) <= width
    assert "…" not in text
    for number in ("1000 MiB", "999 MiB", "123 MiB", "1234.56", "9876.54", "998 MiB"):
        assert number in text
    assert re.search(r" 1234\.50 *$", text, re.M)  # the measured ms: the last column
    assert "123G" in text and "50.0%" in text  # FLOPs, and extra from them
    return text


@pytest.mark.parametrize("width", [80, 200])
def test_long_names_are_never_cut(width):
    """A deep module with a long type (an HF attention's): at 80 columns its type goes below
    its name, at 200 both stay on one line; no name or number is cut either way."""
    kind = "RobertaSdpaSelfAttention"
    text = _long_names(kind, width)
    if width == 80:
        assert re.search(r"^ {10}self +999 MiB", text, re.M)
        assert re.search(rf"^ {{6,12}}{kind} *$", text, re.M)
        assert re.search(rf"^  24 × {kind} *$", text, re.M)
    else:
        assert re.search(rf"^ {{10}}self {kind} +999 MiB", text, re.M)
        assert re.search(rf"^encoder.layer.0-23 24 × {kind} +999 MiB", text, re.M)


def test_a_type_wider_than_the_column_is_folded_not_cut():
    kind = "VeryLongRobertaSelfAttentionWithRotaryEmbeddingsAndMore"
    text = _long_names(kind, 80)
    assert kind in re.sub(r"\s", "", text)  # every letter, across the folded lines

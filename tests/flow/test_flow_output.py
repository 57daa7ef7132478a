"""flow's output: the JSON report, the rendered table, --fail-on, the plot, and `gradtool flow`
on the sample models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SAMPLES
from models import (
    ReusedInplace,
    SeventyPercentDead,
    batch,
)
from typer.testing import CliRunner

from gradcheck_tool import flow
from gradcheck_tool.cli import app
from gradcheck_tool.engines.flow import (
    FINDING_KINDS,
)
from gradcheck_tool.engines.flow.findings import parse_fail_on
from gradcheck_tool.errors import InputError
from gradcheck_tool.formats.flow_table import flow_table, render_flow
from gradcheck_tool.formats.plot import plot_flow

runner = CliRunner()


# --- JSON, rendering, plot -------------------------------------------------------------------


def test_json_has_the_issues_schema() -> None:
    data = flow(SeventyPercentDead(), batch(32, 16)).to_dict()
    assert {"tool", "version", "command", "target", "layers", "findings"} <= set(data)
    assert (data["tool"], data["command"]) == ("gradtool", "flow")
    for row in data["layers"]:
        assert {
            "name",
            "type",
            "grad_norm",
            "weight_norm",
            "dead_fraction",
            "saturated_fraction",
        } <= set(row)
    assert [r["name"] for r in data["layers"]] == ["fc1", "act", "fc2"]
    assert {"kind", "layer", "message"} <= set(data["findings"][0])
    assert "history" not in data  # only with steps > 1
    json.dumps(data, allow_nan=False)


def test_render_shows_every_row_and_the_findings() -> None:
    from rich.console import Console

    report = flow(ReusedInplace(), batch(16, 8))
    console = Console(record=True, width=160, color_system=None)
    render_flow(report, console)
    text = console.export_text()
    for needle in ("act [call 1/2]", "act [call 2/2]", "dead_relu", "75.0%", "fix:"):
        assert needle in text
    assert flow_table(report).row_count == len(report.layers)


def test_fail_on_parsing() -> None:
    assert parse_fail_on("nan, exploding") == {"nan", "exploding"}
    assert parse_fail_on("all") == set(FINDING_KINDS)
    assert parse_fail_on(None) == set()
    with pytest.raises(InputError, match="nope"):
        parse_fail_on("nan,nope")


def test_plot_is_written_as_png_and_svg(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    report = flow(SeventyPercentDead(), batch(32, 16), steps=2)
    png = plot_flow(report, tmp_path / "flow.png")
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    svg = plot_flow(report, tmp_path / "flow.svg").read_text()
    assert "gradient norm" in svg and "dead" in svg
    with pytest.raises(InputError):
        plot_flow(report, tmp_path / "flow.jpg")


# --- the command line ------------------------------------------------------------------------


def test_healthy_sample_exits_zero_even_with_fail_on_all(tmp_path: Path) -> None:
    out = tmp_path / "flow.json"
    result = runner.invoke(
        app,
        ["flow", str(SAMPLES / "healthy_resnet_mlp.py"), "--fail-on", "all", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["findings"] == []
    assert "No findings" in result.output


@pytest.mark.parametrize(
    "sample,kind,layer",
    [
        ("exploding_linear.py", "exploding", "0"),
        ("saturated_tanh.py", "saturation", "squash1"),
        ("nan_log.py", "nan", "compress"),
        ("nan_backward_norm.py", "nan", "magnitude"),
        ("dead_relu_mlp.py", "dead_relu", ""),
        ("deep_sigmoid_mlp.py", "vanishing", "0"),
    ],
)
def test_cli_sample_models_exit_codes_and_json(
    tmp_path: Path, sample: str, kind: str, layer: str
) -> None:
    out = tmp_path / "report.json"
    target = str(SAMPLES / sample)
    result = runner.invoke(app, ["flow", target, "--json", str(out)])
    assert result.exit_code == 0, result.output  # findings alone do not fail the run
    data = json.loads(out.read_text())
    assert kind in {f["kind"] for f in data["findings"]}
    assert layer in {f["layer"] for f in data["findings"] if f["kind"] == kind}
    failing = runner.invoke(app, ["flow", target, "--fail-on", kind])
    assert failing.exit_code == 1, failing.output
    others = ",".join(k for k in FINDING_KINDS if k not in {f["kind"] for f in data["findings"]})
    if others:
        assert runner.invoke(app, ["flow", target, "--fail-on", others]).exit_code == 0


def test_cli_steps_plot_and_errors(tmp_path: Path) -> None:
    healthy = str(SAMPLES / "healthy_resnet_mlp.py")
    png = tmp_path / "flow.png"
    result = runner.invoke(
        app, ["flow", healthy, "--steps", "5", "--optimizer", "adam", "--plot", str(png)]
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trend, step 1 → 5" in result.output and "overfit one batch" in result.output
    assert runner.invoke(app, ["flow", healthy, "--fail-on", "nonsense"]).exit_code == 2
    assert runner.invoke(app, ["flow", healthy, "--plot", str(tmp_path / "x.gif")]).exit_code == 2
    assert runner.invoke(app, ["flow", healthy, "--optimizer", "rmsprop"]).exit_code == 2
    function = runner.invoke(app, ["flow", str(SAMPLES / "custom_activation.py")])
    assert function.exit_code == 2 and "needs an nn.Module" in function.output
    stdout = runner.invoke(app, ["flow", healthy, "--json", "-"])
    assert stdout.exit_code == 0 and json.loads(stdout.stdout)["command"] == "flow"


# --- 80 columns: columns go, numbers are never cut -------------------------------------------


def _rendered(report, width: int) -> str:
    from rich.console import Console

    console = Console(record=True, width=width, color_system=None)
    render_flow(report, console)
    return console.export_text()


@pytest.mark.parametrize("width", [60, 80, 120])
def test_no_number_or_header_is_cut_at_any_width(width: int) -> None:
    report = flow(ReusedInplace(), batch(16, 8), steps=3)
    text = _rendered(report, width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    # every grad norm of the last step is printed whole
    for row in report.layers:
        if row.grad_norm is not None:
            assert f"{row.grad_norm:.2e}" in text
    if width < 120:
        assert f"left out at {width} columns" in text


def test_the_trend_table_names_repeated_calls() -> None:
    text = _rendered(flow(ReusedInplace(), batch(16, 8), steps=3), 120)
    trend = text[text.index("trend, step") :]
    assert "act [call 1/2]" in trend and "act [call 2/2]" in trend


def test_a_finding_shows_its_evidence_and_its_consequences() -> None:
    from dataclasses import replace

    from gradcheck_tool.results import Finding

    report = flow(ReusedInplace(), batch(16, 8))
    after = Finding("nan", "b", "b produced NaN in its forward", "fix it", step=4)
    cause = Finding(
        "dead_relu",
        "act",
        "most units are dead",
        "a fix",
        evidence=(("dead", 0.75), ("units", 8.0)),
        threshold=0.5,
        consequences=(after,),
    )
    text = _rendered(replace(report, findings=(cause,)), 100)
    assert "evidence: dead 0.75 (threshold 0.5), units 8" in text
    assert "then nan in b: b produced NaN in its forward" in text
    data = replace(report, findings=(cause,)).to_dict()["findings"][0]
    assert data["evidence"] == {"dead": 0.75, "units": 8.0} and data["threshold"] == 0.5
    assert data["consequences"][0]["kind"] == "nan"


def test_fail_on_matches_a_consequence_too() -> None:
    """The divergence is the finding, its NaN a consequence under it: `--fail-on nan` still
    fails the run (a NaN happened), and a kind that did not happen still passes."""
    target = str(SAMPLES / "diverging_tanh.py")
    args = ["flow", target, "--steps", "20", "--lr", "0.5", "--fail-on"]
    result = runner.invoke(app, [*args, "nan"])
    assert result.exit_code == 1, result.output
    assert "then nan" in " ".join(result.output.split())
    assert runner.invoke(app, [*args, "dead_relu"]).exit_code == 0


def test_steps_on_the_projection_say_what_they_are_worth() -> None:
    """The issue's 'a loss without a minimum grows the gradient norm ×156 and flow says
    nothing': flow's projection has no minimum, so --steps without loss_fn warns, with the
    growth it saw, and the findings panel says what was judged."""
    report = flow(ReusedInplace(), batch(16, 8), steps=10, lr=0.01)
    (warning,) = [w for w in report.warnings if "random projection" in w]
    assert "no minimum" in warning and "the gradient norm grew ×" in warning, warning
    assert report.findings == ()
    text = " ".join(_rendered(report, 100).replace("│", " ").split())
    assert "judged at step 1 only" in text

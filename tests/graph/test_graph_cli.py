"""`gradtool graph` from the command line, as a user runs it: the files it writes, the
summary, JSON, and the refusals (exit 2, before the model runs) of an image without Graphviz
and of a path that can't be written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import FIXTURES, REPO, SAMPLES, assert_user_error, flat, invoke_cli

DETACHED = SAMPLES / "detached_branch.py"
MARKER_MODEL = FIXTURES / "graph" / "marker_model.py"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot not installed")


@needs_dot
def test_detached_branch_sample_writes_dot_and_svg(tmp_path) -> None:
    dot, svg = tmp_path / "g.dot", tmp_path / "g.svg"
    result = invoke_cli("graph", DETACHED, "--dot", dot, "--svg", svg)
    assert result.code == 0, result.output
    text = dot.read_text()
    assert 'label="detach()"' in text and "style=dashed" in text
    assert svg.read_text().lstrip().startswith("<?xml")
    out = flat(result.stdout)
    assert "detached_branch.py:26" in out and "detached_branch.py:28" in out
    assert "gate.weight" in out and "behind the no_grad cut" in out
    assert f"graph written to {dot}" in flat(result.stderr)
    assert f"graph written to {svg}" in flat(result.stderr)


def test_json_on_stdout() -> None:
    result = invoke_cli("graph", DETACHED, "--format", "json", "--depth", "1")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)
    assert data["command"] == "graph" and data["depth"] == 1 and data["depth_given"]
    assert {c["kind"] for c in data["cuts"]} == {"detach()", "no_grad"}
    assert data["cuts"][0]["location"]["file"].endswith("detached_branch.py")


def test_an_image_without_graphviz_is_refused_before_the_model_runs(tmp_path) -> None:
    marker = tmp_path / "built"
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "GRADTOOL_TEST_MARKER": str(marker), "COLUMNS": "200"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "gradcheck_tool", "graph", str(MARKER_MODEL), "--png",
         str(tmp_path / "g.png"), "--dot", str(tmp_path / "g.dot")],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    said = flat(proc.stdout + proc.stderr)
    assert proc.returncode == 2, said
    assert "--png needs Graphviz's `dot` program" in said
    for words in ("apt-get install graphviz", "brew install graphviz", "conda install graphviz"):
        assert words in said
    assert "--dot and --html need nothing" in said
    assert not marker.exists()  # refused before the model was built
    assert "Traceback" not in said


def test_a_path_that_cannot_be_written_is_refused(tmp_path, monkeypatch) -> None:
    marker = tmp_path / "built"
    monkeypatch.setenv("GRADTOOL_TEST_MARKER", str(marker))
    result = invoke_cli("graph", MARKER_MODEL, "--dot", tmp_path / "missing" / "g.dot")
    assert_user_error(result, "--dot", "does not exist")
    assert not marker.exists()


def test_depth_must_not_be_negative() -> None:
    result = invoke_cli("graph", DETACHED, "--depth", "-1")
    assert result.code == 2


def test_a_depth_deeper_than_the_model_is_clamped_and_said() -> None:
    # the sample's deepest module is encoder.0 (level 2: encoder, then its children)
    result = invoke_cli("graph", DETACHED, "--depth", "99")
    assert result.code == 0, result.output
    assert "depth 2 of 2 (--depth 99: the model is only 2 deep)" in flat(result.stdout)
    data = json.loads(invoke_cli("graph", DETACHED, "--format", "json", "--depth", "99").stdout)
    assert (data["depth"], data["max_depth"], data["depth_asked"]) == (2, 2, 99)


def test_a_cut_in_the_model_s_own_forward_names_the_op_there() -> None:
    """The sample multiplies by the gate in DetachedBranch.forward itself (`features * gate`):
    the no_grad cut's value is used by that Mul, which the text, JSON and table name."""
    data = json.loads(invoke_cli("graph", DETACHED, "--format", "json").stdout)
    no_grad = next(c for c in data["cuts"] if c["kind"] == "no_grad")
    assert (no_grad["producer_text"], no_grad["consumer_text"]) == (
        "encoder.3",
        "Mul in DetachedBranch.forward",
    )
    assert "→ Mul in DetachedBranch.forward" in no_grad["text"]
    assert "encoder.3 → Mul in DetachedBranch.forward" in flat(invoke_cli("graph", DETACHED).stdout)
    assert "(model)" not in flat(invoke_cli("graph", DETACHED).stdout)

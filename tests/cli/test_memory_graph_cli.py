"""`gradtool memory` and `gradtool graph` on the command line: a TARGET is required (they have
no configured targets), --format is table or json (github/markdown/JUnit are for check and
flow's verdicts), and the config's loading keys apply."""

from __future__ import annotations

import pytest
from conftest import SAMPLES, assert_user_error, invoke_cli


@pytest.mark.parametrize("command", ["memory", "graph"])
def test_a_target_is_required(command):
    result = invoke_cli(command)
    assert result.code == 2, result.output
    assert "TARGET" in result.output


@pytest.mark.parametrize("command", ["memory", "graph"])
@pytest.mark.parametrize("fmt", ["github", "markdown"])
def test_ci_formats_are_refused(command, fmt):
    result = invoke_cli(command, SAMPLES / "small_cnn.py", "--format", fmt)
    assert result.code == 2, result.output
    assert "--format" in result.output


@pytest.mark.parametrize("command", ["memory", "graph"])
def test_a_missing_file_is_a_user_error(command, tmp_path):
    result = invoke_cli(command, tmp_path / "nope.py")
    assert_user_error(result, "nope.py")


def test_the_configs_ci_run_keys_are_for_check_and_flow(tmp_path):
    """`format = "github"` and `junit` in [tool.gradtool] set check and flow's CI output; a
    graph (a picture, not a verdict) still prints its table and writes no JUnit file; the
    loading keys (seed) apply."""
    config = tmp_path / "pyproject.toml"
    junit = tmp_path / "reports" / "j.xml"
    config.write_text(f'[tool.gradtool]\nformat = "github"\njunit = "{junit}"\nseed = 3\n')
    result = invoke_cli("graph", SAMPLES / "detached_branch.py", "--config", config)
    assert result.code == 0, result.output
    assert "::" not in result.stdout and "gradient cut" in result.stdout
    assert not junit.exists()

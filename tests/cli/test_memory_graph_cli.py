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

"""[tool.gradtool] in pyproject.toml: found upward from the working directory, paths relative
to the file, defaults < the target's keys < the command line, every bad key or value named
with the file (exit 2), and a configured run's exit code the worst of its targets'."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import BUGS, CLI_FILES, SAMPLES, flat, invoke_cli

from gradcheck_tool.config import ConfigError, find_pyproject, load_config


def write_project(root: Path, toml: str) -> Path:
    (root / "ops").mkdir(parents=True, exist_ok=True)
    shutil.copy(BUGS / "sign_flipped.py", root / "ops" / "sign.py")
    shutil.copy(SAMPLES / "exercise_net.py", root / "ops" / "net.py")
    path = root / "pyproject.toml"
    path.write_text(textwrap.dedent(toml))
    return path


PROJECT = """
    [tool.gradtool]
    tolerance = 1e-6
    seed = 3
    junit = "reports/g.xml"

    [[tool.gradtool.check]]
    target = "ops/sign.py:Correct"
    second-order = true

    [[tool.gradtool.check]]
    target = "ops/sign.py:Buggy"
    seed = 5

    [[tool.gradtool.flow]]
    target = "ops/net.py"
    fail_on = ["nan", "exploding"]
    steps = 3
"""


def test_found_upward_with_paths_relative_to_the_file(tmp_path, monkeypatch):
    write_project(tmp_path, PROJECT)
    (tmp_path / "pkg" / "deep").mkdir(parents=True)
    (tmp_path / "pkg" / "pyproject.toml").write_text("[tool.ruff]\nline-length = 90\n")
    monkeypatch.chdir(tmp_path / "pkg" / "deep")
    # the nearer pyproject.toml has no [tool.gradtool]: the one above it is the project's
    assert find_pyproject() == tmp_path / "pyproject.toml"
    config = load_config()
    checks = config.of("check")
    assert [Path(t.target.split(":")[0]).resolve() for t in checks] == [
        (tmp_path / "ops" / "sign.py").resolve()
    ] * 2
    assert [t.target.rsplit(":", 1)[1] for t in checks] == ["Correct", "Buggy"]
    assert Path(config.run["junit"]).resolve() == (tmp_path / "reports" / "g.xml").resolve()
    # defaults merged under the target's own keys; dashes read as underscores
    assert checks[0].options == {"tolerance": 1e-6, "seed": 3, "second_order": True}
    assert checks[1].options["seed"] == 5  # the target's own key beats the default
    flow = config.of("flow")[0]
    # a check-only default does not reach flow; seed does
    assert flow.options == {"seed": 3, "fail_on": ["nan", "exploding"], "steps": 3}
    assert flow.where.endswith("[[tool.gradtool.flow]] 1")


def test_a_target_given_on_the_line_takes_the_defaults_and_its_entry(tmp_path, monkeypatch):
    write_project(tmp_path, PROJECT)
    monkeypatch.chdir(tmp_path)
    config = load_config()
    assert config.options_for("check", "ops/sign.py:Buggy") == {"tolerance": 1e-6, "seed": 5}
    assert config.options_for("check", "ops/other.py") == {"tolerance": 1e-6, "seed": 3}


def test_no_table_is_an_empty_config(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(tmp_path)
    assert load_config().targets == ()
    with pytest.raises(ConfigError, match="has no \\[tool.gradtool\\] table"):
        load_config(tmp_path / "pyproject.toml")  # named with --config: say so


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("[tool.gradtool]\ntolerence = 1e-5\n", ["unknown key 'tolerence'", "tolerance?"]),
        ("[tool.gradtool]\ntolerance = 0\n", ["tolerance must be a positive number, not 0"]),
        ("[tool.gradtool]\ntolerance = '1e-5'\n", ["tolerance must be a positive number"]),
        ("[tool.gradtool]\nsamples = 2.5\n", ["samples must be an integer of at least 1"]),
        ("[tool.gradtool]\nformat = 'xml'\n", ["format must be one of table, json"]),
        ("[tool.gradtool]\nsecond_order = 'yes'\n", ["second_order must be true or false"]),
        (
            "[[tool.gradtool.flow]]\ntarget = 'm.py'\nfail_on = ['nan', 'nans']\n",
            ["[[tool.gradtool.flow]] 1", "fail_on names unknown finding kind(s) nans"],
        ),
        (
            "[[tool.gradtool.flow]]\ntarget = 'm.py'\ntolerance = 1e-5\n",
            [
                "[[tool.gradtool.flow]] 1",
                "unknown key 'tolerance'",
                "an option of gradtool check, not of flow",
            ],
        ),
        ("[[tool.gradtool.check]]\nskip = ['a']\n", ["[[tool.gradtool.check]] 1", "no target"]),
        ("[[tool.gradtool.check]]\ntarget = 'a.py'\ntimeout = 5\n", ["unknown key 'timeout'"]),
        ("[tool.gradtool]\ndevice = 'tpu'\n", ["device must be cpu, cuda or cuda:N"]),
        ("[tool.gradtool]\ninput_dtype = 'floaty'\n", ["input_dtype must be one of float32"]),
        (
            "[[tool.gradtool.flow]]\ntarget = 'm.py'\nplot = 'x.txt'\n",
            ["plot must be a .png or .svg path"],
        ),
        (
            "[[tool.gradtool.check]]\ntarget = 'a.py'\nsteps = 5\n",
            ["unknown key 'steps'", "an option of gradtool flow, not of check"],
        ),
        (
            "[[tool.gradtool.check]]\ntarget = 'a.py'\njunit = 'r.xml'\n",
            ["unknown key 'junit'", "put it in [tool.gradtool]"],
        ),
        ("[tool.gradtool\n", ["not valid TOML"]),
        ("[tool.gradtool]\ncheck = 3\n", ["tool.gradtool.check must be a list of tables"]),
    ],
)
def test_bad_keys_and_values_name_the_key_and_the_file(tmp_path, monkeypatch, toml, words):
    (tmp_path / "pyproject.toml").write_text(toml)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config()
    text = str(caught.value)
    assert "pyproject.toml" in text
    for word in words:
        assert word in text, text
    # and on the command line: exit 2, the message, no traceback
    result = invoke_cli("check")
    assert result.code == 2, result.output
    assert "pyproject.toml" in flat(result.output) and "Traceback" not in result.output


# --- the command line with a configured project ------------------------------------------


def test_configured_run_reports_every_target_and_exits_with_the_worst(tmp_path, monkeypatch):
    write_project(tmp_path, PROJECT)
    monkeypatch.chdir(tmp_path)
    result = invoke_cli("check", "--json", "all.json")
    assert result.code == 1, result.output  # Buggy fails; Correct passes
    report = json.loads((tmp_path / "all.json").read_text())
    runs = {r["target"].rsplit(":", 1)[1]: r for r in report["runs"]}
    assert runs["Correct"]["exit_code"] == 0 and runs["Buggy"]["exit_code"] == 1
    correct = runs["Correct"]["report"]
    assert correct["tolerance"] == 1e-6  # the default reached the target
    assert any("2nd order" in r["name"] for r in correct["results"])  # its own key
    assert (tmp_path / "reports" / "g.xml").exists()  # the configured JUnit file


def test_the_command_line_wins_only_where_given(tmp_path, monkeypatch):
    write_project(
        tmp_path,
        """
        [tool.gradtool]
        tolerance = 1e-3
        eps = 1e-5
        skip = ["w1"]

        [[tool.gradtool.check]]
        target = "ops/net.py"
        """,
    )
    monkeypatch.chdir(tmp_path)

    def report(*args):
        result = invoke_cli("check", *args, "--format", "json")
        assert result.code == 0, result.output
        data = json.loads(result.stdout)
        return data["runs"][0]["report"] if "runs" in data else data  # configured: envelope

    configured = report()
    assert (configured["tolerance"], configured["eps"]) == (1e-3, 1e-5)
    assert [u["name"] for u in configured["unchecked"]] == ["w1"]
    # a TARGET on the line keeps the file's defaults
    assert report("ops/net.py")["tolerance"] == 1e-3
    # options given on the line win; the others still come from the file
    overridden = report("--tolerance", "1e-4", "--skip", "b1,b2")
    assert (overridden["tolerance"], overridden["eps"]) == (1e-4, 1e-5)
    assert sorted(u["name"] for u in overridden["unchecked"]) == ["b1", "b2"]


def test_a_broken_target_is_exit_2_and_the_others_still_run(tmp_path, monkeypatch):
    write_project(
        tmp_path,
        """
        [[tool.gradtool.check]]
        target = "ops/missing.py"

        [[tool.gradtool.check]]
        target = "ops/net.py"
        """,
    )
    monkeypatch.chdir(tmp_path)
    result = invoke_cli("check", "--format", "json")
    assert result.code == 2, result.output
    report = json.loads(result.stdout)
    assert [r["exit_code"] for r in report["runs"]] == [2, 0]
    assert "file not found" in report["runs"][0]["error"]
    assert report["runs"][1]["report"]["passed"] is True


def test_no_target_and_no_config_says_how_to_configure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke_cli("flow")
    assert result.code == 2
    assert "no TARGET given" in flat(result.output)
    assert "[[tool.gradtool.flow]]" in result.output


def test_config_option_names_the_file(tmp_path, monkeypatch):
    path = write_project(tmp_path / "elsewhere", "[[tool.gradtool.check]]\ntarget = 'ops/net.py'\n")
    monkeypatch.chdir(tmp_path)
    result = invoke_cli("check", "--config", path, "--format", "json")
    assert result.code == 0, result.output
    assert invoke_cli("check", "--config", tmp_path / "nope.toml").code == 2
    assert invoke_cli("check", CLI_FILES / "plain.py", "--input-shape", "2,3").code == 0


def test_the_config_takes_the_input_dtypes_the_loader_does():
    """config.py cannot import torch (the --help path): its list must be loading's."""
    from gradcheck_tool.config import INPUT_DTYPES
    from gradcheck_tool.loading import _DTYPES

    assert sorted(INPUT_DTYPES) == sorted(_DTYPES)

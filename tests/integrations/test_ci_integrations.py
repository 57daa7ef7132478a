"""The ready-made integrations: `action.yml` (a composite GitHub Action) and
`.pre-commit-hooks.yaml`.

Without a YAML library (PyYAML is not a dependency) the files are read by a line-based reader
of the block style they are written in; with PyYAML the same checks run on its parse too, and
the two must agree. The rules are those of GitHub's action metadata syntax and pre-commit's
manifest (as in SchemaStore's `github-action.json` and `pre-commit-hooks.json`): a composite
step is `run` + `shell` or `uses`, with only the keys GitHub knows; every input has a
description; every `inputs.X` and `steps.Y` an expression names is declared (a step before the
one that reads it). The run scripts are parsed by bash and executed against a stand-in
`gradtool` that records its arguments: the exit code passes through and is the step's output.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

import gradcheck_tool

ACTION = REPO / "action.yml"
HOOKS = REPO / ".pre-commit-hooks.yaml"

ACTION_KEYS = {"name", "author", "description", "inputs", "outputs", "runs", "branding"}
INPUT_KEYS = {"description", "required", "default", "deprecationMessage"}
OUTPUT_KEYS = {"description", "value"}
STEP_KEYS = {
    "run", "shell", "uses", "with", "name", "id", "if", "env", "continue-on-error",
    "working-directory",
}  # fmt: skip
HOOK_KEYS = {
    "id", "name", "entry", "language", "alias", "files", "exclude", "types", "types_or",
    "exclude_types", "additional_dependencies", "always_run", "fail_fast", "verbose",
    "pass_filenames", "require_serial", "description", "language_version", "log_file",
    "minimum_pre_commit_version", "args", "stages",
}  # fmt: skip

# --- a reader for the block-style YAML these two files are written in --------------------------


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        inner = text[1:-1]
        return inner.replace("''", "'") if text[0] == "'" else inner.replace('\\"', '"')
    return {"true": True, "false": False}.get(text, text)


def _read_block(lines: list[tuple[int, str]], indent: int) -> Any:
    """Mappings, lists of mappings, `|` block scalars and plain or quoted scalars; no flow
    collections, anchors or multi-line plain scalars (the files use none)."""
    if lines and lines[0][1].startswith("- "):
        items, current = [], []
        for ind, text in lines:
            if ind == indent and text.startswith("- "):
                if current:
                    items.append(current)
                current = [(indent + 2, text[2:])]
            else:
                current.append((ind, text))
        items.append(current)
        return [_read_block(item, indent + 2) for item in items]
    mapping: dict[str, Any] = {}
    i = 0
    while i < len(lines):
        ind, text = lines[i]
        assert ind == indent, f"unexpected indentation: {text!r}"
        key, sep, rest = text.partition(":")
        assert sep, f"not a mapping entry: {text!r}"
        rest = rest.strip()
        j = i + 1
        while j < len(lines) and lines[j][0] > indent:
            j += 1
        child = lines[i + 1 : j]
        if rest == "|":
            body = "\n".join(" " * (ind - indent) + t for ind, t in child)
            mapping[key] = textwrap.dedent(body).rstrip("\n") + "\n"  # `|` clips
        elif rest:
            mapping[key] = _scalar(rest)
        else:
            mapping[key] = _read_block(child, child[0][0]) if child else None
        i = j
    return mapping


def read_yaml(path: Path) -> Any:
    """The document, comments and blank lines dropped (a block scalar keeps its lines)."""
    lines: list[tuple[int, str]] = []
    block_of: int | None = None  # indentation of the key whose `|` block is being read
    for raw in path.read_text().splitlines():
        indent = len(raw) - len(raw.lstrip(" "))
        text = raw.strip()
        if block_of is not None:
            if not text or indent > block_of:
                lines.append((indent if text else block_of + 1, text))
                continue
            block_of = None
        if not text or text.startswith("#"):
            continue
        lines.append((indent, text))
        if text.endswith(": |"):
            block_of = indent + 2 if text.startswith("- ") else indent
    return _read_block(lines, 0)


def _documents(path: Path) -> list[Any]:
    """The line reader's parse, and PyYAML's when it is installed (they must agree)."""
    docs = [read_yaml(path)]
    try:
        import yaml
    except ImportError:
        return docs
    parsed = yaml.safe_load(path.read_text())
    assert _normalized(parsed) == _normalized(docs[0])
    return [*docs, parsed]


def _normalized(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value if isinstance(value, (bool, type(None))) else str(value)


def test_the_line_reader_reads_block_yaml_as_yaml_does():
    yaml = pytest.importorskip("yaml")
    sample = REPO / "tests" / "integrations" / "_sample.yaml"
    text = "a: 1\nb:\n  - c: 'x: y'\n    d: |\n      echo 1\n        indented\n  - e: true\n"
    try:
        sample.write_text(text)
        assert _normalized(read_yaml(sample)) == _normalized(yaml.safe_load(text))
    finally:
        sample.unlink()


# --- action.yml --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["line reader", "PyYAML"])
def action(request) -> dict[str, Any]:
    docs = _documents(ACTION)
    if request.param == "PyYAML" and len(docs) < 2:
        pytest.skip("PyYAML is not installed")
    return docs[0] if request.param == "line reader" else docs[1]


def _expressions(value: Any) -> list[str]:
    """Every `${{ … }}` expression in a value, and an `if:` condition as a whole."""
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            if key == "if" and isinstance(item, str) and "${{" not in item:
                found.append(item)
            else:
                found += _expressions(item)
        return found
    if isinstance(value, list):
        return [e for item in value for e in _expressions(item)]
    return re.findall(r"\$\{\{(.*?)\}\}", value) if isinstance(value, str) else []


def test_action_metadata_is_valid_composite_action(action):
    assert set(action) <= ACTION_KEYS
    assert {"name", "description", "runs"} <= set(action)
    for name, spec in action["inputs"].items():
        assert re.fullmatch(r"[_a-z][a-z0-9_-]*", name), name
        assert set(spec) <= INPUT_KEYS and spec.get("description"), name
        assert isinstance(spec.get("default", ""), str), name
    for name, spec in action["outputs"].items():
        assert set(spec) == OUTPUT_KEYS, name
    assert action["runs"]["using"] == "composite"
    assert set(action["runs"]) == {"using", "steps"}
    for step in action["runs"]["steps"]:
        assert set(step) <= STEP_KEYS, step
        assert ("run" in step) != ("uses" in step), step
        if "run" in step:
            assert step.get("shell") == "bash", step  # composite run steps need a shell
        else:
            assert "shell" not in step and "working-directory" not in step, step


def test_action_expressions_name_only_declared_inputs_and_earlier_steps(action):
    declared = set(action["inputs"])
    steps = action["runs"]["steps"]
    seen_ids: set[str] = set()
    for step in steps:
        for expr in _expressions(step):
            assert set(re.findall(r"\binputs\.([\w-]+)", expr)) <= declared, expr
            assert set(re.findall(r"\bsteps\.([\w-]+)", expr)) <= seen_ids, expr
        if "id" in step:
            seen_ids.add(step["id"])
    ids = [s["id"] for s in steps if "id" in s]
    assert len(ids) == len(set(ids))
    for spec in action["outputs"].values():
        for expr in _expressions(spec):
            assert set(re.findall(r"\bsteps\.([\w-]+)", expr)) <= set(ids), expr
    # every declared input is used somewhere
    used = {n for s in steps for e in _expressions(s) for n in re.findall(r"inputs\.([\w-]+)", e)}
    assert used == declared


def test_action_runs_check_and_flow_as_separate_steps_and_always_uploads(action):
    steps = {s.get("id"): s for s in action["runs"]["steps"]}
    assert "gradtool check" in steps["check"]["run"]
    assert "gradtool flow" not in steps["check"]["run"]
    assert "gradtool flow" in steps["flow"]["run"]
    # the flow step runs after a failed check (a plain `if` would skip it), not after cancel
    assert "!cancelled()" in steps["flow"]["if"] or "always()" in steps["flow"]["if"]
    (upload,) = (s for s in action["runs"]["steps"] if "upload-artifact" in s.get("uses", ""))
    assert upload["uses"] == "actions/upload-artifact@v4"
    assert upload["if"].startswith("always()")
    for step in ("check", "flow"):
        assert "--junit" in steps[step]["run"] and "--format github" in steps[step]["run"]


def test_action_install_defaults_to_the_cpu_torch_index_and_its_own_checkout(action):
    inputs = action["inputs"]
    assert inputs["extra-index-url"]["default"] == "https://download.pytorch.org/whl/cpu"
    assert inputs["install"]["default"] == ""
    assert '"${INSTALL:-$GITHUB_ACTION_PATH}"' in _step(action, "install")["run"]


def _step(action: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in action["runs"]["steps"] if s.get("id") == step_id)


def test_action_scripts_parse_in_bash(action, tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    for step in action["runs"]["steps"]:
        if "run" in step:
            script = tmp_path / "step.sh"
            script.write_text(step["run"])
            proc = subprocess.run([bash, "-n", script], capture_output=True, text=True)
            assert proc.returncode == 0, (step.get("name"), proc.stderr)


def _bash() -> str:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    return bash


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _execute(action, step_id: str, tmp_path: Path, env: dict[str, str], cwd: Path):
    """Run one step's script as the runner does (`bash --noprofile --norc -eo pipefail`),
    with tmp_path/bin first on PATH. Returns (the process, GITHUB_OUTPUT)."""
    output = tmp_path / "github_output"
    output.write_text("")
    script = tmp_path / f"{step_id}.sh"
    script.write_text(_step(action, step_id)["run"])
    full_env = {
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(output),
        "HOME": str(tmp_path),
        **env,
    }
    proc = subprocess.run(
        [_bash(), "--noprofile", "--norc", "-eo", "pipefail", script],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
    )
    return proc, output.read_text()


def _run_step(action, step_id: str, tmp_path: Path, *, env: dict[str, str], exit_code: int = 0):
    """One step's script with a stand-in `gradtool` that records its arguments and exits
    `exit_code`. Returns (exit code, recorded argv lines, GITHUB_OUTPUT)."""
    argv_log = tmp_path / "argv"
    _executable(
        tmp_path / "bin" / "gradtool",
        f'#!{_bash()}\nfor a in "$@"; do printf "%s\\n" "$a"; done > {argv_log}\n'
        f"exit {exit_code}\n",
    )
    proc, output = _execute(action, step_id, tmp_path, env, cwd=tmp_path)
    argv = argv_log.read_text().splitlines() if argv_log.exists() else None
    return proc.returncode, argv, output


@pytest.mark.parametrize("command", ["check", "flow"])
@pytest.mark.parametrize("exit_code", [0, 1, 124])
def test_action_step_passes_gradtools_exit_code_through(action, tmp_path, command, exit_code):
    env = {"CONFIG": "", "ARGS": "--timeout 600", "REPORTS": str(tmp_path / "r")}
    code, argv, output = _run_step(action, command, tmp_path, env=env, exit_code=exit_code)
    assert code == exit_code
    assert output.strip() == f"exit-code={exit_code}"
    reports = tmp_path / "r"
    assert argv == [
        command,
        "--format",
        "github",
        "--junit",
        f"{reports}/{command}.junit.xml",
        "--json",
        f"{reports}/{command}.json",
        "--timeout",
        "600",
    ]


def test_action_check_step_passes_the_config_file(action, tmp_path):
    env = {"CONFIG": "sub dir/pyproject.toml", "ARGS": "", "REPORTS": str(tmp_path)}
    code, argv, _ = _run_step(action, "check", tmp_path, env=env)
    assert code == 0
    assert argv[:3] == ["check", "--config", "sub dir/pyproject.toml"]


def test_action_refuses_an_unknown_command_and_makes_the_report_folder(action, tmp_path):
    code, _, output = _run_step(
        action, "paths", tmp_path, env={"COMMAND": "both", "REPORT_DIR": "out/reports"}
    )
    assert code == 0
    assert output.strip() == f"report-dir={(tmp_path / 'out' / 'reports').resolve()}"
    code, _, output = _run_step(
        action, "paths", tmp_path, env={"COMMAND": "chekc", "REPORT_DIR": "x"}
    )
    assert code == 2 and output == ""


def test_action_install_none_uses_the_gradtool_already_there(action, tmp_path):
    code, _, _ = _run_step(
        action, "install", tmp_path, env={"INSTALL": "none", "EXTRA_INDEX_URL": ""}
    )
    assert code == 0


# --- .pre-commit-hooks.yaml ----------------------------------------------------------------------


def test_pre_commit_hooks_are_valid_and_run_the_configured_targets():
    for hooks in _documents(HOOKS):
        assert [h["id"] for h in hooks] == ["gradtool", "gradtool-flow"]
        for hook in hooks:
            assert set(hook) <= HOOK_KEYS, hook
            assert {"id", "name", "entry", "language"} <= set(hook)
            assert hook["language"] == "python"
            assert hook["pass_filenames"] is False  # the targets come from pyproject.toml
            assert re.search(hook["files"], "ops/attention.py")
            assert re.search(hook["files"], "pyproject.toml")
            assert not re.search(hook["files"], "README.md")
        assert [h["entry"] for h in hooks] == ["gradtool check", "gradtool flow"]


# --- the action's steps with the real gradtool, on the sample project --------------------------

EXAMPLE = REPO / "examples" / "ci"
# the package's own files, not find_spec: an editable install elsewhere can answer for it
PACKAGE = Path(gradcheck_tool.__file__).parent
needs_ci_run = pytest.mark.skipif(
    not all((PACKAGE / f).is_file() for f in ("config.py", "formats/github.py")),
    reason="needs the configured run and the github/junit formats of issue #13",
)


def _line_of_backward(path: Path, class_name: str) -> int:
    tree = ast.parse(path.read_text())
    (cls,) = (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    (backward,) = (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "backward")
    return backward.lineno


def _real_gradtool_step(action, step_id: str, tmp_path: Path):
    """The step's script in examples/ci with this checkout's gradtool as `gradtool`."""
    _executable(
        tmp_path / "bin" / "gradtool",
        f'#!{_bash()}\nexec "{sys.executable}" -m gradcheck_tool "$@"\n',
    )
    env = {
        "CONFIG": "",
        "ARGS": "",
        "REPORTS": str(tmp_path / "reports"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "PYTHONPATH": str(REPO),
        "COLUMNS": "100",
    }
    (tmp_path / "reports").mkdir()
    return _execute(action, step_id, tmp_path, env, cwd=EXAMPLE)


@needs_ci_run
def test_action_check_step_on_the_sample_project(tmp_path):
    """Issue #13's "done when", through the action: exit 1, exactly one ::error at the line
    of the wrong backward, JUnit that junitparser reads with one failure on the wrong tensor,
    a step summary."""
    junitparser = pytest.importorskip("junitparser")
    proc, output = _real_gradtool_step(read_yaml(ACTION), "check", tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert output.strip() == "exit-code=1"
    errors = [line for line in proc.stdout.splitlines() if line.startswith("::error")]
    line = _line_of_backward(EXAMPLE / "ops" / "attention.py", "FusedAttention")
    assert len(errors) == 1, proc.stdout
    assert errors[0].startswith(f"::error file=ops/attention.py,line={line},"), errors
    xml = junitparser.JUnitXml.fromfile(str(tmp_path / "reports" / "check.junit.xml"))
    failed = [
        (suite.name, case.name)
        for suite in xml
        for case in suite
        if any(isinstance(r, (junitparser.Failure, junitparser.Error)) for r in case.result)
    ]
    assert failed == [("ops/attention.py:FusedAttention", "k")]
    assert "FusedAttention" in (tmp_path / "summary.md").read_text()


@needs_ci_run
def test_action_flow_step_on_the_sample_project(tmp_path):
    proc, output = _real_gradtool_step(read_yaml(ACTION), "flow", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert output.strip() == "exit-code=0"
    assert "::error" not in proc.stdout
    assert (tmp_path / "reports" / "flow.junit.xml").is_file()

"""Shared paths and helpers: where the fixtures live, running the CLI (in a fresh process or in
this one), checking a user-like file, and reading what gradtool said.

The test models shared by several test modules live in `models.py`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SAMPLES = REPO / "sample_models"

TARGETS = FIXTURES / "targets"  # every kind of target a file can name, and sibling imports
BAD = FIXTURES / "bad"  # files gradtool cannot use: exit 2
BUGS = FIXTURES / "bugs"  # a Correct and a Buggy autograd.Function each
MODEL_BUGS = FIXTURES / "model_bugs"  # models whose gradient never reaches a parameter
CORRECT = FIXTURES / "correct"  # correct models that must pass
CHECKED_TENSORS = FIXTURES / "checked_tensors"  # complex outputs, nested/in-place inputs, none
KINKS = FIXTURES / "kinks"  # ReLU, abs and clamp exactly at their corners
SECOND_ORDER = FIXTURES / "second_order"
FORWARD_MODE = FIXTURES / "forward_mode"
SWEEP = FIXTURES / "sweep"  # step-size trouble: round-off, truncation, a bug past entry 64
RANDOMNESS = FIXTURES / "randomness"  # a private generator, a loss_fn using the global RNG
EVALUATION = FIXTURES / "evaluation"  # models vmap cannot batch; a memory-hungry CNN
INTERRUPT = FIXTURES / "interrupt"
CLI_FILES = FIXTURES / "cli"  # small files for the command line's flags and messages
# one file, one seeded Function per classic backward mistake: f"{HINTS}:SignFlipped"
HINTS = FIXTURES / "hints" / "hint_patterns.py"
# seeded Function of HINTS -> (the one tensor it breaks, words its hint must contain)
HINT_PATTERNS = {
    "SignFlipped": ("x", ["sign flipped"]),
    "FactorHalf": ("x", ["constant factor", "0.5 ×"]),
    "WeightGradMissing": ("weight", ["gradient missing"]),
    "IgnoresGradOutput": ("x", ["upstream gradient ignored"]),
    "WeightTransposed": ("weight", ["transposed"]),
    "RowsWrong": ("weight", ["only part of the tensor is wrong", "rows 1–2 of 4"]),
    "BiasAveraged": ("bias", ["batch reduction wrong", "numeric / 6"]),
    "BiasTimesBatch": ("bias", ["batch reduction wrong", "numeric × 6"]),
}


# The message gradtool gives when autograd never reaches a tensor that the loss depends on.
NEVER_REACHES = "never reach"


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str | os.PathLike, cwd: Path = REPO, timeout: float = 240) -> CliResult:
    """Run `python -m gradcheck_tool ARGS` in a fresh process, as a user's shell would."""
    env = dict(os.environ)
    for name in ("FORCE_COLOR", "NO_COLOR", "PYTHONSTARTUP"):
        env.pop(name, None)
    env["COLUMNS"] = "400"  # keep rich from wrapping long tmp paths inside messages
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "gradcheck_tool", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def invoke_cli(*args: str | os.PathLike) -> CliResult:
    """`gradtool ARGS` in this process (typer's CliRunner): the exit code, stdout and stderr
    apart, without an interpreter start-up. An exception other than SystemExit is re-raised."""
    from typer.testing import CliRunner

    from gradcheck_tool.cli import app

    env = {"COLUMNS": "400", "NO_COLOR": "1", "FORCE_COLOR": None}
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


class CheckRun:
    """One in-process `gradtool check` run: exit code, the printed table, the JSON report."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        from typer.testing import CliRunner

        from gradcheck_tool.cli import app

        json_path = tmp_path / "report.json"
        # a fixed width: the table is parsed, and the caller's COLUMNS must not wrap it
        result = CliRunner().invoke(
            app, ["check", *args, "--json", str(json_path)], env={"COLUMNS": "200"}
        )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        self.code = result.exit_code
        self.output = result.output
        self.report = json.loads(json_path.read_text()) if json_path.exists() else None

    def result(self, name: str) -> dict:
        found = [r for r in self.report["results"] if r["name"] == name]
        assert found, (name, [r["name"] for r in self.report["results"]])
        return found[0]

    def table_cell(self, name: str, column: str) -> str:
        """The text in the tensor's row under the header `column`, wrapped lines joined."""
        lines = self.output.splitlines()
        header = next(ln for ln in lines if ln.startswith("┃tensor"))
        index = [c.strip() for c in header.split("┃")].index(column)
        starts = [i for i, ln in enumerate(lines) if re.match(rf"^│{re.escape(name)}\s+│", ln)]
        assert len(starts) == 1, (name, self.output)
        pieces = [lines[starts[0]].split("│")[index].strip()]
        for line in lines[starts[0] + 1 :]:
            cells = line.split("│")
            if len(cells) < 3 or cells[1].strip():  # a border, or the next tensor's row
                break
            pieces.append(cells[index].strip())
        return " ".join(p for p in pieces if p)


def check_cli(tmp_path: Path, *args: str | os.PathLike) -> CheckRun:
    """`gradtool check ARGS --json FILE` in this process."""
    return CheckRun(tmp_path, *[str(a) for a in args])


def spec(path: str | os.PathLike, name: str | None = None) -> str:
    """The TARGET argument: FILE or FILE:NAME."""
    return f"{path}:{name}" if name else str(path)


def check_file(spec: str | os.PathLike, **kwargs: Any):
    """Load a user-like file the way the CLI does and check it through the Python API."""
    from gradcheck_tool import check
    from gradcheck_tool.loading import load_target

    loaded = load_target(str(spec))
    return check(loaded.obj, loaded.example_inputs, loss_fn=loaded.loss_fn, **kwargs)


def failing(report) -> set[str]:
    return {r.name for r in report.results if not r.passed}


def message_of(result) -> str:
    """Everything gradtool says about one tensor, lower-cased for matching."""
    return f"{result.note} {result.hint or ''}".lower()


def assert_all_pass(report) -> None:
    assert report.passed, [(r.name, r.rel_error, r.note) for r in report.results if not r.passed]
    assert not report.nondeterministic
    for r in report.results:
        assert r.rating in ("excellent", "acceptable"), r
        assert r.checked >= 1 or r.directions >= 1


def without_timing(report) -> dict:
    data = report.to_dict()
    data.pop("seconds")
    return data


def flat(text: str) -> str:
    """Whitespace-normalized: rich wraps long messages at the console width."""
    return " ".join(text.split())


def assert_no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output


def assert_user_error(result: CliResult, *words: str) -> None:
    """Exit 2 (the user's file or arguments), the words in the message, no crash."""
    assert result.code == 2, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
    for word in words:
        assert word in flat(result.output), result.output


class PicklePayload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


# --- golden output: rendered tables pinned in files, refreshed only on request -------------

GOLDEN = REPO / "tests" / "golden"


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite the golden files under tests/golden/ from the current output",
    )


# relative errors at rounding level (below 1e-8) differ from CPU to CPU: not pinned
ROUNDING_LEVEL = re.compile(r"\b\d\.\d\de-(?:0?[89]|[1-9]\d)\b")


@pytest.fixture
def golden(request):
    """golden(name, text): `text` must equal tests/golden/NAME; --update-golden rewrites it.
    Numbers below 1e-8 (rounding noise) are written as <1e-8> on both sides."""
    update = request.config.getoption("--update-golden")

    def compare(name: str, text: str) -> None:
        text = ROUNDING_LEVEL.sub("<1e-8>", text)
        path = GOLDEN / name
        if update:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"no golden file {path.name}: run pytest --update-golden"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, (
            f"the output differs from tests/golden/{name}; if the change is intended, "
            "run pytest --update-golden and review the diff"
        )

    return compare


def one_entry_wrong(index: int) -> type:
    """x ↦ x², whose backward drops the gradient of one entry (flat `index`): a bug that a
    sample of coordinates likely misses and a random direction does not."""
    import torch

    class OneEntryWrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            grad = 2 * x * grad_output
            grad.view(-1)[index] = 0  # BUG in a single entry
            return grad

    return OneEntryWrong

"""Shared paths and helpers: where the fixtures live, running the CLI, checking a user-like file."""

from __future__ import annotations

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

TARGETS = FIXTURES / "targets"
BAD = FIXTURES / "bad"
BUGS = FIXTURES / "bugs"
MODEL_BUGS = FIXTURES / "model_bugs"
CORRECT = FIXTURES / "correct"

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

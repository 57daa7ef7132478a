"""Shared paths and helpers: where the fixtures live, running the CLI, checking a user-like file."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SAMPLES = REPO / "sample_models"

TARGETS = FIXTURES / "targets"
BAD = FIXTURES / "bad"
BUGS = FIXTURES / "bugs"
MODEL_BUGS = FIXTURES / "model_bugs"
CORRECT = FIXTURES / "correct"
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

"""The JSON format: `report.to_dict()`, with NaN/Inf written as strings (see results.py) so
the text stays valid JSON.

A run of one target with a report is that report's dict, as it always was; any other run
(several targets, or one that stopped before its report) is an envelope: tool, version,
command, passed, exit_code (the worst) and `runs`, one `TargetRun.to_dict()` each."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .._version import __version__
from ..errors import OptionError
from ..results import TargetRun, worst_exit_code
from ._runs import commands


def dumps(report: Any) -> str:
    return _text(report.to_dict())


def _text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def runs_dict(runs: Sequence[TargetRun], configured: bool = False) -> dict[str, Any]:
    """The JSON of a run: the report's own dict for one TARGET with a report, else (several
    targets, a configured run, a target with no report) the envelope with every target."""
    if len(runs) == 1 and runs[0].report is not None and not configured:
        return runs[0].report.to_dict()
    return {
        "tool": "gradtool",
        "version": __version__,
        "command": commands(runs),
        "passed": all(r.passed for r in runs),
        "exit_code": worst_exit_code(runs),
        "runs": [r.to_dict() for r in runs],
    }


def write(report: Any, out: TextIO, width: int | None = None) -> None:
    out.write(dumps(report))
    out.flush()


def write_runs(
    runs: Sequence[TargetRun], out: TextIO, width: int | None = None, *, configured: bool = False
) -> None:
    out.write(_text(runs_dict(runs, configured)))
    out.flush()


def check_path(path: str, option: str = "json") -> None:
    """Refuse a report path that can't be written, before any work is done."""
    target = Path(path)
    if target.is_dir():
        raise OptionError(option, f"{path}: is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OptionError(option, f"{path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise OptionError(option, f"{path}: not writable")


def write_file(report: Any, path: str, option: str = "json") -> None:
    try:
        with open(path, "w", encoding="utf-8") as fh:
            write(report, fh)
    except OSError as exc:
        raise OptionError(option, f"{path}: could not write: {exc.strerror or exc}") from None

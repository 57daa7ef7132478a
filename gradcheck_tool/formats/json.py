"""The JSON format: `report.to_dict()`, with NaN/Inf written as strings (see results.py) so
the text stays valid JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

from ..errors import OptionError


def dumps(report: Any) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"


def write(report: Any, out: TextIO, width: int | None = None) -> None:
    out.write(dumps(report))
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


def write_runs(runs, out, width=None):  # PLACEHOLDER until the formats helper's merge
    if len(runs) == 1 and runs[0].report is not None:
        write(runs[0].report, out)
        return
    out.write(json.dumps({"runs": [r.to_dict() for r in runs]}, indent=2) + "\n")

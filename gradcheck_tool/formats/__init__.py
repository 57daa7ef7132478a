"""Report formats: each turns a report (check or flow) into text, one small module each.

A format module has `write(report, out, width=None)`, writing one report to a text stream,
and `write_runs(runs, out, width=None)`, writing a run of one or more targets
(`results.TargetRun`: a report, or the error that stopped the target); the CLI picks one by
name from `FORMATS` and imports only that module (rich and matplotlib load only when a format
needs them). Adding a format is one module here and one line in `FORMATS`.
"""

from __future__ import annotations

import enum
import importlib
from typing import Any, TextIO


class OutputFormat(str, enum.Enum):
    TABLE = "table"  # the rich tables, for a terminal (plain text off one)
    JSON = "json"  # report.to_dict() as JSON
    GITHUB = "github"  # GitHub Actions workflow commands (::error file=...,line=...::)
    MARKDOWN = "markdown"  # a summary for GITHUB_STEP_SUMMARY or a pull-request comment
    JUNIT = "junit"  # JUnit XML (--junit PATH), for Jenkins, GitLab and GitHub test reporters


# format -> the module that writes it
FORMATS = {
    OutputFormat.TABLE: "table",
    OutputFormat.JSON: "json",
    OutputFormat.GITHUB: "github",
    OutputFormat.MARKDOWN: "markdown",
    OutputFormat.JUNIT: "junit",
}


def write(report: Any, fmt: OutputFormat, out: TextIO, width: int | None = None) -> None:
    """Write `report` to `out` in format `fmt`."""
    module = importlib.import_module(f"{__name__}.{FORMATS[OutputFormat(fmt)]}")
    module.write(report, out, width=width)


def write_runs(
    runs: Any, fmt: OutputFormat, out: TextIO, width: int | None = None, *, configured: bool = False
) -> None:
    """Write a run of targets (a sequence of `results.TargetRun`) to `out` in format `fmt`.
    `configured`: the targets of the project's config (not one TARGET): the table titles each
    and ends with a summary, the JSON is always the envelope of every target, however many."""
    module = importlib.import_module(f"{__name__}.{FORMATS[OutputFormat(fmt)]}")
    module.write_runs(runs, out, width=width, configured=configured)


def write_runs_file(
    runs: Any, fmt: OutputFormat, path: str, option: str, *, configured: bool = False
) -> None:
    """`--json PATH`, `--junit PATH`: `write_runs` into a file; a file that can't be written
    is an OptionError naming `option` (check it first with `json.check_path(path, option)`)."""
    from ..errors import OptionError

    try:
        with open(path, "w", encoding="utf-8") as fh:
            write_runs(runs, fmt, fh, configured=configured)
    except OSError as exc:
        raise OptionError(option, f"{path}: could not write: {exc.strerror or exc}") from None

"""Report formats: each turns a report (check or flow) into text, one small module each.

A format module has `write(report, out, width=None)`, writing to a text stream; the CLI picks
one by name from `FORMATS` and imports only that module (rich and matplotlib load only when a
format needs them). Adding a format is one module here and one line in `FORMATS`.
"""

from __future__ import annotations

import enum
import importlib
from typing import Any, TextIO


class OutputFormat(str, enum.Enum):
    TABLE = "table"  # the rich tables, for a terminal (plain text off one)
    JSON = "json"  # report.to_dict() as JSON


# format -> the module that writes it
FORMATS = {OutputFormat.TABLE: "table", OutputFormat.JSON: "json"}


def write(report: Any, fmt: OutputFormat, out: TextIO, width: int | None = None) -> None:
    """Write `report` to `out` in format `fmt`."""
    module = importlib.import_module(f"{__name__}.{FORMATS[OutputFormat(fmt)]}")
    module.write(report, out, width=width)

"""The rich console every format prints through: plain text off a terminal or with NO_COLOR."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from rich.console import Console


def make_console(
    stderr: bool = False, *, file: TextIO | None = None, width: int | None = None
) -> Console:
    """A console on stdout (stderr, or `file`) that writes plain text when that stream is not
    a terminal or when NO_COLOR is set; off a terminal it is `width` wide (default: COLUMNS
    when set, else wide enough for the tables)."""
    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    no_color = "NO_COLOR" in os.environ or not stream.isatty()
    if width is None and not stream.isatty():
        width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 120
    return Console(
        file=stream,
        no_color=no_color,
        highlight=False,
        soft_wrap=False,
        width=width,
        emoji=False,
        force_terminal=None if not no_color else False,
    )

"""The table format: the check or flow report as rich tables on a terminal, plain text off one."""

from __future__ import annotations

from typing import TextIO

from ..results import CheckReport, FlowReport
from .console import make_console


def write(report: CheckReport | FlowReport, out: TextIO, width: int | None = None) -> None:
    console = make_console(file=out, width=width)
    if isinstance(report, CheckReport):
        from .check_table import render_check

        render_check(report, console)
    elif isinstance(report, FlowReport):
        from .flow_table import render_flow

        render_flow(report, console)
    else:
        raise TypeError(f"no table for a {type(report).__name__}")

"""The pytest plugin (entry point `pytest11`): `pytest --gradtool` runs every target
configured in `[tool.gradtool]` as a test item. Loaded by every pytest run where gradtool is
installed, so importing it must stay cheap (no torch) and change nothing without --gradtool."""

from __future__ import annotations

from typing import Any


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("gradtool")
    group.addoption(
        "--gradtool",
        action="store_true",
        default=False,
        help="Run every gradtool check and flow target configured in pyproject.toml.",
    )

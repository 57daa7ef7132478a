"""The files `gradtool graph` writes: --dot, --svg, --png (Graphviz's dot), --html (being
built: #15)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def check_outputs(outputs: Mapping[str, str]) -> None:
    """Refuse, before the model runs, a path that can't be written or an image without dot."""


def write_outputs(report: Any, outputs: Mapping[str, str]) -> Iterator[str]:
    """Write each asked-for file; yield the paths written."""
    raise NotImplementedError("gradtool graph's files are being built (#15)")
    yield ""

"""`gradtool graph`: the autograd graph of a loss, grouped by module (being built: #15)."""

from __future__ import annotations

from typing import Any


def run_graph(model: Any, args: tuple, kwargs: dict, **options: Any) -> Any:
    raise NotImplementedError("gradtool graph is being built (#15)")

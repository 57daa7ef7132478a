"""`gradtool memory`: what one forward and backward keeps, per module (being built: #15)."""

from __future__ import annotations

from typing import Any


def run_memory(model: Any, args: tuple, kwargs: dict, **options: Any) -> Any:
    raise NotImplementedError("gradtool memory is being built (#15)")

"""What a check is asked to do, and how it stops early."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...options import DEFAULT_SAMPLES
from ...stopping import Interrupted

__all__ = ["CheckOptions", "Interrupted"]


@dataclass
class CheckOptions:
    tolerance: float = 1e-5
    eps: float = 1e-6
    full: bool = False
    samples: int = DEFAULT_SAMPLES  # coordinates sampled per larger tensor (to localise)
    # random directions per tensor of a larger model, compared first; coordinates are
    # sampled only for a tensor they don't pass (Note [directions]); 0: coordinates always
    directions: int = 0
    seed: int = 0
    batched: bool = True
    sweep: bool = False  # sweep the step size for every tensor, not only failing ones
    budget: float | None = None  # seconds: keep adding sampled coordinates until spent
    progress: Callable[[str, int, int], None] | None = None

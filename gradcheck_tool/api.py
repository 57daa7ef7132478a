"""The Python API: the CLI's pipeline minus loading and rendering."""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import __version__
from .finite_diff import DEFAULT_SAMPLES, CheckOptions, run_check
from .prepare import Problem, normalize_inputs, preserved_state
from .results import CheckReport


def check(
    target: Any,
    inputs: Any = None,
    *,
    kwargs: dict[str, Any] | None = None,
    loss_fn: Callable[..., Any] | None = None,
    tolerance: float = 1e-5,
    eps: float = 1e-6,
    full: bool = False,
    seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
    batched: bool = True,
    name: str | None = None,
    found_by: str = "passed to check()",
    progress: Callable[[str, int, int], None] | None = None,
) -> CheckReport:
    """Check every gradient of `target` against float64 central differences.

    `target` is an nn.Module, a torch.autograd.Function subclass or a function of tensors;
    `inputs` a tensor, a tuple/list (positional) or a dict (keyword arguments). The user's
    objects, RNG state, default dtype and grad mode are left as they were. `kwargs` adds
    keyword arguments to positional `inputs`.
    """
    args, keywords = normalize_inputs(inputs if inputs is not None else ())
    keywords.update(kwargs or {})
    options = CheckOptions(
        tolerance=tolerance,
        eps=eps,
        full=full,
        samples=samples,
        seed=seed,
        batched=batched,
        progress=progress,
    )
    label = name or getattr(target, "__name__", None) or type(target).__name__
    with preserved_state():
        torch.set_default_dtype(torch.float64)
        problem = Problem(target, args, keywords, loss_fn=loss_fn, dtype=torch.float64, seed=seed)
        return run_check(problem, options, target=label, found_by=found_by, version=__version__)

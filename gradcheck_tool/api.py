"""The Python API: the CLI's pipeline minus loading and rendering."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from . import __version__
from .errors import InputError
from .finite_diff import DEFAULT_SAMPLES, CheckOptions, Interrupted, run_check
from .prepare import Problem, SecondOrderProblem, normalize_inputs, preserved_state
from .results import CheckReport

# Defaults per check dtype: the tutorial's float64 numbers, and float32's weaker ones
# (step ≈ cube root of float32's epsilon, tolerance to match its ~7 digits).
DEFAULTS = {torch.float64: (1e-5, 1e-6), torch.float32: (1e-2, 1e-3)}


def check(
    target: Any,
    inputs: Any = None,
    *,
    loss_fn: Callable[..., Any] | None = None,
    tolerance: float | None = None,
    eps: float | None = None,
    full: bool = False,
    seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
    budget: float | None = None,
    second_order: bool = False,
    sweep: bool = False,
    forward_mode: bool = False,
    dtype: torch.dtype | str = torch.float64,
    device: str | torch.device | None = None,
    batched: bool = True,
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    found_by: str = "passed to check()",
    progress: Callable[[str, int, int], None] | None = None,
) -> CheckReport:
    """Check every gradient of `target` against central differences in float64.

    `target` is an nn.Module, a torch.autograd.Function subclass or a function of tensors;
    `inputs` a tensor, a tuple/list (positional) or a dict (keyword arguments); `kwargs`
    adds keyword arguments to positional `inputs`. `tolerance` and `eps` default to 1e-5
    and 1e-6 (1e-2 and 1e-3 with dtype=float32). The user's objects, RNG state, default
    dtype and grad mode are left as they were.
    """
    check_dtype = _dtype(dtype)
    if forward_mode and not _defines_jvp(target):
        raise InputError(
            "--forward-mode checks an autograd.Function's jvp, and "
            f"{getattr(target, '__name__', type(target).__name__)} defines none",
            hint="Define `jvp` (with `setup_context`) on the Function, or drop --forward-mode.",
        )
    default_tol, default_eps = DEFAULTS[check_dtype]
    args, keywords = normalize_inputs(inputs if inputs is not None else ())
    keywords.update(kwargs or {})
    options = CheckOptions(
        tolerance=default_tol if tolerance is None else tolerance,
        eps=default_eps if eps is None else eps,
        full=full,
        samples=samples,
        budget=budget,
        seed=seed,
        batched=batched,
        sweep=sweep,
        progress=progress,
    )
    for what, value in (("tolerance", options.tolerance), ("eps", options.eps)):
        if not value > 0 or value != value or value == float("inf"):
            raise InputError(f"--{what} must be a positive number, not {value}")
    if samples < 1:
        raise InputError(f"--samples must be at least 1, not {samples}")
    label = name or getattr(target, "__name__", None) or type(target).__name__
    where = _device(target, args, keywords, device)
    meta = dict(target=label, found_by=found_by, version=__version__)
    with preserved_state():
        torch.set_default_dtype(check_dtype)
        problem = Problem(
            target, args, keywords, loss_fn=loss_fn, dtype=check_dtype, seed=seed, device=where
        )
        report = run_check(problem, options, forward_mode=forward_mode, **meta)
        if second_order and not report.interrupted:
            try:
                second = run_check(
                    SecondOrderProblem(problem, seed), options, label_suffix=" (2nd order)", **meta
                )
            except Interrupted as stop:
                raise Interrupted(_merge(report, stop.report)) from None
            report = _merge(report, second)
    if check_dtype == torch.float32:
        report = dataclasses.replace(
            report,
            warnings=(
                "float32 check: finite differences in float32 resolve only ~3 digits of a "
                f"gradient (eps={options.eps:g}, tolerance={options.tolerance:g}); a pass here "
                "is much weaker evidence than a float64 pass.",
                *report.warnings,
            ),
        )
    return report


def _defines_jvp(target: Any) -> bool:
    """A Function subclass overriding jvp; modules and functions are checked through the
    Functions inside them, so they qualify when torch can run forward AD through them."""
    if isinstance(target, type) and issubclass(target, torch.autograd.Function):
        return getattr(target, "jvp", None) is not getattr(torch.autograd.Function, "jvp", None)
    return True


def _merge(first: CheckReport, second: CheckReport) -> CheckReport:
    return dataclasses.replace(
        first,
        results=first.results + second.results,
        warnings=first.warnings + tuple(w for w in second.warnings if w not in first.warnings),
        seconds=first.seconds + second.seconds,
        interrupted=first.interrupted or second.interrupted,
    )


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = {
            "float64": torch.float64,
            "double": torch.float64,
            "float32": torch.float32,
            "float": torch.float32,
        }.get(dtype, dtype)  # type: ignore[arg-type]
    if dtype not in DEFAULTS:
        raise InputError(f"--dtype must be float64 or float32, not {dtype}")
    return dtype  # type: ignore[return-value]


def _device(
    target: Any, args: tuple, kwargs: dict, device: str | torch.device | None
) -> torch.device | None:
    """The requested device, else where the model or its inputs already live."""
    if device is not None:
        where = torch.device(device)
        if where.type == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda was asked for, but CUDA is not available here")
        return where
    if isinstance(target, torch.nn.Module):
        for p in target.parameters():
            return p.device if p.device.type != "meta" else None
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None

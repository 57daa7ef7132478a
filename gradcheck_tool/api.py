"""The Python API: the CLI's pipeline minus loading and rendering."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from ._guest import exact_float32, init_cuda, preserved_state
from ._version import __version__
from .engines.check import CheckOptions, Interrupted, run_check
from .errors import InputError, OptionError
from .options import DEFAULT_SAMPLES, CheckDtype, at_least, choice, positive, valid_seed
from .prepare import Problem, SecondOrderProblem, home_device, normalize_inputs, parse_device
from .results import CheckReport
from .targets import resolve_target

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
        raise OptionError(
            "forward_mode",
            "checks an autograd.Function's jvp, and "
            f"{getattr(target, '__name__', type(target).__name__)} is not a Function that "
            "defines one",
            hint="Define `jvp` (with `setup_context`) on the Function, or drop forward mode.",
        )
    default_tol, default_eps = DEFAULTS[check_dtype]
    args, keywords = normalize_inputs(inputs if inputs is not None else ())
    keywords.update(kwargs or {})
    options = CheckOptions(
        tolerance=default_tol if tolerance is None else positive("tolerance", tolerance),
        eps=default_eps if eps is None else positive("eps", eps),
        full=full,
        samples=at_least("samples", samples, 1),
        budget=None
        if budget is None
        else positive("budget", budget, "a positive number of seconds"),
        seed=valid_seed(seed),
        batched=batched,
        sweep=sweep,
        progress=progress,
    )
    target, args, keywords, target_notes = resolve_target(target, args, keywords)
    label = name or getattr(target, "__name__", None) or type(target).__name__
    where = parse_device(device, ("cpu", "cuda")) if device is not None else None
    where = where or home_device(target, (args, keywords))
    meta = dict(target=label, found_by=found_by, version=__version__)
    # CUDA is initialized before the RNG state is captured: its generators are then fixed
    # for every evaluation (dropout on the GPU) and the user's are restored at the end
    init_cuda(where)
    on_cuda = where is not None and where.type == "cuda"
    with preserved_state(), exact_float32(on_cuda and check_dtype == torch.float32):
        torch.set_default_dtype(check_dtype)
        problem = Problem(
            target, args, keywords, loss_fn=loss_fn, dtype=check_dtype, seed=seed, device=where
        )
        if not problem.checkables:  # certifying nothing would turn a mistake into a pass
            raise InputError(
                f"nothing to check in {label}: no parameter requires grad and no input is a "
                "floating-point tensor",
                hint="Unfreeze the parameters, or pass floating inputs (token ids are never "
                "perturbed).",
            )
        ran_on = str(problem.checkables[0].value.device)
        try:
            report = run_check(problem, options, forward_mode=forward_mode, **meta)
            if second_order and not report.interrupted:
                try:
                    second = run_check(
                        SecondOrderProblem(problem, seed),
                        options,
                        label_suffix=" (2nd order)",
                        **meta,
                    )
                except Interrupted as stop:
                    raise Interrupted(_merge(report, stop.report)) from None
                report = _merge(report, second)
        except Interrupted as stop:
            raise Interrupted(dataclasses.replace(stop.report, device=ran_on)) from None
        report = dataclasses.replace(report, device=ran_on)
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
    if target_notes:  # what was checked, when it is not literally the object passed
        report = dataclasses.replace(report, warnings=(*target_notes, *report.warnings))
    return report


def _defines_jvp(target: Any) -> bool:
    """An autograd.Function subclass that overrides jvp (what --forward-mode checks)."""
    return (
        isinstance(target, type)
        and issubclass(target, torch.autograd.Function)
        and getattr(target, "jvp", None) is not getattr(torch.autograd.Function, "jvp", None)
    )


def _merge(first: CheckReport, second: CheckReport) -> CheckReport:
    return dataclasses.replace(
        first,
        results=first.results + second.results,
        warnings=first.warnings + tuple(w for w in second.warnings if w not in first.warnings),
        seconds=first.seconds + second.seconds,
        interrupted=first.interrupted or second.interrupted,
    )


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    return {"float64": torch.float64, "float32": torch.float32}[choice(CheckDtype, "dtype", dtype)]



"""The Python API: the CLI's pipeline minus loading and rendering."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.utils._pytree

from ._version import __version__
from .engines.check import DEFAULT_SAMPLES, CheckOptions, Interrupted, run_check
from .errors import InputError
from .loading import parse_dtype
from .prepare import (
    Problem,
    SecondOrderProblem,
    exact_float32,
    init_cuda,
    normalize_inputs,
    preserved_state,
)
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
            f"{getattr(target, '__name__', type(target).__name__)} is not a Function that "
            "defines one",
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
    if budget is not None and not 0 < budget < float("inf"):
        raise InputError(f"--budget must be a positive number of seconds, not {budget}")
    if not 0 <= seed < 2**63:
        raise InputError(f"--seed must be between 0 and 2**63 - 1, not {seed}")
    target = _unwrap(target)
    label = name or getattr(target, "__name__", None) or type(target).__name__
    where = _device(target, args, keywords, device)
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
    checked = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    if checked not in DEFAULTS:
        raise InputError(f"--dtype must be float64 or float32, not {dtype}")
    return checked


def _unwrap(target: Any) -> Any:
    """`model.forward` is the model; a function that closes over a module would run (and
    change) the user's own module, and its parameters would go unchecked: refuse it."""
    owner = getattr(target, "__self__", None)
    if isinstance(owner, torch.nn.Module) and getattr(target, "__name__", "") == "forward":
        return owner
    if not isinstance(target, torch.nn.Module) and callable(target):
        cells = [
            c.cell_contents
            for c in (getattr(target, "__closure__", None) or ())
            if _has_contents(c)
        ]
        used = [type(v).__name__ for v in cells if isinstance(v, torch.nn.Module)]
        if isinstance(owner, torch.nn.Module):
            used.append(type(owner).__name__)
        if used:
            raise InputError(
                f"the function uses the module {used[0]} from outside its arguments: its "
                "parameters would not be checked, and running it would change your model",
                hint="Pass the module itself (or a small nn.Module wrapping it) as the target.",
            )
    return target


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018  (an empty cell raises)
    except ValueError:
        return False
    return True


def _device(
    target: Any, args: tuple, kwargs: dict, device: str | torch.device | None
) -> torch.device | None:
    """The requested device, else where the model or its inputs already live."""
    if device is not None:
        try:
            where = torch.device(device)
        except (RuntimeError, TypeError):
            raise InputError(f"--device must be cpu or cuda[:N], not {device!r}") from None
        if where.type not in ("cpu", "cuda"):
            raise InputError(f"--device must be cpu or cuda[:N], not {device!r}")
        if where.type == "cuda":
            if not torch.cuda.is_available():
                raise InputError("--device cuda was asked for, but CUDA is not available here")
            if where.index is not None and where.index >= torch.cuda.device_count():
                raise InputError(
                    f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)"
                )
        return where
    if isinstance(target, torch.nn.Module):
        for p in target.parameters():
            return p.device if p.device.type != "meta" else None
    for value in torch.utils._pytree.tree_leaves((args, kwargs)):  # nested inputs too
        if isinstance(value, torch.Tensor):
            return value.device
    return None

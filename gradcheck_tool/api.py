"""The Python API: the CLI's pipeline minus loading and rendering."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Callable

import torch

from ._guest import (
    exact_float32,
    init_cuda,
    no_inference_fast_paths,
    preserved_state,
    user_frame,
)
from ._version import __version__
from .engines.check import CheckOptions, Interrupted, forward_error, run_check
from .errors import GradtoolError, InputError, OptionError
from .locations import locate_results
from .options import (
    DEFAULT_DIRECTIONS,
    DEFAULT_SAMPLES,
    CheckDtype,
    at_least,
    choice,
    positive,
    valid_seed,
)
from .precision import Downcast, downcasts
from .prepare import Problem, SecondOrderProblem, home_device, normalize_inputs, parse_device
from .results import CheckReport, Unchecked
from .stopping import STOPPED_BY, caught
from .targets import resolve_target

# Defaults per check dtype: the tutorial's float64 numbers, and float32's weaker ones
# (step ≈ cube root of float32's epsilon, tolerance to match its ~7 digits).
DEFAULTS = {torch.float64: (1e-5, 1e-6), torch.float32: (1e-2, 1e-3)}
PLACES_SHOWN = 3  # lower-precision places named in the warning


def check(
    target: Any,
    inputs: Any = None,
    *,
    loss_fn: Callable[..., Any] | None = None,
    tolerance: float | None = None,
    eps: float | None = None,
    full: bool = False,
    seed: int = 0,
    samples: int | None = None,
    budget: float | None = None,
    second_order: bool = False,
    sweep: bool = False,
    forward_mode: bool = False,
    dtype: torch.dtype | str = torch.float64,
    device: str | torch.device | None = None,
    batched: bool = True,
    skip: Sequence[str] = (),
    wrt: Sequence[str] = (),
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    found_by: str = "passed to check()",
    progress: Callable[[str, int, int], None] | None = None,
) -> CheckReport:
    """Check every gradient of `target` against central differences in float64.

    `target` is an nn.Module, a torch.autograd.Function subclass or a function of tensors;
    `inputs` a tensor, a tuple/list (positional) or a dict (keyword arguments); `kwargs`
    adds keyword arguments to positional `inputs`. `tolerance` and `eps` default to 1e-5
    and 1e-6 (1e-2 and 1e-3 with dtype=float32, or when the forward itself computes in
    float32). `skip`/`wrt` leave tensors out / check only those, by their reported names or
    shell-style patterns. The user's objects, RNG state, default dtype and grad mode are
    left as they were.

    Ctrl-C (or `stopping.Stop`: the timeout, SIGTERM) raises `Interrupted` carrying the
    partial report, whose `interrupted` says why ("interrupt", "timeout", "terminated"); it
    has no results when the stop came before any tensor was measured.
    """
    started = time.perf_counter()
    check_dtype = _dtype(dtype)
    args, keywords = normalize_inputs(inputs if inputs is not None else ())
    keywords.update(kwargs or {})
    target, args, keywords, notes = resolve_target(target, args, keywords)
    if forward_mode and not _defines_jvp(target):
        raise OptionError(
            "forward_mode",
            f"checks an autograd.Function's jvp, and {_label(target)} is not a Function that "
            "defines one",
            hint="Define `jvp` (with `setup_context`) on the Function, or drop forward mode.",
        )
    options = CheckOptions(
        tolerance=positive("tolerance", tolerance) if tolerance is not None else 0.0,
        eps=positive("eps", eps) if eps is not None else 0.0,
        full=full,
        samples=DEFAULT_SAMPLES if samples is None else at_least("samples", samples, 1),
        # Note [directions]: the default for larger models; coordinates when asked for
        directions=(
            DEFAULT_DIRECTIONS
            if samples is None and budget is None and not full and not forward_mode
            else 0
        ),
        budget=(
            None if budget is None else positive("budget", budget, "a positive number of seconds")
        ),
        seed=valid_seed(seed),
        batched=batched,
        sweep=sweep,
        progress=progress,
    )
    label = name or _label(target)
    where = parse_device(device, ("cpu", "cuda")) if device is not None else None
    where = where or home_device(target, (args, keywords))
    meta = dict(target=label, found_by=found_by, version=__version__)
    # CUDA is initialized before the RNG state is captured: its generators are then fixed
    # for every evaluation (dropout on the GPU) and the user's are restored at the end
    init_cuda(where)
    on_cuda = where is not None and where.type == "cuda"
    try:
        return _checked(
            target,
            args,
            keywords,
            loss_fn,
            options,
            meta,
            notes,
            check_dtype=check_dtype,
            where=where,
            on_cuda=on_cuda,
            seed=seed,
            skip=skip,
            wrt=wrt,
            second_order=second_order,
            forward_mode=forward_mode,
        )
    except KeyboardInterrupt as exc:  # before any tensor was measured: an empty report
        reason = caught(exc)
        tolerance, step = DEFAULTS[check_dtype]
        at = user_frame(exc.__traceback__, None)
        report = CheckReport(
            results=(),
            tolerance=options.tolerance or tolerance,
            eps=options.eps or step,
            dtype=str(check_dtype).replace("torch.", ""),
            device=str(where or "cpu"),
            warnings=(
                f"stopped by {STOPPED_BY[reason]} before any tensor was measured"
                + (f", while running {at}" if at else ""),
            ),
            interrupted=reason,
            seconds=time.perf_counter() - started,
            **meta,
        )
        raise Interrupted(report) from None


def _checked(
    target: Any,
    args: tuple,
    keywords: dict,
    loss_fn: Callable[..., Any] | None,
    options: CheckOptions,
    meta: dict[str, str],
    notes: list[str],
    *,
    check_dtype: torch.dtype,
    where: torch.device | None,
    on_cuda: bool,
    seed: int,
    skip: Sequence[str],
    wrt: Sequence[str],
    second_order: bool,
    forward_mode: bool,
) -> CheckReport:
    """check() from the validated options on: the problem, the precision, both orders."""
    label = meta["target"]
    with (
        preserved_state(),
        exact_float32(on_cuda and check_dtype == torch.float32),
        no_inference_fast_paths(),
    ):
        torch.set_default_dtype(check_dtype)
        problem = Problem(
            target,
            args,
            keywords,
            loss_fn=loss_fn,
            dtype=check_dtype,
            seed=seed,
            device=where,
            skip=skip,
            wrt=wrt,
        )
        _refuse_nothing_to_check(problem, label)
        lowered = kept = _downcasts(problem)
        if kept:  # the casts are precision choices: evaluate with the check's precision
            problem.keep_precision = True
            lowered = _downcasts(problem)
        problem.precision = _lowest_precision(lowered, check_dtype)
        options = _with_defaults(options, problem.precision)
        notes = [*notes, *_notes(problem, kept, lowered, options)]

        def finish(report: CheckReport) -> CheckReport:
            return _finished(report, problem, kept, notes)

        try:
            report = run_check(problem, options, forward_mode=forward_mode, **meta)
            if second_order and not report.interrupted:
                try:
                    second = run_check(
                        SecondOrderProblem(problem, seed),
                        dataclasses.replace(options, directions=0),
                        label_suffix=" (2nd order)",
                        **meta,
                    )
                except Interrupted as stop:
                    raise Interrupted(_merge(report, stop.report)) from None
                except KeyboardInterrupt as exc:  # before the second order measured any
                    stopped = dataclasses.replace(report, interrupted=caught(exc))
                    raise Interrupted(stopped) from None
                report = _merge(report, second)
        except Interrupted as stop:
            raise Interrupted(finish(stop.report)) from None
        return finish(report)


def _label(target: Any) -> str:
    name = getattr(target, "__name__", None)
    return name if isinstance(name, str) else type(target).__name__


def _refuse_nothing_to_check(problem: Problem, label: str) -> None:
    """Certifying nothing would turn a mistake into a pass."""
    if problem.checkables:
        return
    left_out = "; ".join(f"{u.name}: {u.reason}" for u in problem.unchecked[:4])
    raise InputError(
        f"nothing to check in {label}: no parameter requires grad and no input is a "
        "floating-point tensor" + (f" (left out: {left_out})" if left_out else ""),
        hint="Unfreeze the parameters, or pass floating inputs (token ids are never perturbed).",
    )


def _downcasts(problem: Problem) -> list[Downcast]:
    """Where the forward lowers precision; an exception in it is the user's forward's."""
    try:
        return downcasts(problem.probe, getattr(problem, "module", None))
    except (GradtoolError, KeyboardInterrupt):
        raise
    except (Exception, SystemExit) as exc:
        raise forward_error(exc) from exc


def _lowest_precision(lowered: list[Downcast], check_dtype: torch.dtype) -> torch.dtype:
    """The least precise floating dtype the forward computes in (the check's, if none)."""
    dtypes = [d.to for d in lowered] + [check_dtype]
    return max(dtypes, key=lambda d: torch.finfo(d).eps)


def _with_defaults(options: CheckOptions, precision: torch.dtype) -> CheckOptions:
    """The step and tolerance the user did not set: the defaults of the precision the
    forward really computes in (float32's when it drops to float32 or below)."""
    tol, eps = DEFAULTS[torch.float64 if precision == torch.float64 else torch.float32]
    return dataclasses.replace(options, tolerance=options.tolerance or tol, eps=options.eps or eps)


def _notes(
    problem: Problem, kept: list[Downcast], lowered: list[Downcast], options: CheckOptions
) -> list[str]:
    """What the report should say about how the target was checked."""
    out = []
    checked = str(problem.dtype).replace("torch.", "")
    if kept and not lowered:
        out.append(
            f"the forward casts to lower precision ({_places(kept)}): kept in {checked} while "
            "checking — a cast changes precision, not the gradient's math"
        )
    if problem.loose_layers:
        out.append(
            "layers kept in plain Python containers were checked too: "
            f"{', '.join(problem.loose_layers)} (an nn.ModuleList/ModuleDict would let "
            ".parameters(), .to() and optimizers see them)"
        )
    if lowered:
        precision = str(problem.precision).replace("torch.", "")
        out.append(
            f"the forward computes in {precision} below this {checked} check: "
            f"{_places(lowered)}; "
            f"judged at {precision}'s rounding (eps={options.eps:g}, "
            f"tolerance={options.tolerance:g}), a weaker verdict than a {checked} one"
        )
    if problem.dtype == torch.float32:
        out.append(
            "float32 check: finite differences in float32 resolve only ~3 digits of a "
            f"gradient (eps={options.eps:g}, tolerance={options.tolerance:g}); a pass here "
            "is much weaker evidence than a float64 pass."
        )
    return out


def _places(found: list[Downcast]) -> str:
    places = ", ".join(d.describe() for d in found[:PLACES_SHOWN])
    return places + (f" and {len(found) - PLACES_SHOWN} more" if len(found) > PLACES_SHOWN else "")


def _finished(
    report: CheckReport, problem: Problem, lowered: list[Downcast], notes: list[str]
) -> CheckReport:
    """The report with what the engine does not know: where it ran, what was left out, and
    how the target was checked, and where in the user's code each gradient is made."""
    # a stopped run names the tensors it never reached (the one that hung among them)
    judged = {r.name for r in report.results}
    not_reached = (
        tuple(
            Unchecked(c.name, c.kind, f"not reached: the run was stopped ({report.interrupted})")
            for c in problem.checkables
            if c.name not in judged
        )
        if report.interrupted
        else ()
    )
    report = dataclasses.replace(
        report,
        device=str(problem.checkables[0].value.device),
        warnings=(*notes, *report.warnings),
        unchecked=(*not_reached, *problem.unchecked),
        left_out_outputs=problem.left_out_outputs,
        lower_precision=tuple(d.describe() for d in lowered),
        default_dtype=str(problem.dtype).replace("torch.", ""),
    )
    # the graph walk costs one forward: not after an interruption (it may be what hangs)
    walk = not report.interrupted
    try:
        located = locate_results(problem, report.results, walk_graph=walk)
    except KeyboardInterrupt as exc:  # during that forward: the verdicts stand, as stopped
        located = locate_results(problem, report.results, walk_graph=False)
        stopped = dataclasses.replace(report, results=located, interrupted=caught(exc))
        raise Interrupted(stopped) from None
    return dataclasses.replace(report, results=located)


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

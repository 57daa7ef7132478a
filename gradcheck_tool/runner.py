"""Run one target as the command line, a configured project or the pytest plugin does:
load the file, build its inputs, run the check or flow engine with the options, and return a
`TargetRun` — never raising for what the user caused.

The file is loaded and its inputs built with the global RNGs seeded from `seed` (`--seed`,
default 0) and restored afterwards (`load_seeded`): a file that builds its model from the
global RNG without seeding it gets the same weights every run, in every process of
`flow --nproc`, and leaves the RNGs of a caller (the pytest plugin) as they were.

Options are keyed by the Python names of the command-line options (config.OPTIONS). A user
error becomes `exit_code=2` and its one-screen message; an internal error 3; Ctrl-C, SIGTERM
or `--timeout` an interrupted run that keeps the partial report when there is one.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Mapping
from typing import Any, Callable

from .errors import GradtoolError, OptionError
from .options import flag_for, valid_seed
from .results import TargetRun
from .stopping import EXIT_CODES, Interrupted, caught

EXIT_USER, EXIT_INTERNAL = 2, 3
Progress = Callable[[str, int, int], None]


def error_text(exc: BaseException, where: str | None = None) -> str:
    """The one-screen message of a user error, with its hint. An option is named by its flag
    (`--tolerance`), or by its key (`tolerance`) for a configured target, whose entry
    (`where`) the message then names too."""
    if isinstance(exc, OptionError):
        message = f"{exc.option if where else flag_for(exc.option)} {exc.problem}"
    elif isinstance(exc, GradtoolError):
        message = exc.message
    elif isinstance(exc, SystemExit):
        message = f"your code called sys.exit({exc.code!r})"
    else:
        return f"internal error in gradtool: {type(exc).__name__}: {exc}"
    hint = getattr(exc, "hint", None)
    lines = [message, *([f"(the target of {where})"] if where else []), *([hint] if hint else [])]
    return "\n".join(lines)


def run_target(
    command: str,
    target: str,
    options: Mapping[str, Any],
    *,
    progress: Progress | None = None,
    config: str | None = None,
    debug: bool = False,
    on_note: Callable[[str], None] | None = None,
) -> TargetRun:
    """Run `gradtool check`, `flow`, `memory` or `graph` on one target; see the module
    docstring."""
    started = time.perf_counter()

    def done(report: Any, code: int, **extra: Any) -> TargetRun:
        return TargetRun(
            command,
            target,
            report,
            code,
            seconds=time.perf_counter() - started,
            config=config,
            **extra,
        )

    try:
        # imported in here: the first target's import of torch takes seconds, and a timeout
        # or SIGTERM then must end this target, not escape the run as a bare KeyboardInterrupt
        from .loading import scope_for

        with scope_for(target):
            if command == "check":
                report = _check(target, options, progress)
            elif command == "flow":
                report = _flow(target, options, on_note)
            elif command == "memory":
                report = _memory(target, options, on_note)
            elif command == "graph":
                report = _graph(target, options, on_note)
            else:
                raise ValueError(f"unknown command {command!r}")
            # the report's own exit code (results.py); a nondeterministic forward is the
            # user's problem to fix: its message goes with the run
            nondeterministic = getattr(report, "nondeterministic", False) and not report.interrupted
            error = report.warnings[0] if report.warnings else "the forward is nondeterministic"
            return done(
                report,
                report.exit_code,
                interrupted=report.interrupted,
                error=error if nondeterministic else None,
            )
    except KeyboardInterrupt as exc:  # before a report existed (loading, the inputs)
        reason = caught(exc)
        return done(None, EXIT_CODES[reason], interrupted=reason)
    except (GradtoolError, SystemExit) as exc:
        if isinstance(exc, SystemExit) and not isinstance(exc.code, (int, str, type(None))):
            raise
        if debug:
            traceback.print_exc()
        return done(None, EXIT_USER, error=error_text(exc, config))
    except Exception as exc:
        if debug:
            traceback.print_exc()
        return done(None, EXIT_INTERNAL, error=error_text(exc))


def _check(target: str, options: Mapping[str, Any], progress: Progress | None) -> Any:
    from .api import check

    o = dict(options)
    seed = valid_seed(o.get("seed", 0))
    loaded, args, kwargs = load_seeded(target, o, seed)
    try:
        report = check(
            loaded.obj,
            args,
            kwargs=kwargs,
            loss_fn=loaded.loss_fn,
            tolerance=o.get("tolerance"),
            eps=o.get("eps"),
            full=o.get("full", False),
            seed=seed,
            samples=o.get("samples"),
            budget=o.get("budget"),
            second_order=o.get("second_order", False),
            sweep=o.get("sweep", False),
            forward_mode=o.get("forward_mode", False),
            dtype=o.get("dtype", "float64"),
            device=o.get("device"),
            batched=not o.get("serial", False),
            skip=list(o.get("skip") or ()),
            wrt=list(o.get("wrt") or ()),
            name=loaded.spec,
            found_by=loaded.found_by,
            progress=progress,
        )
    except Interrupted as stop:  # the partial report; its `interrupted` says why
        return stop.report
    return report


def _flow(target: str, options: Mapping[str, Any], on_note: Callable[[str], None] | None) -> Any:
    from .engines.flow.findings import finding_kinds, parse_fail_on
    from .formats.plot import check_plot_path, plot_flow

    o = dict(options)
    seed = o.get("seed", 0)
    fail_on = o.get("fail_on") or ()
    if not isinstance(fail_on, str):
        fail_on = ",".join(fail_on)
    fatal = parse_fail_on(fail_on)
    plot = o.get("plot")
    if plot:
        check_plot_path(plot)
    if (o.get("nproc") or 1) > 1:  # under DDP in N local processes
        from .engines.flow.distributed_flow import run_flow_nproc

        report = run_flow_nproc(target, o, o["nproc"])
    else:
        report = _flow_here(target, o, seed)
    order = finding_kinds()
    report = dataclasses.replace(report, fail_on=tuple(k for k in order if k in fatal))
    if plot and report is not None:
        written = plot_flow(report, plot)
        if on_note is not None:
            on_note(f"plot written to {written}")
    return report


def _flow_here(target: str, o: dict[str, Any], seed: int) -> Any:
    """flow in this process: the report (partial, with its reason, when it was stopped)."""
    from .engines.flow import run_flow

    return _run_loaded(
        run_flow,
        target,
        o,
        valid_seed(seed),
        steps=o.get("steps", 1),
        lr=o.get("lr"),
        optimizer=o.get("optimizer", "sgd"),
        pass_folder=True,
    )


def _run_loaded(
    engine: Callable[..., Any],
    target: str,
    o: Mapping[str, Any],
    seed: int,
    pass_folder: bool = False,
    **options: Any,
) -> Any:
    """Load the target (`load_seeded`) and run a training-step engine (flow, memory, graph)
    on it with the options every one takes — the file's loss_fn, --device, --seed, the
    target's name and how it was found, and with `pass_folder` the file's folder (where the
    user's loss_fn is located in messages) — and `options`; a stopped run gives the partial
    report its engine kept."""
    loaded, args, kwargs = load_seeded(target, o, seed)
    if pass_folder:
        options["folder"] = loaded.path.resolve().parent
    try:
        return engine(
            loaded.obj,
            args,
            kwargs,
            loss_fn=loaded.loss_fn,
            device=o.get("device"),
            seed=seed,
            target=loaded.spec,
            found_by=loaded.found_by,
            **options,
        )
    except Interrupted as stop:
        return stop.report


def _memory(target: str, options: Mapping[str, Any], on_note: Callable[[str], None] | None) -> Any:
    """`gradtool memory`: the report (partial when stopped), and its --plot."""
    from .engines.memory import run_memory

    o = dict(options)
    seed = valid_seed(o.get("seed", 0))
    plot = o.get("plot")
    if plot:
        from .formats.plot import check_plot_path

        check_plot_path(plot)
    report = _run_loaded(
        run_memory,
        target,
        o,
        seed,
        pass_folder=True,
        apply_checkpoint=o.get("apply_checkpoint", False),
        checkpoint=list(o.get("checkpoint") or ()),
        top=o.get("top", 3),
    )
    if plot and report is not None:
        from .formats.plot import plot_memory

        written = plot_memory(report, plot)
        if on_note is not None:
            on_note(f"plot written to {written}")
    return report


def _graph(target: str, options: Mapping[str, Any], on_note: Callable[[str], None] | None) -> Any:
    """`gradtool graph`: the report, and the files it was asked for (--dot, --svg, --png,
    --html), each named in a note."""
    from .engines.graph import run_graph
    from .formats.graph_files import check_outputs, write_outputs

    o = dict(options)
    seed = valid_seed(o.get("seed", 0))
    outputs = {k: o[k] for k in ("dot", "svg", "png", "html") if o.get(k)}
    check_outputs(outputs)  # a bad path or a missing Graphviz before the model runs
    report = _run_loaded(
        run_graph, target, o, seed, depth=o.get("depth"), flow=o.get("flow", False)
    )
    if report is not None and not report.interrupted:
        for written in write_outputs(report, outputs):
            if on_note is not None:
                on_note(f"graph written to {written}")
    return report


def load_seeded(target: str, o: Mapping[str, Any], seed: int) -> tuple[Any, tuple, dict]:
    """Load the target and build its inputs with the global RNGs seeded from `seed` (the
    `--seed` option), restored afterwards: a file that builds its model from the global RNG
    without seeding it (at import, in build_model()) gets the same weights in every run and
    in every process of `flow --nproc`. (Used by distributed_flow too.)"""
    from ._guest import seeded_rng
    from .loading import load_target
    from .prepare import resolve_inputs

    with seeded_rng(seed):
        loaded = load_target(target, weights=o.get("weights"))
        args, kwargs = resolve_inputs(
            loaded, o.get("input_shape"), o.get("input_dtype", "float32"), seed
        )
    return loaded, args, kwargs


NOT_RUN = "not run: the run was stopped before it"


def not_run(command: str, entry: Any, reason: str) -> TargetRun:
    """A target the run never reached, because it was stopped (`reason`) before it."""
    return TargetRun(
        command, entry.target, None, EXIT_CODES[reason], error=NOT_RUN, interrupted=reason,
        config=entry.where,
    )  # fmt: skip


def run_configured(
    command: str,
    targets: Any,
    overrides: Mapping[str, Any],
    *,
    stop_reason: Callable[[], str | None] | None = None,
    progress: Progress | None = None,
    debug: bool = False,
    on_start: Callable[[Any], None] | None = None,
    on_done: Callable[[TargetRun], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> list[TargetRun]:
    """Run configured targets one after another, `overrides` (the command line) winning over
    each target's options. Once a run is interrupted (or `stop_reason()` names a reason),
    the targets not yet run are recorded as interrupted without running."""
    runs: list[TargetRun] = []
    stopped: str | None = None
    for entry in targets:
        stopped = stopped or (stop_reason() if stop_reason else None)
        if stopped is not None:
            run = not_run(command, entry, stopped)
            runs.append(run)
            if on_done is not None:
                on_done(run)
            continue
        if on_start is not None:
            on_start(entry)
        run = run_target(
            command,
            entry.target,
            {**entry.options, **overrides},
            progress=progress,
            config=entry.where,
            debug=debug,
            on_note=on_note,
        )
        runs.append(run)
        if on_done is not None:
            on_done(run)
        if run.interrupted is not None:
            stopped = run.interrupted
    return runs

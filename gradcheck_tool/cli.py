"""The `gradtool` command line: parse, load → prepare → engine → format, map exit codes.

Exit codes: 0 every gradient passed, 1 a gradient (or --fail-on finding) failed, 2 the user's
file, inputs or checkpoint could not be used (a nondeterministic forward included), 3 an
internal gradtool error, 130 Ctrl-C.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from typing import Any, Callable, List, Optional

import typer

from ._version import __version__
from .errors import GradtoolError, OptionError
from .options import DEFAULT_DIRECTIONS, DEFAULT_SAMPLES, Optimizer, flag_for
from .stopping import EXIT_CODES

EXIT_OK, EXIT_FAIL, EXIT_USER, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

app = typer.Typer(
    name="gradtool",
    help="Is my gradient right, and why isn't my model learning?",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """gradtool: check gradients against finite differences, and diagnose gradient flow."""


TARGET_HELP = "path/to/file.py or path/to/file.py:NAME (a model, autograd.Function or function)"
TargetArg = typer.Argument(..., help=TARGET_HELP, metavar="TARGET")
InputShapeOpt = typer.Option(
    None,
    "--input-shape",
    help="Shape of one positional input, e.g. "
    "8,16 (repeat for more inputs); used when the file has no "
    "example_inputs().",
)
InputDtypeOpt = typer.Option("float32", "--input-dtype", help="dtype of --input-shape tensors.")
WeightsOpt = typer.Option(
    None,
    "--weights",
    help="A state_dict checkpoint to load "
    "(torch.load with weights_only=True; nothing is unpickled).",
)
JsonOpt = typer.Option(None, "--json", help="Write a JSON report to PATH ('-' for stdout).")
DeviceOpt = typer.Option(
    None, "--device", help="cpu or cuda (default: where the model already lives)."
)
DebugOpt = typer.Option(False, "--debug", help="Show Python tracebacks for errors.")
SeedOpt = typer.Option(
    0, "--seed", min=0, max=2**63 - 1, help="Seed for sampling, projections and random layers."
)


def _error_console() -> Any:
    from .formats.console import make_console

    return make_console(stderr=True)


def _from_a_closed_pipe(exc: SystemExit) -> bool:
    """Rich ends the process with SystemExit(1) when the reader of stdout went away."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "on_broken_pipe":
            return True
        tb = tb.tb_next
    return False


@contextlib.contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """GradtoolError -> one-screen message and exit 2; anything else -> exit 3."""
    try:
        yield
    except typer.Exit:
        raise
    except GradtoolError as exc:
        if debug:
            traceback.print_exc()
        console = _error_console()
        message = exc.message
        if isinstance(exc, OptionError):  # named as the API names it: name the flag instead
            message = f"{flag_for(exc.option)} {exc.problem}"
        console.print(f"[bold red]error:[/bold red] {_escape(message)}")
        if exc.hint:
            console.print(_escape(exc.hint))
        raise typer.Exit(EXIT_USER) from None
    except SystemExit as exc:  # the user's code called sys.exit() somewhere unguarded
        if _from_a_closed_pipe(exc):  # e.g. `gradtool check m.py | head`: rich's own exit
            raise
        if debug:
            traceback.print_exc()
        _error_console().print(
            f"[bold red]error:[/bold red] your code called sys.exit({_escape(repr(exc.code))})"
        )
        raise typer.Exit(EXIT_USER) from None
    except Exception as exc:
        if debug:
            traceback.print_exc()
        console = _error_console()
        console.print(
            f"[bold red]internal error in gradtool:[/bold red] "
            f"{_escape(f'{type(exc).__name__}: {exc}')}"
        )
        console.print("Run again with --debug for the traceback, and please report it.")
        raise typer.Exit(EXIT_INTERNAL) from None


@contextlib.contextmanager
def user_run(target: str, json_path: str | None, debug: bool) -> Iterator[Any]:
    """The frame of a command that runs the user's code: errors become exit codes, the
    user's folder stays importable until the end, and with `--json -` anything the user's
    code prints goes to stderr so stdout holds only the JSON. Yields the real stdout."""
    from .formats.json import check_path
    from .loading import scope_for

    stdout = sys.stdout
    with user_errors(debug):
        if json_path and json_path != "-":
            check_path(json_path)
        quiet = contextlib.redirect_stdout(sys.stderr) if json_path == "-" else None
        with scope_for(target), quiet or contextlib.nullcontext():
            yield stdout


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar on stderr, shown only on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=_error_console(),
        transient=True,
    ) as progress:
        task = progress.add_task("checking", total=None)

        def update(name: str, done: int, total: int) -> None:
            progress.update(
                task,
                completed=done,
                total=total,
                description=f"checking {name}" if name else "done",
            )

        yield update


def _names(values: list[str] | None) -> list[str]:
    """`--skip a,b --skip c` -> ["a", "b", "c"]."""
    return [name.strip() for value in values or () for name in value.split(",") if name.strip()]


def write_reports(report: Any, json_path: str | None, stdout: Any) -> None:
    """The table on stdout, unless the JSON goes there (`--json -`); the JSON to its file."""
    from . import formats
    from .formats.json import write_file

    if json_path == "-":
        formats.write(report, formats.OutputFormat.JSON, stdout)
        return
    formats.write(report, formats.OutputFormat.TABLE, sys.stdout)
    if json_path:
        write_file(report, json_path)


@app.command()
def check(
    target: str = TargetArg,
    input_shape: Optional[List[str]] = InputShapeOpt,
    input_dtype: str = InputDtypeOpt,
    weights: Optional[str] = WeightsOpt,
    json_path: Optional[str] = JsonOpt,
    tolerance: Optional[float] = typer.Option(
        None,
        "--tolerance",
        help="A tensor passes when its relative error is at most this "
        "(default 1e-5; 1e-2 with --dtype float32).",
    ),
    eps: Optional[float] = typer.Option(
        None, "--eps", help="Finite-difference step h (default 1e-6; 1e-3 with --dtype float32)."
    ),
    full: bool = typer.Option(False, "--full", help="Check every coordinate of every tensor."),
    samples: Optional[int] = typer.Option(
        None,
        "--samples",
        help="Coordinates sampled per large tensor, each checked (default: every tensor of "
        f"a larger model along {DEFAULT_DIRECTIONS} random directions, and {DEFAULT_SAMPLES} "
        "coordinates of one they don't pass).",
    ),
    budget: Optional[float] = typer.Option(
        None,
        "--budget",
        help="Seconds to spend: after every tensor has its sample, keep adding coordinates "
        "to the sampled tensors until this much time has passed.",
    ),
    second_order: bool = typer.Option(
        False, "--second-order", help="Also check the double backward (as gradgradcheck)."
    ),
    sweep: bool = typer.Option(
        False, "--sweep", help="Sweep the step size for every tensor (failing ones always are)."
    ),
    forward_mode: bool = typer.Option(
        False, "--forward-mode", help="Check forward-mode derivatives (a Function's jvp)."
    ),
    dtype: str = typer.Option(
        "float64", "--dtype", help="float64, or float32 for code that can't run in float64."
    ),
    device: Optional[str] = DeviceOpt,
    serial: bool = typer.Option(
        False, "--serial", help="Evaluate one perturbation at a time (no vmap batching)."
    ),
    skip: Optional[List[str]] = typer.Option(
        None,
        "--skip",
        help="Leave tensors out, by their names in the report or a pattern such as "
        "'encoder.*' (repeatable, or comma-separated).",
    ),
    wrt: Optional[List[str]] = typer.Option(
        None,
        "--wrt",
        help="Check only these tensors (names or patterns, as --skip).",
    ),
    seed: int = SeedOpt,
    debug: bool = DebugOpt,
) -> None:
    """Check every gradient of TARGET against float64 central differences."""
    from .api import check as run
    from .engines.check import Interrupted
    from .loading import load_target
    from .prepare import resolve_inputs

    json_to_stdout = json_path == "-"
    with user_run(target, json_path, debug) as stdout:
        loaded = load_target(target, weights=weights)
        args, kwargs = resolve_inputs(loaded, input_shape, input_dtype, seed)
        interrupted = False
        with progress_bar(not json_to_stdout) as progress:
            try:
                report = run(
                    loaded.obj,
                    args,
                    kwargs=kwargs,
                    loss_fn=loaded.loss_fn,
                    tolerance=tolerance,
                    eps=eps,
                    full=full,
                    seed=seed,
                    samples=samples,
                    budget=budget,
                    second_order=second_order,
                    sweep=sweep,
                    forward_mode=forward_mode,
                    dtype=dtype,
                    device=device,
                    batched=not serial,
                    skip=_names(skip),
                    wrt=_names(wrt),
                    name=loaded.spec,
                    found_by=loaded.found_by,
                    progress=progress,
                )
            except Interrupted as stop:
                report, interrupted = stop.report, True
        write_reports(report, json_path, stdout)
        if interrupted:
            raise typer.Exit(EXIT_CODES[report.interrupted or "interrupt"])
        if report.nondeterministic:  # not a gradient verdict: the model can't be checked
            raise typer.Exit(EXIT_USER)
        raise typer.Exit(EXIT_OK if report.passed else EXIT_FAIL)


@app.command()
def flow(
    target: str = TargetArg,
    input_shape: Optional[List[str]] = InputShapeOpt,
    input_dtype: str = InputDtypeOpt,
    weights: Optional[str] = WeightsOpt,
    json_path: Optional[str] = JsonOpt,
    steps: int = typer.Option(
        1, "--steps", min=1, help="Train a copy this many steps on the batch and show the trend."
    ),
    lr: Optional[float] = typer.Option(
        None, "--lr", help="Learning rate for --steps (default 1e-2 with sgd, 1e-3 with adam)."
    ),
    optimizer: Optimizer = typer.Option(
        Optimizer.SGD, "--optimizer", case_sensitive=False, help="The optimizer for --steps."
    ),
    plot: Optional[str] = typer.Option(
        None, "--plot", help="Write the gradient-flow figure to PATH (.png or .svg)."
    ),
    fail_on: Optional[str] = typer.Option(
        None,
        "--fail-on",
        help="Exit 1 when a finding of these kinds occurs, e.g. nan,exploding,dead_relu "
        "('all' for every kind).",
    ),
    device: Optional[str] = DeviceOpt,
    seed: int = SeedOpt,
    debug: bool = DebugOpt,
) -> None:
    """Per-layer gradient flow of TARGET: vanishing/exploding gradients, dead ReLUs,
    saturation, the first NaN, parameters without gradient."""
    from .engines.flow import Interrupted, run_flow
    from .engines.flow.findings import parse_fail_on
    from .formats.console import make_console
    from .formats.plot import check_plot_path, plot_flow
    from .loading import load_target
    from .prepare import resolve_inputs

    json_to_stdout = json_path == "-"
    console = make_console(stderr=json_to_stdout)
    with user_run(target, json_path, debug) as stdout:
        fail_kinds = parse_fail_on(fail_on)
        if plot:
            check_plot_path(plot)
        loaded = load_target(target, weights=weights)
        args, kwargs = resolve_inputs(loaded, input_shape, input_dtype, seed)
        stopped = None
        try:
            report = run_flow(
                loaded.obj,
                args,
                kwargs,
                loss_fn=loaded.loss_fn,
                steps=steps,
                lr=lr,
                optimizer=optimizer,
                seed=seed,
                device=device,
                target=loaded.spec,
                found_by=loaded.found_by,
                folder=loaded.path.resolve().parent,
            )
        except Interrupted as stop:
            report, stopped = stop.report, stop.reason
        write_reports(report, json_path, stdout)
        if stopped is not None:
            raise typer.Exit(EXIT_CODES[stopped])
        if plot:
            written = plot_flow(report, plot)
            console.print(f"plot written to {written}")
        failed = sorted(set(report.kinds_seen) & fail_kinds)
        if failed and not json_to_stdout:
            console.print(f"[bold red]failing:[/bold red] --fail-on {','.join(failed)}")
        raise typer.Exit(EXIT_FAIL if failed else EXIT_OK)


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="gradtool")
    except KeyboardInterrupt as exc:
        from .stopping import STOPPED_BY, reason_of

        reason = reason_of(exc) or "interrupt"
        sys.stderr.write(f"gradtool: stopped by {STOPPED_BY[reason]}\n")
        sys.exit(EXIT_CODES[reason])

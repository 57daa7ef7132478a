"""The `gradtool` command line: parse, read the project's config, run each target
(runner.py: load → prepare → engine), write the formats, map exit codes.

Exit codes: 0 every gradient passed, 1 a gradient (or --fail-on finding) failed, 2 the user's
file, inputs, checkpoint, options or config could not be used (a nondeterministic forward
included), 3 an internal gradtool error, 124 --timeout ran out, 130 Ctrl-C, 143 SIGTERM.
With several targets, the worst of their codes (results.worst_exit_code).
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
from .options import (
    DEFAULT_DIRECTIONS,
    DEFAULT_SAMPLES,
    Optimizer,
    ReportFormat,
    StdoutFormat,
    flag_for,
)

EXIT_USER, EXIT_INTERNAL = 2, 3  # 0/1: the report's exit_code; 124/130/143: stopping.EXIT_CODES

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


TARGET_HELP = (
    "path/to/file.py or path/to/file.py:NAME (a model, autograd.Function or function); "
    "without it, every target configured in pyproject.toml's \\[tool.gradtool]"
)
TargetArg = typer.Argument(None, help=TARGET_HELP, metavar="TARGET", show_default=False)
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
FormatOpt = typer.Option(
    StdoutFormat.TABLE,
    "--format",
    case_sensitive=False,
    help="What standard output shows: table, json, github (workflow commands: annotations "
    "at the failing line) or markdown.",
)
JunitOpt = typer.Option(None, "--junit", help="Write a JUnit XML report to PATH.")
ConfigOpt = typer.Option(
    None,
    "--config",
    help="The pyproject.toml to read \\[tool.gradtool] from (default: the nearest one).",
)
TimeoutOpt = typer.Option(
    None,
    "--timeout",
    help="Stop after SECONDS for the whole run (a stuck forward included): the partial "
    "report, exit 124.",
)
DeviceOpt = typer.Option(
    None, "--device", help="cpu or cuda (default: where the model already lives)."
)
DebugOpt = typer.Option(False, "--debug", help="Show Python tracebacks for errors.")
SeedOpt = typer.Option(
    0,
    "--seed",
    min=0,
    max=2**63 - 1,
    help="Seed for sampling, projections, random layers, and a model or inputs your file "
    "builds without seeding.",
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


# --- one run: the targets, the config, the formats -----------------------------------------

# the options of each command, by their Python names (config.OPTIONS); the command line's
# values override the config's only when given there (click's parameter source)
CHECK_KEYS = (
    "input_shape", "input_dtype", "weights", "tolerance", "eps", "full", "samples", "budget",
    "second_order", "sweep", "forward_mode", "dtype", "device", "serial", "skip", "wrt", "seed",
)  # fmt: skip
FLOW_KEYS = (
    "input_shape", "input_dtype", "weights", "steps", "lr", "optimizer", "plot", "fail_on",
    "device", "seed", "nproc",
)  # fmt: skip
MEMORY_KEYS = (
    "input_shape", "input_dtype", "weights", "device", "seed", "apply_checkpoint", "checkpoint",
    "top", "plot",
)  # fmt: skip
GRAPH_KEYS = (
    "input_shape", "input_dtype", "weights", "device", "seed", "depth", "flow", "dot", "svg",
    "png", "html",
)  # fmt: skip
# the commands whose reports are verdicts for CI (github, markdown, JUnit, configured targets)
CI_COMMANDS = ("check", "flow")


def _names(values: list[str] | None) -> list[str]:
    """`--skip a,b --skip c` -> ["a", "b", "c"]."""
    return [name.strip() for value in values or () for name in value.split(",") if name.strip()]


def _given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options the command line gave (not typer's defaults), by their Python names."""
    out = {}
    for key, value in values.items():
        source = ctx.get_parameter_source(key)  # click's ParameterSource (or typer's copy)
        if getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT"):
            out[key] = getattr(value, "value", value)
    return out


def _print_error(run: Any) -> None:
    console = _error_console()
    first, _, rest = (run.error or "").partition("\n")
    if run.exit_code == EXIT_INTERNAL:
        console.print(f"[bold red]{_escape(first)}[/bold red]")
        console.print("Run again with --debug for the traceback, and please report it.")
        return
    console.print(f"[bold red]error:[/bold red] {_escape(first)}")
    if rest:
        console.print(_escape(rest))


def _interrupted_message(reason: str, timeout: float | None) -> str:
    if reason == "timeout":
        return f"stopped: --timeout {timeout:g} s ran out" if timeout else "stopped: timeout"
    if reason == "terminated":
        return "stopped: terminated (SIGTERM)"
    return "stopped: interrupted (Ctrl-C)"


def run_command(
    ctx: typer.Context,
    command: str,
    target: str | None,
    options: dict[str, Any],
    run_options: dict[str, Any],
    config_path: str | None,
    debug: bool,
) -> None:
    """Run TARGET, or every configured target of `command`; write the formats; exit.

    `options` and `run_options` are keyed by click's parameter names (the function's
    arguments); only those the command line gave override the config."""
    from . import formats
    from .config import load_config
    from .formats.json import check_path
    from .results import worst_exit_code
    from .runner import NOT_RUN, not_run, run_configured
    from .stopping import bounded, reason_of, shielded

    with user_errors(debug):
        project = load_config(config_path)
        given = _given(ctx, options)
        for key in ("skip", "wrt"):
            if key in given:
                given[key] = _names(given[key])
        from_line = {RUN_PARAMS[k]: v for k, v in _given(ctx, run_options).items()}
        settings = {**project.run, **from_line}
        if command not in CI_COMMANDS:  # a report, not a verdict: table or JSON only
            settings = {k: v for k, v in settings.items() if k != "junit"}
            if settings.get("format") not in (None, *(f.value for f in ReportFormat)):
                settings.pop("format")  # the config's github/markdown is for check and flow
        fmt = formats.OutputFormat(settings.get("format", "table"))
        json_path, junit_path = settings.get("json"), settings.get("junit")
        timeout = settings.get("timeout")
        if timeout is not None:
            timeout = _timeout(timeout)
        if junit_path == "-":
            raise OptionError("junit", "needs a file path ('-' is for --json)")
        for path, option in ((json_path, "json"), (junit_path, "junit")):
            if path and path != "-":
                _make_folder(path, option)  # as pytest's --junitxml does
                check_path(path, option)
        if target is not None:
            entries: list[Any] = [_Entry(target, project.options_for(command, target))]
        else:
            entries = list(project.of(command))
            if not entries:
                raise _nothing_configured(command, project)
    configured = target is None
    json_out = json_path == "-" or fmt is formats.OutputFormat.JSON
    table = fmt is formats.OutputFormat.TABLE and json_path != "-"
    stdout = sys.stdout
    notes = _error_console()
    runs: list[Any] = []

    def on_done(run: Any) -> None:
        runs.append(run)
        # a configured run's table shows each target's error in its place; otherwise the
        # message goes to stderr, where a person reads it beside the machine's output
        if run.error and run.report is None and run.interrupted is None:
            if not (table and configured):
                _print_error(run)
        if run.interrupted is not None and run.error != NOT_RUN:  # said once, not per target
            notes.print(
                f"[bold yellow]{_interrupted_message(run.interrupted, timeout)}[/bold yellow]"
            )

    # with JSON on stdout, whatever the user's code prints goes to stderr
    quiet = contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext()
    try:
        with user_errors(debug), bounded(timeout) as stop:
            with quiet, progress_bar(table) as progress:
                run_configured(
                    command,
                    entries,
                    given,
                    stop_reason=lambda: stop.reason,
                    progress=progress,
                    debug=debug,
                    on_done=on_done,
                    on_note=lambda text: notes.print(_escape(text)),
                )
    except KeyboardInterrupt as exc:  # a stop in gradtool's own code, between targets
        reason = reason_of(exc) or "interrupt"
        notes.print(f"[bold yellow]{_interrupted_message(reason, timeout)}[/bold yellow]")
        runs += [not_run(command, e, reason) for e in entries[len(runs) :]]
    # a stop while the reports are written only marks the run: they are written whole, and
    # the exit code is theirs
    with shielded(), user_errors(debug):
        # a TARGET that could not run has its message on stderr and no table or JSON on
        # stdout (nothing else is there); annotations, files and summaries say it too
        reported = [r for r in runs if r.report is not None or r.interrupted is not None]
        for_stdout = runs if configured or not (table or json_out) else reported
        if for_stdout:
            out_fmt = formats.OutputFormat.JSON if json_path == "-" else fmt
            formats.write_runs(for_stdout, out_fmt, stdout, configured=configured)
        if table and command == "flow":
            _say_failing(runs, "fail_on" in given, project)
        if json_path and json_path != "-":
            formats.write_runs_file(
                runs, formats.OutputFormat.JSON, json_path, "json", configured=configured
            )
        if junit_path:  # a target that could not run is an <error> test case there
            formats.write_runs_file(runs, formats.OutputFormat.JUNIT, junit_path, "junit")
        if command in CI_COMMANDS:
            _append_step_summary(runs)
    raise typer.Exit(worst_exit_code(runs))


MAX_TIMEOUT = 1e7  # seconds (~4 months): beyond what a timer takes


def _timeout(value: Any) -> float:
    from .options import positive

    seconds = positive("timeout", value, "a positive number of seconds")
    if seconds > MAX_TIMEOUT:
        raise OptionError("timeout", f"must be at most {MAX_TIMEOUT:g} seconds, not {value}")
    return seconds


def _say_failing(runs: list[Any], from_line: bool, project: Any) -> None:
    failed = [k for r in runs if r.report is not None for k in r.report.failed_kinds]
    if failed:
        where = "--fail-on" if from_line else f"fail_on in {project.label}"
        _console_out().print(
            f"[bold red]failing ({_escape(where)}):[/bold red] {','.join(dict.fromkeys(failed))}"
        )


def _append_step_summary(runs: list[Any]) -> None:
    """The markdown summary, appended to $GITHUB_STEP_SUMMARY when GitHub Actions sets it;
    a file that can't be written is a warning, not a verdict."""
    import os

    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    from .formats.markdown import append_step_summary

    try:
        append_step_summary(runs, path)
    except OSError as exc:
        _error_console().print(
            f"[yellow]warning:[/yellow] could not append the summary to GITHUB_STEP_SUMMARY "
            f"({_escape(path)}): {_escape(exc.strerror or str(exc))}"
        )


def _console_out() -> Any:
    from .formats.console import make_console

    return make_console()


# click's parameter names of the run options -> their names in [tool.gradtool]
RUN_PARAMS = {"fmt": "format", "json_path": "json", "junit": "junit", "timeout": "timeout"}


class _Entry:
    """A TARGET from the command line, shaped like a configured one."""

    def __init__(self, target: str, options: dict[str, Any]) -> None:
        self.target, self.options, self.where = target, options, None


def _nothing_configured(command: str, project: Any) -> GradtoolError:
    if project.path is None:
        return GradtoolError(
            "no TARGET given, and no pyproject.toml with [tool.gradtool] here or above",
            hint=f"Run gradtool {command} path/to/file.py, or configure targets:\n"
            f'[[tool.gradtool.{command}]]\ntarget = "path/to/file.py"',
        )
    return GradtoolError(
        f"no TARGET given, and {project.label} configures no [[tool.gradtool.{command}]]",
        hint=f'Add one:\n[[tool.gradtool.{command}]]\ntarget = "path/to/file.py"',
    )


def _make_folder(path: str, option: str) -> None:
    import os

    folder = os.path.dirname(path)
    if folder and not os.path.exists(folder):
        try:
            os.makedirs(folder)
        except OSError as exc:
            raise OptionError(option, f"{path}: could not make {folder}: {exc.strerror}") from None


@app.command()
def check(
    ctx: typer.Context,
    target: Optional[str] = TargetArg,
    input_shape: Optional[List[str]] = InputShapeOpt,
    input_dtype: str = InputDtypeOpt,
    weights: Optional[str] = WeightsOpt,
    tolerance: Optional[float] = typer.Option(
        None,
        "--tolerance",
        help="A tensor passes when its relative error is at most this "
        "(default 1e-5; 1e-2 with --dtype float32).",
    ),
    eps: Optional[float] = typer.Option(
        None, "--eps", help="Finite-difference step h (default 1e-6; 1e-3 with --dtype float32)."
    ),
    full: bool = typer.Option(
        False, "--full/--no-full", help="Check every coordinate of every tensor."
    ),
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
        False,
        "--second-order/--no-second-order",
        help="Also check the double backward (as gradgradcheck).",
    ),
    sweep: bool = typer.Option(
        False,
        "--sweep/--no-sweep",
        help="Sweep the step size for every tensor (failing ones always are).",
    ),
    forward_mode: bool = typer.Option(
        False,
        "--forward-mode/--no-forward-mode",
        help="Check forward-mode derivatives (a Function's jvp).",
    ),
    dtype: str = typer.Option(
        "float64", "--dtype", help="float64, or float32 for code that can't run in float64."
    ),
    device: Optional[str] = DeviceOpt,
    serial: bool = typer.Option(
        False,
        "--serial/--no-serial",
        help="Evaluate one perturbation at a time (no vmap batching).",
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
    fmt: StdoutFormat = FormatOpt,
    json_path: Optional[str] = JsonOpt,
    junit: Optional[str] = JunitOpt,
    timeout: Optional[float] = TimeoutOpt,
    config: Optional[str] = ConfigOpt,
    debug: bool = DebugOpt,
) -> None:
    """Check every gradient of TARGET against float64 central differences."""
    values = dict(locals())
    options = {k: values[k] for k in CHECK_KEYS}
    run_options = {k: values[k] for k in RUN_PARAMS}
    run_command(ctx, "check", target, options, run_options, config, debug)


@app.command()
def flow(
    ctx: typer.Context,
    target: Optional[str] = TargetArg,
    input_shape: Optional[List[str]] = InputShapeOpt,
    input_dtype: str = InputDtypeOpt,
    weights: Optional[str] = WeightsOpt,
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
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="Run under DistributedDataParallel in N local processes (torch.distributed.run; "
        "gloo on the CPU, NCCL with --device cuda), the example batch split across them.",
    ),
    fail_on: Optional[str] = typer.Option(
        None,
        "--fail-on",
        help="Exit 1 when a finding of these kinds occurs, e.g. nan,exploding,dead_relu "
        "('all' for every kind).",
    ),
    device: Optional[str] = DeviceOpt,
    seed: int = SeedOpt,
    fmt: StdoutFormat = FormatOpt,
    json_path: Optional[str] = JsonOpt,
    junit: Optional[str] = JunitOpt,
    timeout: Optional[float] = TimeoutOpt,
    config: Optional[str] = ConfigOpt,
    debug: bool = DebugOpt,
) -> None:
    """Per-layer gradient flow of TARGET: vanishing/exploding gradients, dead ReLUs,
    saturation, the first NaN, parameters without gradient."""
    values = dict(locals())
    options = {k: values[k] for k in FLOW_KEYS}
    run_options = {k: values[k] for k in RUN_PARAMS}
    run_command(ctx, "flow", target, options, run_options, config, debug)


MemoryTargetArg = typer.Argument(
    ..., help="path/to/file.py or path/to/file.py:NAME (a model)", metavar="TARGET"
)
ReportFormatOpt = typer.Option(
    ReportFormat.TABLE, "--format", case_sensitive=False, help="table, or json on stdout."
)


@app.command()
def memory(
    ctx: typer.Context,
    target: str = MemoryTargetArg,
    input_shape: Optional[List[str]] = InputShapeOpt,
    input_dtype: str = InputDtypeOpt,
    weights: Optional[str] = WeightsOpt,
    apply_checkpoint: bool = typer.Option(
        False,
        "--apply-checkpoint",
        help="Wrap the suggested blocks (or --checkpoint's) in torch.utils.checkpoint on a "
        "copy, measure again, and check the copy's gradients with gradtool check.",
    ),
    checkpoint: Optional[List[str]] = typer.Option(
        None,
        "--checkpoint",
        help="Blocks to checkpoint with --apply-checkpoint instead of the suggested ones "
        "(module names, or a stack's range such as encoder.layers.0-5; repeatable or "
        "comma-separated).",
    ),
    top: int = typer.Option(
        3,
        "--top",
        min=1,
        help="How many checkpointing candidates to suggest (and apply); a stack of layers is one.",
    ),
    plot: Optional[str] = typer.Option(
        None,
        "--plot",
        help="Write a figure of the memory per module (before and after checkpointing) to "
        "PATH (.png or .svg).",
    ),
    device: Optional[str] = DeviceOpt,
    seed: int = SeedOpt,
    fmt: ReportFormat = ReportFormatOpt,
    json_path: Optional[str] = JsonOpt,
    timeout: Optional[float] = TimeoutOpt,
    config: Optional[str] = ConfigOpt,
    debug: bool = DebugOpt,
) -> None:
    """Memory the backward keeps per module, and which blocks to checkpoint."""
    values = dict(locals())
    options = {k: values[k] for k in MEMORY_KEYS}
    options["checkpoint"] = _names(options["checkpoint"])
    run_options = {k: values[k] for k in RUN_PARAMS if k in values}
    run_command(ctx, "memory", target, options, run_options, config, debug)


@app.command()
def graph(
    ctx: typer.Context,
    target: str = MemoryTargetArg,
    input_shape: Optional[List[str]] = InputShapeOpt,
    input_dtype: str = InputDtypeOpt,
    weights: Optional[str] = WeightsOpt,
    depth: Optional[int] = typer.Option(
        None,
        "--depth",
        min=0,
        help="Module levels to expand (0: the model as one box; default: the deepest level "
        "that stays readable).",
    ),
    flow: bool = typer.Option(
        False,
        "--flow",
        help="Colour modules by gradient norm and dead fraction from a gradtool flow run.",
    ),
    dot: Optional[str] = typer.Option(None, "--dot", help="Write the graph as DOT to PATH."),
    svg: Optional[str] = typer.Option(
        None, "--svg", help="Write an SVG image to PATH (needs Graphviz's dot)."
    ),
    png: Optional[str] = typer.Option(
        None, "--png", help="Write a PNG image to PATH (needs Graphviz's dot)."
    ),
    html: Optional[str] = typer.Option(
        None,
        "--html",
        help="Write a self-contained HTML page to PATH: pan, zoom, click a module to expand.",
    ),
    device: Optional[str] = DeviceOpt,
    seed: int = SeedOpt,
    fmt: ReportFormat = ReportFormatOpt,
    json_path: Optional[str] = JsonOpt,
    timeout: Optional[float] = TimeoutOpt,
    config: Optional[str] = ConfigOpt,
    debug: bool = DebugOpt,
) -> None:
    """The autograd graph by module: where gradient flow is cut, what it never reaches."""
    values = dict(locals())
    options = {k: values[k] for k in GRAPH_KEYS}
    run_options = {k: values[k] for k in RUN_PARAMS if k in values}
    run_command(ctx, "graph", target, options, run_options, config, debug)


def main() -> None:
    """Console-script entry point. SIGTERM and Ctrl-C become `stopping.Stop` from the first
    moment (loading torch, reading the config); a command's own bounded run takes over."""
    from .stopping import EXIT_CODES, bounded, reason_of

    try:
        with bounded(None):
            app(prog_name="gradtool")
    except KeyboardInterrupt as exc:
        reason = reason_of(exc) or "interrupt"
        sys.stderr.write(_interrupted_message(reason, None) + "\n")
        sys.exit(EXIT_CODES[reason])

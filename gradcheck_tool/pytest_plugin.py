"""The pytest plugin (entry point `pytest11`): `pytest --gradtool` runs every target
configured in `[tool.gradtool]` as a test item. Loaded by every pytest run where gradtool is
installed, so importing it must stay cheap (no torch) and change nothing without --gradtool.

The items hang off one collector that the session's own collection report gains
(`pytest_make_collect_report`), so they go through pytest's collection like test files do:
`-k`, `-m gradtool`, `--deselect`, `--lf` and `--collect-only` see them, and a broken
`[tool.gradtool]` is a collection error. Node ids read as the configuration does:

    gradtool::check::ops/attention.py:FusedAttention
    gradtool::flow::models/net.py

(paths relative to the pyproject.toml's folder). An item runs its target as `gradtool check`
/ `gradtool flow` would (`runner.run_target`) and fails on any exit code but 0, showing the
report table (plain text, 80 columns) or the one-screen error, never gradtool's traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._paths import shown_path, split_target

if TYPE_CHECKING:
    from .config import ConfiguredTarget, ProjectConfig
    from .results import TargetRun

ROOT = "gradtool"  # the node id of the collector every item hangs off
COMMANDS = ("check", "flow")
WIDTH = 80  # the failure's report table: a CI log without wrapping
# why a target failed, by exit code (the report or the error says the rest)
VERDICTS = {
    1: {"check": "gradients do not match", "flow": "findings of a fail_on kind"},
    2: "could not be run",
    3: "gradtool failed (an internal error: please report it)",
    124: "timed out",
}


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("gradtool")
    group.addoption(
        "--gradtool",
        action="store_true",
        default=False,
        help="Run every gradtool check and flow target configured in pyproject.toml.",
    )
    group.addoption(
        "--gradtool-config",
        metavar="PATH",
        default=None,
        help="The pyproject.toml whose [tool.gradtool] to run (implies --gradtool; default: "
        "the nearest one with that table from the rootdir upward).",
    )


def _enabled(config: Any) -> bool:
    return bool(config.getoption("gradtool") or config.getoption("gradtool_config"))


def pytest_configure(config: Any) -> None:
    if _enabled(config):
        config.addinivalue_line(
            "markers", "gradtool: a target configured in [tool.gradtool] (pytest --gradtool)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: Any) -> Iterator[None]:
    outcome = yield
    if not isinstance(collector, pytest.Session) or not _enabled(collector.config):
        return
    report = outcome.get_result()
    if report.passed:
        report.result.append(GradtoolProject.from_parent(collector, name=ROOT, nodeid=ROOT))


class GradtoolProject(pytest.Collector):
    """The configured targets of the project, one child collector per command."""

    def collect(self) -> Iterator[Any]:
        project = self._project()
        root = Path(os.path.abspath(project.path)).parent
        for command in COMMANDS:
            targets = project.of(command)
            if targets:
                yield GradtoolCommand.from_parent(
                    self,
                    name=command,
                    nodeid=f"{self.nodeid}::{command}",
                    root=root,
                    targets=targets,
                    timeout=project.run.get("timeout"),
                )

    def _project(self) -> ProjectConfig:
        from .config import load_config
        from .errors import GradtoolError

        named = self.config.getoption("gradtool_config")
        start = _start_folder(self.config)
        try:
            project = load_config(named) if named else load_config(start=start)
        except GradtoolError as exc:
            raise self.CollectError(f"gradtool: {exc}") from None
        if project.path is None:
            raise self.CollectError(
                f"gradtool: no pyproject.toml with a [tool.gradtool] table in {start} or "
                "above\nConfigure targets there, or name the file with --gradtool-config PATH."
            )
        if not project.targets:
            raise self.CollectError(
                f"gradtool: {project.path} configures no target\n"
                'Add one, e.g.\n[[tool.gradtool.check]]\ntarget = "ops/my_op.py"'
            )
        return project

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        if isinstance(excinfo.value, self.CollectError):
            return str(excinfo.value.args[0])  # the message, without our frames
        return super().repr_failure(excinfo, style)


def _start_folder(config: Any) -> Path:
    """Where to look for the pyproject.toml: the ini-file's folder, else the rootdir."""
    inipath = getattr(config, "inipath", None)
    return Path(inipath).parent if inipath else Path(config.rootpath)


class GradtoolCommand(pytest.Collector):
    """The configured targets of one command (`check` or `flow`)."""

    def __init__(
        self,
        *,
        root: Path,
        targets: tuple[ConfiguredTarget, ...],
        timeout: float | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.targets = targets
        self.timeout = timeout

    def collect(self) -> Iterator[Any]:
        seen: dict[str, int] = {}
        for entry in self.targets:
            file, name = split_target(entry.target)
            absolute = Path(os.path.abspath(file))
            label = _relative(absolute, self.root) + (f":{name}" if name else "")
            # the same target twice (different options): told apart as parametrize does
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label += f"[{seen[label]}]"
            yield GradtoolItem.from_parent(
                self,
                name=label,
                nodeid=f"{self.nodeid}::{label}",
                path=absolute,
                entry=entry,
                spec=str(absolute) + (f":{name}" if name else ""),
                timeout=self.timeout,
            )


class GradtoolItem(pytest.Item):
    """One configured target: passes when its run exits 0."""

    def __init__(
        self, *, entry: ConfiguredTarget, spec: str, timeout: float | None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.entry = entry
        self.spec = spec  # the target with an absolute path: a test may change the cwd
        # [tool.gradtool] timeout: under pytest each target is a test of its own, and each
        # gets the whole timeout (the command line bounds all of its targets together)
        self.timeout = timeout
        self.add_marker("gradtool")

    def runtest(self) -> None:
        from .runner import run_target
        from .stopping import bounded

        # as on the command line: the timeout, and SIGTERM, end the target with what it did
        with bounded(self.timeout):
            run = run_target(
                self.entry.command, _shown(self.spec), self.entry.options, config=self.entry.where
            )
        if run.interrupted == "interrupt":
            raise KeyboardInterrupt  # Ctrl-C stops the test session, as it would anyway
        if run.interrupted == "terminated":
            pytest.exit(f"gradtool {run.command} {run.target}: terminated", run.exit_code)
        if run.exit_code != 0:
            raise TargetFailed(run)

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        if isinstance(excinfo.value, TargetFailed):
            return failure_text(excinfo.value.run, timeout=self.timeout)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"gradtool {self.entry.command} {self.name}"


class TargetFailed(Exception):
    """A configured target's run did not pass; carries the run for the failure's text."""

    def __init__(self, run: TargetRun) -> None:
        super().__init__(f"gradtool {run.command} {run.target}: exit {run.exit_code}")
        self.run = run


def failure_text(run: TargetRun, width: int = WIDTH, timeout: float | None = None) -> str:
    """What a failed item shows: why, where it is configured, then the report table (as
    plain text) and/or the error message."""
    verdict = VERDICTS.get(run.exit_code, f"exit code {run.exit_code}")
    if isinstance(verdict, dict):
        verdict = verdict[run.command]
    if run.interrupted == "timeout" and timeout is not None:
        verdict = f"stopped by the [tool.gradtool] timeout of {timeout:g} s"
    lines = [f"gradtool {run.command} {run.target}: {verdict} (exit {run.exit_code})"]
    if run.config:
        lines.append(f"configured in {run.config}")
    if run.report is not None:
        from .testing import report_text

        lines += ["", report_text(run.report, width)]
        failed = getattr(run.report, "failed_kinds", ())
        if failed:
            lines.append(f"failing: fail_on {', '.join(failed)}")
    if run.error:
        lines += ["", run.error]
    return "\n".join(lines)


def _relative(path: Path, folder: Path) -> str:
    """`path` relative to `folder` with forward slashes, when it lies under it."""
    return Path(shown_path(path, folder)).as_posix()


def _shown(spec: str) -> str:
    """The target with its path relative to the working directory when it lies under it,
    as the command line shows it."""
    file, name = split_target(spec)
    return shown_path(file) + (f":{name}" if name else "")

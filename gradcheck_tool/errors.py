"""One exception family for everything the user caused; cli.py maps it to exit code 2."""

from __future__ import annotations


class GradtoolError(Exception):
    """A problem with the user's file, inputs or checkpoint, carrying a one-screen message."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class LoadError(GradtoolError):
    """The target file could not be found, imported, or had no usable target."""


class InputError(GradtoolError):
    """Example inputs or input shapes are missing or unusable."""


class CheckpointError(GradtoolError):
    """A --weights file is not a safe, matching state_dict."""


class UserCodeError(GradtoolError):
    """The user's forward or loss raised, or returned something gradtool cannot use."""


class OptionError(InputError):
    """An option value the API cannot use, named as the API names it (`tolerance`); the CLI
    names its flag instead (`--tolerance`)."""

    def __init__(self, option: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{option} {problem}", hint=hint)
        self.option = option
        self.problem = problem

"""The options gradtool takes, validated once, in the Python API's terms.

Each validator returns the value to use or raises `OptionError` naming the option as the API
names it (`tolerance must be a positive number, not 0.0`); `cli.py` names its flag instead
(`--tolerance must be ...`). Closed sets of choices are enums. No torch here: the command
line's help is built from these without importing it.
"""

from __future__ import annotations

import enum
import math
import numbers
import operator
from typing import TypeVar

from .errors import OptionError

E = TypeVar("E", bound=enum.Enum)


class CheckDtype(str, enum.Enum):
    """The dtype finite differences run in: float64, or float32 for code that can't."""

    FLOAT64 = "float64"
    FLOAT32 = "float32"


class Optimizer(str, enum.Enum):
    """The optimizer `flow --steps` trains its copy with."""

    SGD = "sgd"
    ADAM = "adam"


class StdoutFormat(str, enum.Enum):
    """What `--format` puts on standard output (JUnit goes to a file: `--junit PATH`)."""

    TABLE = "table"
    JSON = "json"
    GITHUB = "github"
    MARKDOWN = "markdown"


class ReportFormat(str, enum.Enum):
    """`--format` of `gradtool memory` and `gradtool graph`: a report, not a verdict for CI."""

    TABLE = "table"
    JSON = "json"


# other names torch and users give a member: torch.double, torch.float
ALIASES: dict[type[enum.Enum], dict[str, str]] = {
    CheckDtype: {"double": "float64", "float": "float32"},
}
DEFAULT_DIRECTIONS = 2  # random directions per tensor of a larger model, compared first
DEFAULT_SAMPLES = 16  # coordinates sampled from each larger tensor (plus a direction check)


def flag_for(option: str) -> str:
    """The command-line flag of an API option: its name with dashes."""
    return "--" + option.replace("_", "-")


def choice(kind: type[E], option: str, value: object) -> E:
    """`value` (an enum member, its name in any case, or an alias) as a member of `kind`."""
    if isinstance(value, kind):
        return value
    text = str(getattr(value, "value", value)).lower().removeprefix("torch.")
    text = ALIASES.get(kind, {}).get(text, text)
    for member in kind:
        if member.value == text:
            return member
    names = " or ".join(m.value for m in kind)
    raise OptionError(option, f"must be {names}, not {value}")


def positive(option: str, value: float, what: str = "a positive number") -> float:
    """A finite real number above zero (numpy scalars included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(option, f"must be {what}, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise OptionError(option, f"must be {what}, not {value}")
    return float(value)


def at_least(option: str, value: int, minimum: int) -> int:
    """An integer (numpy's included) no smaller than `minimum`."""
    number = _integer(value)
    if number is None or number < minimum:
        raise OptionError(option, f"must be an integer of at least {minimum}, not {value!r}")
    return number


def valid_seed(value: int) -> int:
    """A seed torch.manual_seed takes."""
    number = _integer(value)
    if number is None:
        raise OptionError("seed", f"must be an integer, not {value!r}")
    if not 0 <= number < 2**63:
        raise OptionError("seed", f"must be between 0 and 2**63 - 1, not {value}")
    return number


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None

"""Project configuration: `[tool.gradtool]` in the nearest pyproject.toml.

```toml
[tool.gradtool]
tolerance = 1e-5            # a default for every target (and for a TARGET given on the line)
junit = "reports/gradtool.xml"

[[tool.gradtool.check]]
target = "ops/attention.py:FusedAttention"
second_order = true
skip = ["mask"]

[[tool.gradtool.flow]]
target = "models/net.py"
fail_on = ["nan", "exploding"]
```

Keys are the Python names of the command-line options (`second_order` for `--second-order`;
dashes are accepted). Paths (targets, `weights`, `plot`, `junit`, `json`) are relative to the
pyproject.toml's folder. An unknown key or a value of the wrong kind is a `ConfigError`
(exit 2) naming the key and the file. Precedence: the command line, then the target's own
keys, then the `[tool.gradtool]` defaults, then gradtool's. No torch here.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ._paths import shown_path, split_target
from .errors import GradtoolError
from .options import StdoutFormat

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

COMMANDS = ("check", "flow")


class ConfigError(GradtoolError):
    """`[tool.gradtool]` has a key or value gradtool cannot use."""


# --- value kinds: each returns the value to use or raises ValueError saying what it wants ---


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a positive number")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a positive number")
    return float(value)


def _int_at_least(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"must be an integer of at least {minimum}")
        return value

    return check


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError("must be an integer between 0 and 2**63 - 1")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value.lower()

    return check


def _device(value: Any) -> str:
    """cpu, cuda or cuda:N (whether CUDA is there is told when the target runs)."""
    import re

    if not isinstance(value, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", value.strip()):
        raise ValueError("must be cpu, cuda or cuda:N")
    return value.strip()


# the dtypes --input-dtype takes (loading.parse_dtype reads the same names)
INPUT_DTYPES = (
    "float32", "float", "float64", "double", "float16", "bfloat16", "int64", "long", "int32",
    "bool",
)  # fmt: skip


def _input_dtype(value: Any) -> str:
    if not isinstance(value, str) or value.lower().removeprefix("torch.") not in INPUT_DTYPES:
        raise ValueError(f"must be one of {', '.join(INPUT_DTYPES)}")
    return value


def _plot(value: Any) -> str:
    if not isinstance(value, str) or not value.lower().endswith((".png", ".svg")):
        raise ValueError("must be a .png or .svg path")
    return value


def _names(value: Any) -> list[str]:
    """A list of strings, or one comma-separated string (as on the command line)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ValueError('must be a list of strings, e.g. ["mask", "encoder.*"]')
    return [v.strip() for v in items if v.strip()]


def _fail_on(value: Any) -> list[str]:
    from .engines.flow.findings import finding_kinds  # torch-free

    kinds = [k.lower() for k in _names(value)]
    known = finding_kinds()
    unknown = [k for k in kinds if k not in known and k != "all"]
    if unknown:
        raise ValueError(
            f"names unknown finding kind(s) {', '.join(unknown)}; "
            f"use any of: {', '.join(known)}, or all"
        )
    return kinds


def _shapes(value: Any) -> list[str]:
    """`["8,16"]`, `[[8, 16]]`, `[8, 16]` (one input) or `"8,16"`, as --input-shape strings."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError('must be a list of shapes, e.g. ["8,16"] or [[8, 16]]')
    out = []
    for shape in value:
        if isinstance(shape, str):
            out.append(shape)
        elif isinstance(shape, list) and all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            out.append(",".join(str(d) for d in shape))
        else:
            raise ValueError('must be a list of shapes, e.g. ["8,16"] or [[8, 16]]')
    return out


# key -> (the commands it applies to, its kind, whether it is a path relative to the file)
_BOTH = ("check", "flow")
# the keys that say how a target is loaded and run apply to memory and graph too (their
# TARGET comes from the command line: [[tool.gradtool.memory]] entries do not exist)
_ALL = ("check", "flow", "memory", "graph")
OPTIONS: dict[str, tuple[tuple[str, ...], Callable[[Any], Any], bool]] = {
    "tolerance": (("check",), _positive, False),
    "eps": (("check",), _positive, False),
    "full": (("check",), _bool, False),
    "samples": (("check",), _int_at_least(1), False),
    "budget": (("check",), _positive, False),
    "second_order": (("check",), _bool, False),
    "sweep": (("check",), _bool, False),
    "forward_mode": (("check",), _bool, False),
    "dtype": (("check",), _one_of("float64", "float32", "double", "float"), False),
    "serial": (("check",), _bool, False),
    "skip": (("check",), _names, False),
    "wrt": (("check",), _names, False),
    "steps": (("flow",), _int_at_least(1), False),
    "nproc": (("flow",), _int_at_least(1), False),
    "lr": (("flow",), _positive, False),
    "optimizer": (("flow",), _one_of("sgd", "adam"), False),
    "plot": (("flow",), _plot, True),
    "fail_on": (("flow",), _fail_on, False),
    "device": (_ALL, _device, False),
    "seed": (_ALL, _seed, False),
    "input_shape": (_ALL, _shapes, False),
    "input_dtype": (_ALL, _input_dtype, False),
    "weights": (_ALL, _text, True),
}
# keys of the whole run: top level only
RUN_OPTIONS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "format": (_one_of(*(f.value for f in StdoutFormat)), False),
    "junit": (_text, True),
    "json": (_text, True),
    "timeout": (_positive, False),
}


@dataclass(frozen=True)
class ConfiguredTarget:
    """One `[[tool.gradtool.check]]` or `[[tool.gradtool.flow]]` entry."""

    command: str  # "check" | "flow"
    target: str  # file.py[:NAME], its path resolved against the pyproject's folder
    options: dict[str, Any]  # the [tool.gradtool] defaults merged with the target's own keys
    own: dict[str, Any]  # the target's own keys only
    where: str  # "pyproject.toml [[tool.gradtool.check]] 2"


@dataclass(frozen=True)
class ProjectConfig:
    """What `[tool.gradtool]` says; empty when no pyproject.toml has that table."""

    path: Path | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # command options, top level
    run: dict[str, Any] = field(default_factory=dict)  # format, junit, json, timeout
    targets: tuple[ConfiguredTarget, ...] = ()

    def of(self, command: str) -> tuple[ConfiguredTarget, ...]:
        return tuple(t for t in self.targets if t.command == command)

    def defaults_for(self, command: str) -> dict[str, Any]:
        """The top-level defaults that apply to `command`."""
        return {k: v for k, v in self.defaults.items() if command in OPTIONS[k][0]}

    def options_for(self, command: str, target: str) -> dict[str, Any]:
        """The options of a TARGET given on the command line: the defaults, and the keys of
        a configured entry naming the same file and object, if there is one."""
        options = self.defaults_for(command)
        for entry in self.of(command):
            if _same_target(entry.target, target):
                options.update(entry.own)
        return options

    @property
    def label(self) -> str:
        return _display(self.path) if self.path is not None else "(no pyproject.toml)"


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml with a [tool.gradtool] table, from `start` (the working
    directory) upward."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and _has_gradtool_table(candidate):
            return candidate
    return None


def _has_gradtool_table(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    if "tool.gradtool" not in text and "[tool]" not in text:  # cheap: skip parsing
        return False
    try:
        return "gradtool" in tomllib.loads(text).get("tool", {})
    except tomllib.TOMLDecodeError:
        return "[tool.gradtool" in text  # a broken file that means us: report it on load


def load_config(path: str | Path | None = None, *, start: Path | None = None) -> ProjectConfig:
    """Read `[tool.gradtool]` from `path` (`--config`), else from the nearest pyproject.toml
    that has one; an empty config when there is none."""
    if path is None:
        found = find_pyproject(start)
        if found is None:
            return ProjectConfig()
        file = found
    else:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: could not read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{_display(file)}: not valid TOML: {exc}") from None
    table = data.get("tool", {}).get("gradtool")
    if table is None:
        if path is not None:
            raise ConfigError(
                f"{_display(file)} has no [tool.gradtool] table",
                hint='Add one, e.g.\n[[tool.gradtool.check]]\ntarget = "ops/my_op.py"',
            )
        return ProjectConfig()
    return _parse(table, file)


def _parse(table: Any, file: Path) -> ProjectConfig:
    shown = _display(file)
    if not isinstance(table, dict):
        raise ConfigError(f"{shown}: [tool.gradtool] must be a table")
    folder = file.resolve().parent
    defaults: dict[str, Any] = {}
    run: dict[str, Any] = {}
    entries: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        where = f"{shown} [tool.gradtool]"
        if key in COMMANDS:
            entries[key] = value
        elif key in RUN_OPTIONS:
            kind, is_path = RUN_OPTIONS[key]
            run[key] = _value(kind, value, raw_key, where, folder if is_path else None)
        elif key in OPTIONS:
            _, kind, is_path = OPTIONS[key]
            defaults[key] = _value(kind, value, raw_key, where, folder if is_path else None)
        else:
            raise _unknown(raw_key, where, [*OPTIONS, *RUN_OPTIONS, *COMMANDS])
    targets = []
    for command in COMMANDS:
        items = entries.get(command, [])
        if isinstance(items, dict):  # [tool.gradtool.check] written once as a table
            items = [items]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ConfigError(
                f"{shown}: tool.gradtool.{command} must be a list of tables "
                f"([[tool.gradtool.{command}]] entries)"
            )
        for number, item in enumerate(items, 1):
            where = f"{shown} [[tool.gradtool.{command}]] {number}"
            targets.append(_target(command, item, where, folder, defaults))
    return ProjectConfig(file, defaults, run, tuple(targets))


def _target(
    command: str, item: dict[str, Any], where: str, folder: Path, defaults: dict[str, Any]
) -> ConfiguredTarget:
    if "target" not in item:
        raise ConfigError(
            f"{where}: has no target",
            hint='Each entry names its file: target = "path/to/file.py[:NAME]"',
        )
    try:
        spec = _text(item["target"])
    except ValueError as exc:
        raise ConfigError(f"{where}: target {exc}") from None
    own: dict[str, Any] = {}
    for raw_key, value in item.items():
        key = raw_key.replace("-", "_")
        if key == "target":
            continue
        if key not in OPTIONS or command not in OPTIONS[key][0]:
            known = [k for k, (cmds, _, _) in OPTIONS.items() if command in cmds]
            raise _unknown(raw_key, where, known, command=command)
        _, kind, is_path = OPTIONS[key]
        own[key] = _value(kind, value, raw_key, where, folder if is_path else None)
    applicable = {k: v for k, v in defaults.items() if command in OPTIONS[k][0]}
    return ConfiguredTarget(command, _resolve_spec(spec, folder), {**applicable, **own}, own, where)


def _value(
    kind: Callable[[Any], Any], value: Any, key: str, where: str, folder: Path | None
) -> Any:
    try:
        checked = kind(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {key} {exc}, not {_toml(value)}") from None
    if folder is not None:
        checked = _display(folder / checked)
    return checked


def _unknown(key: str, where: str, known: list[str], command: str | None = None) -> ConfigError:
    name = key.replace("-", "_")
    close = difflib.get_close_matches(name, known, n=1)
    if command is not None and name in OPTIONS:
        hint = f"{key} is an option of gradtool {', '.join(OPTIONS[name][0])}, not of {command}."
    elif command is not None and name in RUN_OPTIONS:
        hint = f"{key} is a key of the whole run: put it in [tool.gradtool]."
    elif close:
        hint = f"Did you mean {close[0]}?"
    else:
        hint = f"Known keys: {', '.join(sorted(known))}."
    return ConfigError(f"{where}: unknown key {key!r}", hint=hint)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _resolve_spec(spec: str, folder: Path) -> str:
    """`ops/attn.py:Fused` relative to the pyproject's folder, shown from the cwd."""
    path, name = split_target(spec)
    return _display(folder / path) + (f":{name}" if name is not None else "")


def _display(path: Path) -> str:
    """A path relative to the working directory when it lies under it, else absolute."""
    return shown_path(path)


def _same_target(a: str, b: str) -> bool:
    def key(spec: str) -> tuple[str, str | None]:
        path, name = split_target(spec)
        return os.path.abspath(path), name

    return key(a) == key(b)

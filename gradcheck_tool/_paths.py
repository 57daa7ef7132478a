"""How a TARGET and a path are read and shown, in one place for the loader, the config, the
CI formats and the pytest plugin. No torch (the config and the plugin must stay light)."""

from __future__ import annotations

import os


def split_target(spec: str) -> tuple[str, str | None]:
    """`dir/file.py:NAME` -> ("dir/file.py", "NAME"); NAME is None when absent (a `:` that
    does not follow a `.py` belongs to the path, e.g. `C:\\models\\net.py`)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py"):
        return head, tail
    return spec, None


def shown_path(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """`path` relative to `root` (default: the working directory) when it lies under it,
    else absolute."""
    absolute = os.path.abspath(path)
    try:
        rel = os.path.relpath(absolute, os.path.abspath(root or os.getcwd()))
    except ValueError:  # another drive (Windows)
        return absolute
    return absolute if rel == ".." or rel.startswith(".." + os.sep) else rel

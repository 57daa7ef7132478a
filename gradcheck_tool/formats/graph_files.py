"""The files `gradtool graph` writes: --dot (DOT text), --svg and --png (Graphviz's `dot`,
run as a subprocess), --html (the self-contained page of formats/graph_html.py).

`check_outputs` runs before the model does: a path that can't be written, or an image asked
for without Graphviz, is an `OptionError` (exit 2) naming the option."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import OptionError
from .json import check_path

IMAGES = ("svg", "png")  # the formats `dot -T` writes for us
DOT_TIMEOUT_S = 120
INSTALL = (
    "Install Graphviz: Debian/Ubuntu `sudo apt-get install graphviz`, macOS `brew install "
    "graphviz`, conda `conda install graphviz`. --dot and --html need nothing: "
    "`dot -Tsvg g.dot -o g.svg` renders a DOT file later."
)
NO_DOT = "needs Graphviz's `dot` program, which is not on PATH"


def dot_program() -> str | None:
    return shutil.which("dot")


def check_outputs(outputs: Mapping[str, str]) -> None:
    """Refuse, before the model runs, a path that can't be written or an image without dot."""
    for option, path in outputs.items():
        check_path(path, option)
    if outputs.get("html") and importlib.util.find_spec(f"{__package__}.graph_html") is None:
        raise OptionError("html", "is not available in this build of gradtool")
    wanted = [o for o in IMAGES if outputs.get(o)]
    if wanted and dot_program() is None:
        raise OptionError(wanted[0], NO_DOT, hint=INSTALL)


def write_outputs(report: Any, outputs: Mapping[str, str]) -> Iterator[str]:
    """Write each asked-for file; yield the paths written."""
    from .graph_dot import to_dot

    dot_text = to_dot(report) if any(outputs.get(k) for k in ("dot", *IMAGES)) else ""
    if outputs.get("dot"):
        _write_text(outputs["dot"], dot_text, "dot")
        yield outputs["dot"]
    for fmt in IMAGES:
        if outputs.get(fmt):
            render(dot_text, fmt, outputs[fmt])
            yield outputs[fmt]
    if outputs.get("html"):
        from .graph_html import write_html  # another part of #15: imported when asked for

        write_html(report, outputs["html"])
        yield outputs["html"]


def render(dot_text: str, fmt: str, path: str) -> None:
    """`dot -T<fmt> -o path`, the DOT text on stdin."""
    program = dot_program()
    if program is None:
        raise OptionError(fmt, NO_DOT, hint=INSTALL)
    try:
        done = subprocess.run(
            [program, f"-T{fmt}", "-o", path],
            input=dot_text.encode("utf-8"),
            capture_output=True,
            timeout=DOT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OptionError(
            fmt, f"{path}: Graphviz's dot took more than {DOT_TIMEOUT_S} s; try a smaller --depth"
        ) from None
    except OSError as exc:
        raise OptionError(fmt, f"{path}: could not run {program}: {exc}") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise OptionError(fmt, f"{path}: dot failed: {' '.join(said) or done.returncode}")


def _write_text(path: str, text: str, option: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise OptionError(option, f"{path}: could not write: {exc.strerror or exc}") from None

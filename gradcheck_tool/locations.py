"""Where in the user's code a verdict points (`results.SourceLocation`), for CI annotations.

- A tensor of a checked autograd.Function: the line of its `def backward` (decorators
  skipped). A checked function: its `def` line.
- A tensor of a checked module: the nearest user-defined autograd.Function its gradient flows
  through on the way from the output (one forward, its autograd graph walked:
  `nearest_functions`); without one, for a parameter the nearest module owning it (the owner
  first) whose class is the user's (its `forward`, else its `class` line), for an input the
  top module's `forward`.
- A flow finding: the layer's nearest user-defined module (`locate_findings`).

"The user's code" is any real file outside torch, gradtool, the standard library and
site-packages: a stock `nn.Linear` points at the user's module that holds it. Everything here
is best effort: no location is ever an error (a class typed into a REPL has none).
"""

from __future__ import annotations

import functools
import inspect
import linecache
import os
import re
import sys
import sysconfig
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .results import Finding, SourceLocation, TensorResult

LINES_SCANNED = 40  # decorator lines looked past for a `def`/`class` line
ROOT = "(model)"  # how flow names the model itself (engines/flow/samples.ROOT)


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    """Folders whose files are never the user's code."""
    dirs = {os.path.dirname(os.path.abspath(__file__))}
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "__file__", None):
        dirs.add(os.path.dirname(os.path.abspath(torch.__file__)))
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            dirs.add(os.path.abspath(paths[key]))
    return tuple(sorted(dirs))


def is_user_file(path: str | None) -> bool:
    """A real file of the user's: not torch's, gradtool's, the standard library's or an
    installed package's."""
    if not path or path.startswith("<") or not os.path.isfile(path):
        return False
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not any(path == d or path.startswith(d + os.sep) for d in _library_dirs())


def _scan_for(filename: str, first: int, pattern: re.Pattern[str]) -> int:
    """The first line from `first` that matches `pattern` (past decorators), else `first`."""
    for n in range(first, first + LINES_SCANNED):
        line = linecache.getline(filename, n)
        if not line:
            break
        if pattern.match(line):
            return n
    return first


def _short(qualname: str) -> str:
    """`make.<locals>.Block.forward` -> `Block.forward`."""
    return ".".join(qualname.split(".")[-2:])


def def_location(fn: Any) -> SourceLocation | None:
    """The `def` line of a function of the user's (decorators, `functools.wraps` wrappers
    such as `once_differentiable`, bound methods and partials seen through)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    try:
        fn = inspect.unwrap(fn)
    except ValueError:  # a cycle of __wrapped__
        return None
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None or not is_user_file(code.co_filename):
        return None
    pattern = re.compile(rf"\s*(async\s+)?def\s+{re.escape(code.co_name)}\b")
    line = _scan_for(code.co_filename, code.co_firstlineno, pattern)
    what = _short(getattr(fn, "__qualname__", code.co_name))
    return SourceLocation(os.path.abspath(code.co_filename), line, what)


def class_location(cls: type) -> SourceLocation | None:
    """The `class` line of a class of the user's: found through its module, or through the
    file of one of its methods when that module is gone from sys.modules; the last `class
    Name` line above its first method."""
    codes = _codes(cls)
    try:
        filename = inspect.getsourcefile(cls)
    except TypeError:
        filename = codes[0].co_filename if codes else None
    if not is_user_file(filename):
        return None
    ends = [c.co_firstlineno for c in codes if c.co_filename == filename]
    lines = linecache.getlines(filename)[: ends[0] if ends else None]
    pattern = re.compile(rf"\s*class\s+{re.escape(cls.__name__)}\b")
    found = [n for n, text in enumerate(lines, 1) if pattern.match(text)]
    if not found:
        return None
    return SourceLocation(os.path.abspath(filename), found[-1], f"class {cls.__name__}")


def _codes(cls: type) -> list[Any]:
    """The code objects of the functions defined in a class body, in line order."""
    codes = []
    for value in vars(cls).values():
        value = getattr(value, "__func__", value)
        try:
            value = inspect.unwrap(value)
        except ValueError:
            continue
        code = getattr(value, "__code__", None)
        if code is not None:
            codes.append(code)
    return sorted(codes, key=lambda c: c.co_firstlineno)


def function_location(cls: type) -> SourceLocation | None:
    """Where a user-defined autograd.Function computes its gradient: its `backward` (or
    `vjp`, the same method by another name)."""
    for name in ("backward", "vjp"):
        found = def_location(getattr(cls, name, None))
        if found is not None:
            return found
    return None


def module_location(module: Any) -> SourceLocation | None:
    """A module of the user's: its `forward`, else (forward inherited from torch) its class."""
    return def_location(getattr(type(module), "forward", None)) or class_location(type(module))


def callable_location(fn: Any) -> SourceLocation | None:
    """A checked callable: a function's `def` line, a callable object's `__call__`."""
    return def_location(fn) or def_location(inspect.getattr_static(type(fn), "__call__", None))


def owner_location(
    modules: Mapping[str, Any], name: str, locate: Any = module_location
) -> SourceLocation | None:
    """The nearest module on the path to `name` (a parameter's or a module's dotted name,
    owner first, up to the root "") that `locate` finds in the user's code."""
    owners = sorted(
        (m for m in modules if m == name or m == "" or name.startswith(m + ".")),
        key=len,
        reverse=True,
    )
    for owner in owners:
        found = locate(modules[owner])
        if found is not None:
            return found
    return None


# --- the autograd graph of one forward ---------------------------------------------------------


def _user_function(node: Any) -> SourceLocation | None:
    cls = getattr(node, "_forward_cls", None)
    return function_location(cls) if isinstance(cls, type) else None


def nearest_functions(
    outputs: Iterable[Any], leaves: Mapping[int, str]
) -> dict[str, SourceLocation]:
    """For each leaf tensor (`leaves`: id(tensor) -> name) that the outputs' autograd graph
    reaches, the nearest user-defined autograd.Function above it (fewest graph edges between
    them: a breadth-first search down from every such Function at once)."""
    nodes: list[Any] = []  # holds every node, so that ids stay unique while we walk
    seen: set[int] = set()
    stack = [t.grad_fn for t in outputs if getattr(t, "grad_fn", None) is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(n for n, _ in node.next_functions if n is not None)
    nearest: dict[int, SourceLocation] = {}
    queue: deque[Any] = deque()
    for node in nodes:
        found = _user_function(node)
        if found is not None:
            nearest[id(node)] = found
            queue.append(node)
    while queue:
        node = queue.popleft()
        for child, _ in node.next_functions:
            if child is not None and id(child) not in nearest:
                nearest[id(child)] = nearest[id(node)]
                queue.append(child)
    out = {}
    for node in nodes:
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it fills
        name = leaves.get(id(variable)) if variable is not None else None
        if name is not None and id(node) in nearest:
            out[name] = nearest[id(node)]
    return out


def _graph_sources(problem: Any) -> dict[str, SourceLocation]:
    """One forward of the check's private copy with every checked tensor a leaf that
    requires grad; its graph walked (`nearest_functions`). Empty if the forward fails."""
    import torch

    from ._tree import leaves_with_paths

    values = {n: v.detach().requires_grad_(True) for n, v in problem.values.items()}
    leaves = {id(v): n for n, v in values.items()}
    try:
        with torch.enable_grad():
            out, _, _ = problem.forward(values)
            tensors = [t for _, t in leaves_with_paths(out) if isinstance(t, torch.Tensor)]
            return nearest_functions(tensors, leaves)
    except Exception:  # noqa: BLE001 - a location is best effort; the verdict stands
        return {}


def _checkable_of(result: TensorResult, names: Sequence[str]) -> str | None:
    """The checked tensor a result is about (second-order results carry a suffix)."""
    if result.name in names:
        return result.name
    return next((n for n in names if result.name.startswith(n + " (")), None)


def locate_results(
    problem: Any, results: Sequence[TensorResult], *, walk_graph: bool = True
) -> tuple[TensorResult, ...]:
    """`results` with their `source` set (see the module docstring). `problem` is the
    check's `prepare.Problem`; `walk_graph=False` skips the forward (no Function inside a
    module is then found). Never raises for the user's objects: no location is a location."""
    try:
        return _located_results(problem, results, walk_graph)
    except Exception:  # noqa: BLE001 - best effort, never in the way of the verdict
        return tuple(results)


def _located_results(
    problem: Any, results: Sequence[TensorResult], walk_graph: bool
) -> tuple[TensorResult, ...]:
    kinds = {c.name: c.kind for c in problem.checkables}
    names = list(kinds)
    if problem.kind == "function":
        where = function_location(problem.target)
        return tuple(replace(r, source=where) if where else r for r in results)
    graph = _graph_sources(problem) if walk_graph else {}
    if problem.kind == "module":
        modules = dict(problem.module.named_modules())
        top = module_location(problem.module)
    else:
        modules, top = {}, callable_location(problem.target)
    located = []
    for r in results:
        name = _checkable_of(r, names)
        where = graph.get(name) if name is not None else None
        if where is None and name is not None and modules and kinds[name] != "input":
            where = owner_location(modules, name)
        located.append(replace(r, source=where or top) if (where or top) else r)
    return tuple(located)


# --- gradtool flow -----------------------------------------------------------------------------


def locate_findings(
    findings: Iterable[Finding], model: Any, loss_fn: Any = None
) -> tuple[Finding, ...]:
    """`findings` (consequences too) with their `source`: the layer's nearest user-defined
    module (its forward, else its class); the loss's: the user's `loss_fn`, else the
    model's forward; the inputs' (and anything unplaceable): none."""
    findings = tuple(findings)
    try:
        return _located_findings(findings, dict(model.named_modules()), model, loss_fn)
    except Exception:  # noqa: BLE001 - best effort, never in the way of the report
        return findings


def _located_findings(
    findings: tuple[Finding, ...], modules: dict[str, Any], model: Any, loss_fn: Any
) -> tuple[Finding, ...]:
    cache: dict[str, SourceLocation | None] = {}

    def source(layer: str) -> SourceLocation | None:
        if layer not in cache:
            if layer == "(loss)":
                found = (callable_location(loss_fn) if loss_fn is not None else None) or (
                    module_location(model)
                )
            elif layer == ROOT or layer == "":
                found = owner_location(modules, "")
            elif layer.startswith("("):  # "(inputs)"
                found = None
            else:
                found = owner_location(modules, layer)
            cache[layer] = found
        return cache[layer]

    def located(f: Finding) -> Finding:
        return replace(
            f,
            source=f.source or source(f.layer),
            consequences=tuple(located(c) for c in f.consequences),
        )

    return tuple(located(f) for f in findings)

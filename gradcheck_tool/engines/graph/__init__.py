"""`gradtool graph`: the autograd graph of a loss, grouped by module.

One forward and the loss on a private copy of the model (train mode), watched by the tracer
(tracer.py: the module of every autograd node, the cuts, Note [cuts]); the loss's graph is
walked (fine_graph.py) into the report's fine graph. The views (DOT, HTML, the text summary)
collapse it by module to a depth (formats/_graph.py, which also picks the default depth).
With `flow`, gradtool flow runs on the same target and inputs and each module gets its
gradient norm and dead fraction. The engine never prints; the user's model, RNG state, grad
mode and default dtype are left as found.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..._guest import RngState, describe_exception, init_cuda, preserved_state
from ..._tree import leaves_with_paths, map_tensors
from ..._version import __version__
from ...errors import GradtoolError, InputError, UserCodeError
from ...options import at_least
from ...prepare import argument_names, home_device, parse_device, training_copy
from ...results import GraphModule, GraphReport, ModuleFlow
from ..flow.train import StepLoss
from .fine_graph import build
from .tracer import Tracer

ALLOWED_DEVICES = ("cpu", "cuda", "mps")


def run_graph(
    model: Any,
    args: tuple,
    kwargs: dict,
    *,
    loss_fn: Callable[..., Any] | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    depth: int | None = None,
    flow: bool = False,
    target: str = "model",
    found_by: str = "",
) -> GraphReport:
    """The autograd graph of one forward and loss of `model` on (args, kwargs)."""
    from ...formats._graph import default_depth

    if not isinstance(model, nn.Module):
        raise InputError(
            "gradtool graph needs an nn.Module (modules to group the graph by); got "
            + (f"the class {model.__name__}" if isinstance(model, type) else type(model).__name__),
            hint="For a function or autograd.Function, `gradtool check` verifies its gradients.",
        )
    if depth is not None:
        at_least("depth", depth, 0)
    started = time.perf_counter()
    move = device is not None
    device = parse_device(device, ALLOWED_DEVICES) if move else home_device(model)
    init_cuda(device)
    with preserved_state():
        RngState.seeded(seed).restore()
        torch.set_grad_enabled(True)
        work, args, kwargs = training_copy(model, args, kwargs, device, move_model=move)
        # the inputs as given (those that require grad stay leaves that do)
        args, kwargs = map_tensors(_fresh, (args, kwargs))
        inputs = {
            id(t): path or "input"
            for path, t in leaves_with_paths((args, kwargs))
            if isinstance(t, torch.Tensor) and t.requires_grad
        }
        tracer = Tracer(work)
        warnings: list[str] = []
        try:
            tracer.open()
            try:
                output = work(*args, **kwargs)
            except GradtoolError:
                raise
            except Exception as exc:
                raise UserCodeError(
                    f"the model's forward raised {describe_exception(exc, None)}"
                ) from exc
            tracer.end_forward()
            loss = StepLoss(loss_fn, seed, None)(output, args, kwargs)
        finally:
            tracer.close()
        if not loss.requires_grad:
            warnings.append("the loss does not require grad: no gradient reaches any parameter")
        modules = _modules(work, tracer.ran, tracer.calls)
        owner = {n: n.rpartition(".")[0] for n, _ in work.named_parameters()}
        fine = build(loss, tracer, _input_labels(inputs, args, kwargs, work.forward), owner)
        warnings.extend(tracer.errors)
        del loss, output, tracer

    flows: tuple[ModuleFlow, ...] = ()
    if flow:
        flows = _flow(model, args, kwargs, loss_fn, seed, device if move else None, target)
    report = GraphReport(
        target=target,
        version=__version__,
        modules=modules,
        nodes=tuple(fine.nodes),
        edges=tuple(fine.edges),
        cuts=tuple(fine.cuts),
        unreached=tuple(fine.unreached),
        depth=0,
        flow=flows,
        found_by=found_by,
        warnings=tuple(warnings),
        not_cuts=tuple(fine.not_cuts),
    )
    # --depth 99: the model's depth, and the header says so
    chosen = min(depth, report.max_depth) if depth is not None else default_depth(report)
    from dataclasses import replace

    return replace(report, depth=chosen, depth_asked=depth, seconds=time.perf_counter() - started)


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A copy of an input tensor; one that requires grad is a leaf that does."""
    copy = t.detach().clone()
    return copy.requires_grad_(True) if t.requires_grad and copy.is_floating_point() else copy


def _input_labels(
    inputs: dict[int, str], args: tuple, kwargs: dict, forward: Any = None
) -> dict[int, str]:
    """`((args, kwargs))[0][1]` paths read as the user's: the forward's own names (`z`,
    `batch['x']`, as `gradtool check` names inputs), else `args[1]`, `kwargs['mask']`."""
    positional = list(argument_names(forward, args, kwargs, False)[0]) if forward else []
    out = {}
    for key, path in inputs.items():
        if path.startswith("[0]"):
            index, _, rest = path[4:].partition("]")
            if index.isdigit() and int(index) < len(positional):
                path = positional[int(index)] + rest
            else:
                path = "args" + path[3:]
        elif path.startswith("[1]"):
            path = path[4:].partition("]")[0].strip("'\"") + path[4:].partition("]")[2]
        out[key] = path
    return out


def _modules(
    model: nn.Module, ran: dict[str, int], calls: dict[str, int]
) -> tuple[GraphModule, ...]:
    """Every module with its parent and level. Containers (ModuleList, ModuleDict) never run:
    they take no level of their own, so a Transformer's layers are one level below it."""
    from ...locations import module_location

    containers = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
    level: dict[str, int] = {"": 0}
    out = []
    for name, m in model.named_modules():
        parent = None if name == "" else name.rpartition(".")[0]
        if name:
            up = level[parent]  # type: ignore[index]
            parent_is_container = (
                isinstance(model.get_submodule(parent), containers) if parent else False
            )
            level[name] = up if parent_is_container else up + 1
        own = tuple(f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False))
        try:
            source = module_location(m)
        except Exception:  # noqa: BLE001 - a location is best effort
            source = None
        out.append(
            GraphModule(
                name,
                type(m).__name__,
                parent,
                level[name],
                own,
                source,
                container=isinstance(m, containers),
                numel=sum(p.numel() for p in m.parameters(recurse=False)),
                order=ran.get(name),
                calls=calls.get(name, 0),
            )
        )
    return tuple(out)


def _flow(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    loss_fn: Callable[..., Any] | None,
    seed: int,
    device: Any,
    target: str,
) -> tuple[ModuleFlow, ...]:
    """gradtool flow on the same target and inputs: per module, the gradient norm over its
    own parameters and the largest dead fraction of its activations."""
    from ..flow import run_flow

    report = run_flow(model, args, kwargs, loss_fn=loss_fn, seed=seed, device=device, target=target)
    norms: dict[str, float] = {}
    dead: dict[str, float] = {}
    calls: list[ModuleFlow] = []
    for row in report.layers:
        if row.kind == "layer" and row.grad_norm is not None:
            norms[row.name] = math.hypot(norms.get(row.name, 0.0), row.grad_norm)
        if row.dead_fraction is None:
            continue
        if row.via is not None:  # a functional call: placed on its op node by the views
            calls.append(ModuleFlow(row.name, None, row.dead_fraction, row.via, row.call or 1))
        else:
            dead[row.name] = max(dead.get(row.name, 0.0), row.dead_fraction)
    names = sorted(set(norms) | set(dead), key=lambda n: (n.count("."), n))
    return tuple(ModuleFlow(n, norms.get(n), dead.get(n)) for n in names) + tuple(calls)

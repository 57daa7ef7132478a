"""From the loss's autograd graph and what the tracer saw, the fine graph of the report: one
node per autograd node (parameters and inputs as leaves, the loss's own calls folded into one
"loss" node), each with its module; the cuts that matter, and the parameters the loss never
reaches, with the reason."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ...results import GraphCut, GraphEdge, GraphNode, Unreached
from .tracer import LOSS, CutRecord, Tracer


@dataclass
class FineGraph:
    nodes: list[GraphNode] = field(default_factory=list)
    edges: list[GraphEdge] = field(default_factory=list)
    cuts: list[GraphCut] = field(default_factory=list)
    unreached: list[Unreached] = field(default_factory=list)
    # cuts whose value never reached the loss and cost nothing: "no_grad at model.py:12"
    not_cuts: list[str] = field(default_factory=list)


def _walk(roots: Iterable[Any]) -> list[Any]:
    """Every autograd node reachable from `roots` (next_functions), consumers first (a
    topological order: a node comes after every node that uses it)."""
    seen: dict[int, Any] = {}
    stack = [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(n for n, _ in node.next_functions if n is not None)
    uses = {i: 0 for i in seen}
    for node in seen.values():
        for n, _ in node.next_functions:
            if n is not None:
                uses[id(n)] += 1
    queue = deque(n for i, n in seen.items() if uses[i] == 0)
    order = []
    while queue:
        node = queue.popleft()
        order.append(node)
        for n, _ in node.next_functions:
            if n is not None:
                uses[id(n)] -= 1
                if uses[id(n)] == 0:
                    queue.append(n)
    return order


def _label(node: Any) -> str:
    name = type(node).__name__
    for suffix in ("Backward0", "Backward1", "Backward2", "Backward"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def build(
    loss: torch.Tensor,
    tracer: Tracer,
    inputs: Mapping[int, str],
    owner: Mapping[str, str],
) -> FineGraph:
    """`inputs`: id(tensor) -> its path for the inputs that require grad; `owner`: parameter
    name -> its module's name."""
    g = FineGraph()
    params = dict(tracer.model.named_parameters())
    loss_root = loss.grad_fn if loss.requires_grad else None
    reached_nodes = _walk([loss_root])
    reached = {id(n) for n in reached_nodes}
    # the cuts' producers: the branch behind each is drawn too (its nodes do not reach the loss)
    producer_nodes = [
        p for c in tracer.cuts for p in c.producers if not isinstance(p, torch.Tensor)
    ]
    behind = [n for n in _walk(producer_nodes) if id(n) not in reached]
    every = reached_nodes + behind
    behind_of_cut = [
        {id(n) for n in _walk([p for p in c.producers if not isinstance(p, torch.Tensor)])}
        for c in tracer.cuts
    ]

    # each node's module: as the tracer saw it, else its consumer's (calls inside a composite)
    module: dict[int, str] = {}
    for node in every:
        seen = tracer.node_module.get(id(node))
        if seen is not None:
            module[id(node)] = seen
        elif id(node) not in module:
            module[id(node)] = ""
        for n, _ in node.next_functions:
            if n is not None and id(n) not in module and id(n) not in tracer.node_module:
                module[id(n)] = module[id(node)]

    ids: dict[int, int] = {}
    loss_id: int | None = None
    if loss_root is not None:
        loss_id = 0
        g.nodes.append(GraphNode(0, "loss", "loss", ""))
    reached_params: set[str] = set()
    for node in every:
        if module[id(node)] == LOSS and loss_id is not None and id(node) in reached:
            ids[id(node)] = loss_id  # the loss's own calls are the loss node
            continue
        nid = len(g.nodes)
        ids[id(node)] = nid
        variable = getattr(node, "variable", None)
        mod = module[id(node)] if module[id(node)] != LOSS else ""
        on_path = id(node) in reached
        if variable is not None:  # AccumulateGrad: a leaf
            name = tracer.param_names.get(id(variable))
            if name is not None:
                if id(node) in reached:
                    reached_params.add(name)
                g.nodes.append(
                    GraphNode(nid, "param", name, owner.get(name, ""), _shape(variable), on_path)
                )
            else:
                label = inputs.get(id(variable), "input")
                g.nodes.append(GraphNode(nid, "input", label, "", _shape(variable), on_path))
        else:
            g.nodes.append(GraphNode(nid, "op", _label(node), mod, _out_shape(node), on_path))
    if loss_root is not None and ids[id(loss_root)] != loss_id:
        g.edges.append(GraphEdge(ids[id(loss_root)], loss_id))  # the loss is the output
    pairs: set[tuple[int, int]] = set()
    for node in every:
        for n, _ in node.next_functions:
            if n is None:
                continue
            pair = (ids[id(n)], ids[id(node)])
            if pair[0] != pair[1] and pair not in pairs:
                pairs.add(pair)
                g.edges.append(GraphEdge(*pair))

    # parameters used directly by a cut (a parameter detached, used under no_grad)
    leaf_cut = {
        id(p): i
        for i, c in enumerate(tracer.cuts)
        for p in c.producers
        if isinstance(p, torch.Tensor)
    }
    unreached = [n for n, p in params.items() if p.requires_grad and n not in reached_params]
    lost: dict[str, int] = {}  # parameter -> the cut behind which it lies
    for name in unreached:
        p = params[name]
        if id(p) in leaf_cut:
            lost[name] = leaf_cut[id(p)]
            continue
        for i, c_nodes in enumerate(behind_of_cut):
            if any(getattr(n, "variable", None) is p for n in every if id(n) in c_nodes):
                lost[name] = i
                break

    forward = f"{type(tracer.model).__name__}.forward"
    line_of: dict[str, tuple[str, int]] = {}
    for i, c in enumerate(tracer.cuts):
        consumers = [(n, m) for n, m in c.consumers if id(n) in reached]
        params_lost = tuple(n for n in unreached if lost.get(n) == i)
        if not consumers and not params_lost:
            at = f" at {c.location.display_file}:{c.location.line}" if c.location else ""
            if f"{c.kind}{at}" not in g.not_cuts:
                g.not_cuts.append(f"{c.kind}{at}")
                line_of[f"{c.kind}{at}"] = (
                    (c.location.display_file, c.location.line) if c.location else ("", 0)
                )
            continue
        consumer = None
        consumer_text = "nothing on the loss's path"
        if consumers:
            consumer = consumers[0][1]
            consumer = "(loss)" if consumer == LOSS else consumer
            consumer_text = _who(consumer, consumers[0][0], forward)
        first = next((p for p in c.producers if not isinstance(p, torch.Tensor)), None)
        producer_text = _who(c.producer_module, first, forward)
        where = f" ({c.location.display_file}:{c.location.line})" if c.location else ""
        at = f" in {c.module or forward}" if c.kind in ("no_grad", "inference_mode") else ""
        text = f"{c.kind}{at} cuts {producer_text} → {consumer_text}{where}"
        g.cuts.append(
            GraphCut(
                c.kind,
                c.producer_module,
                consumer,
                text,
                c.location,
                params_lost,
                c.module,
                producer_text,
                consumer_text,
            )
        )
        _cut_edges(g, c, consumers, ids, params, owner)
        for name in params_lost:
            lost[name] = -1 - (len(g.cuts) - 1)  # the report's cut index, negated

    for name in unreached:
        mod = owner.get(name, "")
        if name in lost and lost[name] < 0:
            cut = g.cuts[-1 - lost[name]]
            at = f" at {cut.location.display_file}:{cut.location.line}" if cut.location else ""
            reason = f"behind the {cut.kind} cut{at}"
        elif name not in tracer.used_params and mod not in tracer.ran:
            reason = f"never used: {mod or 'the model'} never ran"
        elif name not in tracer.used_params:
            reason = "never used by the forward"
        else:
            reason = "used, but what it computes never reaches the loss"
        g.unreached.append(Unreached(name, mod, reason, params[name].numel()))
    g.not_cuts.sort(key=lambda t: line_of.get(t, ("", 0)))
    return g


def _who(module: str, node: Any, forward: str) -> str:
    """A cut's producer or consumer for the reader: its module, or when that is the model's
    own forward, the op made there ("Relu in Buggy.forward") or the forward itself."""
    if module:
        return module
    if node is not None and not isinstance(node, torch.Tensor):
        return f"{_label(node)} in {forward}"
    return forward


def _cut_edges(
    g: FineGraph,
    c: CutRecord,
    consumers: list[tuple[Any, str]],
    ids: Mapping[int, int],
    params: Mapping[str, Any],
    owner: Mapping[str, str],
) -> None:
    """A `cut` edge from each producer's node to each consumer's node, deduplicated. A call
    under no_grad made no autograd node: it becomes one op node in the module it ran in (its
    parameters feed it), so the picture shows what was computed without gradient."""
    by_param = {id(p): n for n, p in params.items()}
    param_node = {n.label: n.id for n in g.nodes if n.kind == "param"}
    sources, leaves = [], []
    for p in c.producers:
        if isinstance(p, torch.Tensor):
            name = by_param.get(id(p))
            if name is None:
                continue
            if name not in param_node:
                param_node[name] = len(g.nodes)
                g.nodes.append(
                    GraphNode(len(g.nodes), "param", name, owner.get(name, ""), _shape(p), False)
                )
            leaves.append(param_node[name])
        else:
            nid = ids.get(id(p))
            if nid is not None and nid not in sources:
                sources.append(nid)
    targets = []
    for node, _ in consumers:
        nid = ids.get(id(node))
        if nid is not None and nid not in targets:
            targets.append(nid)
    have = {(e.src, e.dst, e.cut) for e in g.edges}

    def add(s: int, t: int, cut: str | None) -> None:
        if (s, t, cut) not in have and s != t:
            have.add((s, t, cut))
            g.edges.append(GraphEdge(s, t, cut))

    if c.kind in ("no_grad", "inference_mode"):
        made = len(g.nodes)
        g.nodes.append(GraphNode(made, "op", f"{c.call} ({c.kind})", c.module, (), False))
        for s in sources[:4]:
            add(s, made, c.kind)
        for leaf in dict.fromkeys(leaves):
            add(leaf, made, None if sources else c.kind)
        for t in targets[:4]:
            add(made, t, None)
        return
    for s in (sources + leaves)[:4]:
        for t in targets[:4]:
            add(s, t, c.kind)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _out_shape(node: Any) -> tuple[int, ...]:
    try:
        meta = node._input_metadata  # the shapes of the gradients it takes: its outputs'
        return tuple(int(s) for s in meta[0].shape) if meta else ()
    except Exception:  # noqa: BLE001 - a shape is decoration
        return ()

"""The graph collapsed by module to a depth: what DOT, the HTML page and the text summary
draw. Pure (no torch): a function of the `GraphReport`.

At depth d a module is *expanded* when its level is below d (or it is named in `expanded`)
and it has submodules: it becomes a cluster holding its submodules' boxes, and the calls of
its own forward become small op nodes inside it (a chain of them, each using only the one
before, is one node). Every other module is a box holding everything under it. Containers
(ModuleList, ModuleDict) never run and are never boxes or clusters: their children hang on
the container's parent. Parameters are one leaf per box (or cluster, for a module's own), the
unreached ones a second, red, leaf. The loss is one node.

`default_depth`: the deepest level whose collapsed graph has at most MAX_BOXES boxes and op
nodes (a 12-layer Transformer shows one box per layer).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ..results import GraphModule, GraphReport

MAX_BOXES = 40
OPS_SHOWN = 3  # op names in an op node's label before "+N"


@dataclass(frozen=True)
class Box:
    """A drawn node. kind: "module" | "ops" | "params" | "unreached" | "input" | "loss"."""

    id: str
    kind: str
    label: str
    module: str = ""  # the module it shows (a box), or whose own calls / parameters it holds
    type: str = ""
    cluster: str | None = None  # the expanded module it is drawn inside (None: top level)
    params: tuple[str, ...] = ()  # parameters (params / unreached leaves; a box's, in it)
    numel: int = 0  # parameter elements under it
    calls: int = 1  # a module box: how often its forward ran
    expandable: bool = False  # a module box with submodules (`collapse(expanded=)` opens it)
    reaches_loss: bool = True  # False: every node in it lies behind a cut
    grad_norm: float | None = None  # --flow: over the parameters under it
    dead_fraction: float | None = None  # --flow: the largest of its activations'
    cuts_inside: tuple[str, ...] = ()  # cut kinds whose both ends this box holds (no edge)


@dataclass(frozen=True)
class Link:
    src: str
    dst: str
    cut: str | None = None


@dataclass(frozen=True)
class Collapsed:
    depth: int
    boxes: tuple[Box, ...]  # modules in forward order first, then the rest
    links: tuple[Link, ...]
    clusters: tuple[GraphModule, ...]  # the expanded modules, outer first

    @property
    def module_boxes(self) -> tuple[Box, ...]:
        return tuple(b for b in self.boxes if b.kind == "module")

    @property
    def size(self) -> int:
        """What makes a picture crowded: module boxes and op nodes."""
        return sum(b.kind in ("module", "ops") for b in self.boxes)


STACKS = ("ModuleList", "Sequential")


def repeated_stack(report: GraphReport) -> GraphModule | None:
    """The shallowest repeated stack: a ModuleList / Sequential holding at least 2 modules
    of one type (a Transformer's layers, a ResNet stage's blocks); stacks of blocks (members
    with submodules) before stacks of plain layers. None: the model has none."""
    found: list[tuple[int, int, int, GraphModule]] = []
    for i, m in enumerate(report.modules):
        if m.type not in STACKS:
            continue
        members = [c for c in report.modules if c.parent == m.name]
        types = [c.type for c in members]
        if not any(types.count(t) >= 2 for t in set(types)):
            continue
        plain = not any(c2.parent in {c.name for c in members} for c2 in report.modules)
        level = min(c.depth for c in members)
        found.append((int(plain), level, i, m))
    return min(found, key=lambda f: f[:3])[3] if found else None


def default_depth(report: GraphReport, limit: int = MAX_BOXES) -> int:
    """With a repeated stack (`repeated_stack`): its members' level, one box per layer
    whatever the model's size. Else the deepest level whose collapsed graph has at most
    `limit` boxes and op nodes; at least 1 when the model has submodules (0 is one box)."""
    stack = repeated_stack(report)
    if stack is not None:
        return min(c.depth for c in report.modules if c.parent == stack.name)
    deepest = report.max_depth
    chosen = min(1, deepest)
    for d in range(1, deepest + 1):
        if collapse(report, d).size <= limit:
            chosen = d
        else:
            break
    return chosen


class _Tree:
    """The module tree without containers: each module's box parent and box children."""

    def __init__(self, modules: Sequence[GraphModule]) -> None:
        self.by_name = {m.name: m for m in modules}
        self.parent: dict[str, str | None] = {}
        self.children: dict[str, list[str]] = {m.name: [] for m in modules}
        for m in modules:
            if m.container:
                continue
            p = m.parent
            while p is not None and self.by_name[p].container:
                p = self.by_name[p].parent
            self.parent[m.name] = p
            if p is not None:
                self.children[p].append(m.name)

    def chain(self, name: str) -> list[str]:
        """From the model down to `name` (the nearest module that is not a container)."""
        while name in self.by_name and self.by_name[name].container:
            name = self.by_name[name].parent or ""
        if name not in self.parent:
            name = ""
        out = [name]
        while self.parent.get(out[-1]) is not None:
            out.append(self.parent[out[-1]])  # type: ignore[arg-type]
        return out[::-1]


def collapse(report: GraphReport, depth: int, expanded: Iterable[str] = ()) -> Collapsed:
    """The report's graph with every module at `depth` (or below an expanded one) one box."""
    tree = _Tree(report.modules)
    wanted = set(expanded)

    def is_expanded(name: str) -> bool:
        m = tree.by_name.get(name)
        if m is None or not tree.children.get(name):
            return False
        return m.depth < depth or name in wanted

    def group(name: str) -> tuple[str, bool]:
        """(the box or cluster a module's calls land in, whether as the cluster's own)."""
        chain = tree.chain(name)
        for a in chain:
            if not is_expanded(a):
                return a, False
        return chain[-1], True

    def enclosing(name: str) -> str | None:
        return tree.parent.get(name)

    node_place: dict[int, str] = {}  # fine node id -> box id
    boxes: dict[str, Box] = {}
    unreached = {u.name: u for u in report.unreached}
    own_ops: dict[str, list[int]] = {}  # expanded module -> its own op node ids

    def module_box(name: str) -> str:
        bid = f"m:{name}"
        if bid not in boxes:
            m = tree.by_name.get(name)
            label = name or "(model)"
            boxes[bid] = Box(
                bid,
                "module",
                label,
                module=name,
                type=m.type if m else "",
                cluster=enclosing(name) if depth else None,
                calls=m.calls if m else 1,
                expandable=bool(tree.children.get(name)),
            )
        return bid

    for n in report.nodes:
        if n.kind == "loss":
            boxes.setdefault("loss", Box("loss", "loss", "loss"))
            node_place[n.id] = "loss"
        elif n.kind == "input":
            bid = f"in:{n.label}"
            boxes.setdefault(bid, Box(bid, "input", n.label))
            node_place[n.id] = bid
        elif n.kind == "param":
            g, _ = group(n.module)
            node_place[n.id] = f"{'u' if n.label in unreached else 'p'}:{g}"
        else:
            g, own = group(n.module)
            if own:
                own_ops.setdefault(g, []).append(n.id)
            else:
                node_place[n.id] = module_box(g)

    _place_own_ops(report, own_ops, node_place, boxes)

    # parameters: one leaf per group (reached), one for the unreached ones
    # (frozen parameters, requires_grad=False, are in neither: the graph never has them)
    in_graph = {n.label for n in report.nodes if n.kind == "param"}
    param_groups: dict[str, list[str]] = {}
    for m in report.modules:
        for p in m.params:
            if p in unreached or p in in_graph:
                g, _ = group(m.name)
                param_groups.setdefault(f"{'u' if p in unreached else 'p'}:{g}", []).append(p)
    for bid, names in param_groups.items():
        kind, _, g = bid.partition(":")
        if not is_expanded(g):
            module_box(g)  # a module that never ran still shows, with its red leaf
        boxes[bid] = Box(
            bid,
            "unreached" if kind == "u" else "params",
            _params_label(names, g, unreached if kind == "u" else None),
            module=g,
            cluster=g if is_expanded(g) else enclosing(g),
            params=tuple(names),
        )

    on_path = {node_place.get(n.id) for n in report.nodes if n.reaches_loss}
    for bid, b in list(boxes.items()):
        if b.kind in ("module", "ops") and bid not in on_path:
            boxes[bid] = replace(b, reaches_loss=False)
    _place_calls(report, node_place, boxes)
    links, inside = _links(report, node_place, boxes)
    for bid, kinds in inside.items():  # a cut within one box: said on it, not a self-loop
        boxes[bid] = replace(boxes[bid], cuts_inside=tuple(kinds))
    for bid, b in list(boxes.items()):
        if b.kind in ("params", "unreached"):
            target = f"m:{b.module}"
            if target in boxes and not any(lk.src == bid for lk in links):
                links.append(Link(bid, target))
    boxes = _with_numbers(report, boxes)
    order = _forward_order(report, boxes, node_place)
    clusters = tuple(m for m in report.modules if is_expanded(m.name) and m.name and depth)
    return Collapsed(depth, tuple(sorted(boxes.values(), key=order)), tuple(links), clusters)


def _place_own_ops(
    report: GraphReport,
    own_ops: dict[str, list[int]],
    node_place: dict[int, str],
    boxes: dict[str, Box],
) -> None:
    """An expanded module's own calls as op nodes: a chain (each using only the one before,
    used only by the one after) is one node."""
    preds: dict[int, list[int]] = {}
    succs: dict[int, list[int]] = {}
    kinds = {n.id: n for n in report.nodes}
    for e in report.edges:
        if e.cut is None and kinds[e.src].kind == "op":
            preds.setdefault(e.dst, []).append(e.src)
            succs.setdefault(e.src, []).append(e.dst)
    for module, ids in own_ops.items():
        mine = set(ids)
        root = {i: i for i in ids}

        for i in ids:
            s = succs.get(i, [])
            if len(s) == 1 and s[0] in mine and len(preds.get(s[0], [])) == 1:
                root[_find(root, s[0])] = _find(root, i)
        members: dict[int, list[int]] = {}
        for i in sorted(ids, reverse=True):  # ids grow from the loss: reversed is forward
            members.setdefault(_find(root, i), []).append(i)
        for head, group_ids in members.items():
            names: list[str] = []
            for i in group_ids:
                if kinds[i].label not in names:
                    names.append(kinds[i].label)
            label = ", ".join(names[:OPS_SHOWN])
            if len(names) > OPS_SHOWN:
                label += f" +{len(names) - OPS_SHOWN}"
            bid = f"o:{module}:{head}"
            boxes[bid] = Box(bid, "ops", label, module=module, cluster=module or None)
            for i in group_ids:
                node_place[i] = bid


def _op_name(text: str) -> str:
    """`torch.relu`, `F.leaky_relu`, `LeakyRelu` -> `leakyrelu`: a call's name and its node's
    label compared."""
    return text.rpartition(".")[2].replace("_", "").lower()


def _place_calls(report: GraphReport, node_place: dict[int, str], boxes: dict[str, Box]) -> None:
    """--flow's functional activation calls (torch.relu in a forward) on the op nodes that
    show them: the k-th call of `via` in a module is the k-th node of that name made by the
    module, in forward order."""

    calls = [f for f in report.flow if f.via is not None and f.dead_fraction is not None]
    if not calls:
        return
    ops_in: dict[tuple[str, str], list[int]] = {}
    for n in sorted(report.nodes, key=lambda n: -n.id):  # ids grow from the loss
        if n.kind == "op":
            ops_in.setdefault((n.module, _op_name(n.label)), []).append(n.id)
    for f in calls:
        found = ops_in.get((f.module, _op_name(f.via or "")), [])
        if f.call is None or not 0 < f.call <= len(found):
            continue
        bid = node_place.get(found[f.call - 1])
        b = boxes.get(bid) if bid is not None else None
        if b is not None and b.kind == "ops":
            boxes[b.id] = replace(b, dead_fraction=max(b.dead_fraction or 0.0, f.dead_fraction))


def _find(root: dict[int, int], i: int) -> int:
    """Union-find's root of `i` (paths halved)."""
    while root[i] != i:
        root[i] = root[root[i]]
        i = root[i]
    return i


def _links(
    report: GraphReport, node_place: dict[int, str], boxes: dict[str, Box]
) -> tuple[list[Link], dict[str, list[str]]]:
    """The links between boxes, each once; and per box the kinds of the cuts inside it."""
    seen: set[tuple[str, str, str | None]] = set()
    links = []
    inside: dict[str, list[str]] = {}
    for e in report.edges:
        s, d = node_place.get(e.src), node_place.get(e.dst)
        if s is None or d is None or (s == d and e.cut is None):
            continue
        if s == d:
            kinds = inside.setdefault(s, [])
            if e.cut not in kinds:
                kinds.append(e.cut)
            continue
        key = (s, d, e.cut)
        if key not in seen:
            seen.add(key)
            links.append(Link(s, d, e.cut))
    return links, inside


def _params_label(names: list[str], group: str, unreached: dict | None) -> str:
    prefix = f"{group}." if group else ""
    short = [n[len(prefix) :] if n.startswith(prefix) else n for n in names]
    head = "unreached: " if unreached is not None else ""
    if len(short) <= 3:
        return head + ", ".join(short)
    return f"{head}{len(short)} tensors"


def _under(name: str, box: str) -> bool:
    return box == "" or name == box or name.startswith(box + ".")


def _with_numbers(report: GraphReport, boxes: dict[str, Box]) -> dict[str, Box]:
    """Parameter counts, and with --flow the gradient norm and dead fraction, per box."""

    numel = {m.name: m.numel for m in report.modules}
    flows = list(report.flow)
    sizes = {n.label: math.prod(n.shape) for n in report.nodes if n.kind == "param"}
    sizes.update({u.name: u.numel for u in report.unreached if u.numel})
    out = {}
    for bid, b in boxes.items():
        if b.kind == "module":
            total = sum(v for n, v in numel.items() if _under(n, b.module))
            mine = [f for f in flows if _under(f.module, b.module)]
            norms = [f.grad_norm for f in mine if f.grad_norm is not None]
            dead = [f.dead_fraction for f in mine if f.dead_fraction is not None]
            b = replace(
                b,
                numel=total,
                grad_norm=math.sqrt(sum(x * x for x in norms)) if norms else None,
                dead_fraction=max(dead) if dead else None,
            )
        elif b.kind in ("params", "unreached"):
            b = replace(b, numel=sum(sizes.get(p, 0) for p in b.params))
        out[bid] = b
    return out


def _forward_order(report: GraphReport, boxes: dict[str, Box], node_place: dict[int, str]):
    """Modules in the order they first ran (never-run ones by definition order), then the
    rest: loss, inputs, op nodes in forward order."""
    rank = {
        m.name: (m.order if m.order is not None else 10**9, i) for i, m in enumerate(report.modules)
    }
    first_node: dict[str, int] = {}
    for n in report.nodes:
        bid = node_place.get(n.id)
        if bid is not None:
            first_node[bid] = max(first_node.get(bid, -1), n.id)
    kind_rank = {"input": 0, "module": 1, "ops": 1, "params": 2, "unreached": 2, "loss": 3}

    def key(b: Box) -> tuple:
        if b.kind == "module":
            return (kind_rank[b.kind], rank.get(b.module, (10**9, 0)), 0)
        if b.kind == "ops":
            return (kind_rank[b.kind], (10**9, 0), -first_node.get(b.id, 0))
        return (kind_rank[b.kind], rank.get(b.module, (10**9, 0)), 0)

    return key

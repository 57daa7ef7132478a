"""Hand-made GraphReports shaped like the graph engine's: a fine graph of autograd ops (names
without "Backward0"), parameter leaves, an input and a loss, each node with the innermost
module whose forward made it; the module tree with parents and depths; cuts and unreached
parameters. They let the HTML page be tested without running a model, against counts known
by construction (`expected_boxes`)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

from gradcheck_tool.results import (
    GraphCut,
    GraphEdge,
    GraphModule,
    GraphNode,
    GraphReport,
    ModuleFlow,
    SourceLocation,
    Unreached,
)


class GraphBuilder:
    """Modules and a fine graph, written as a forward would make them."""

    def __init__(self, model_type: str) -> None:
        self.modules: list[GraphModule] = [GraphModule("", model_type, None, 0)]
        self.depths = {"": 0}
        self.containers: set[str] = set()
        self.nodes: list[GraphNode] = []
        self.edges: list[GraphEdge] = []

    def module(
        self, name: str, type_: str, params: tuple[str, ...] = (), container: bool = False
    ) -> str:
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        # as the engine counts levels: a container's children have its depth
        depth = self.depths[parent] + (0 if parent in self.containers else 1)
        self.depths[name] = depth
        if container:
            self.containers.add(name)
        qualified = tuple(f"{name}.{p}" for p in params)
        self.modules.append(GraphModule(name, type_, parent, depth, qualified, container=container))
        return name

    def node(self, kind: str, label: str, module: str, shape: tuple[int, ...] = ()) -> int:
        self.nodes.append(GraphNode(len(self.nodes), kind, label, module, shape))
        return len(self.nodes) - 1

    def op(self, label: str, module: str, *inputs: int, cut: dict[int, str] | None = None) -> int:
        nid = self.node("op", label, module)
        for src in inputs:
            self.edges.append(GraphEdge(src, nid, (cut or {}).get(src)))
        return nid

    def param(self, name: str) -> int:
        module, _, label = name.rpartition(".")
        return self.node("param", label, module)

    # layers as autograd records them
    def linear(self, name: str, x: int) -> int:
        self.module(name, "Linear", ("weight", "bias"))
        t = self.op("T", name, self.param(f"{name}.weight"))
        return self.op("Addmm", name, self.param(f"{name}.bias"), x, t)

    def layer_norm(self, name: str, x: int) -> int:
        self.module(name, "LayerNorm", ("weight", "bias"))
        w, b = self.param(f"{name}.weight"), self.param(f"{name}.bias")
        return self.op("NativeLayerNorm", name, x, w, b)

    def attention(self, name: str, x: int) -> int:
        self.module(name, "SelfAttention")
        qkv = self.linear(f"{name}.qkv", x)
        q = self.op("View", name, self.op("Split", name, qkv))
        k = self.op("Transpose", name, self.op("Split", name, qkv))
        v = self.op("View", name, self.op("Split", name, qkv))
        scores = self.op("Div", name, self.op("Bmm", name, q, k))
        mixed = self.op("Bmm", name, self.op("Softmax", name, scores), v)
        return self.linear(f"{name}.proj", self.op("Reshape", name, mixed))

    def mlp(self, name: str, x: int, act: str = "GELU") -> int:
        self.module(name, "MLP")
        h = self.linear(f"{name}.fc1", x)
        self.module(f"{name}.act", act)
        h = self.op(act.capitalize() if act != "GELU" else "Gelu", f"{name}.act", h)
        return self.linear(f"{name}.fc2", h)

    def block(self, name: str, x: int) -> int:
        self.module(name, "Block")
        h = self.attention(f"{name}.attn", self.layer_norm(f"{name}.ln1", x))
        x = self.op("Add", name, x, h)
        h = self.mlp(f"{name}.mlp", self.layer_norm(f"{name}.ln2", x))
        return self.op("Add", name, x, h)

    def report(self, target: str, depth: int, **extra) -> GraphReport:
        # as the engine counts them: a module ran once when a node of its own or of a
        # submodule was made in its forward; containers (never called) and unused modules 0
        made = {n.module for n in self.nodes}

        def ran(m: GraphModule) -> bool:
            if m.container:
                return False
            return m.name == "" or any(x == m.name or x.startswith(m.name + ".") for x in made)

        modules = tuple(replace(m, calls=1 if ran(m) else 0) for m in self.modules)
        return GraphReport(
            target=target,
            version="0.1.0",
            modules=modules,
            nodes=tuple(self.nodes),
            edges=tuple(self.edges),
            depth=depth,
            found_by="hand-made (tests/graph/graph_reports.py)",
            **extra,
        )


def transformer(layers: int = 12, flow: bool = False) -> GraphReport:
    """A GPT-like stack: embed, `layers` Blocks in a ModuleList, a final norm and a head; the
    loss a cross-entropy in the model's own forward. Depth 1 (the ModuleList takes no level):
    one box per Block."""
    g = GraphBuilder("TinyGPT")
    x = g.node("input", "x", "", (8, 16, 64))
    g.module("embed", "Linear", ("weight", "bias"))
    h = g.op(
        "Addmm", "embed", x, g.param("embed.bias"), g.op("T", "embed", g.param("embed.weight"))
    )
    g.module("pos", "PositionalEncoding", ("table",))
    h = g.op("Add", "", h, g.op("Slice", "pos", g.param("pos.table")))
    g.module("layers", "ModuleList", container=True)
    for i in range(layers):
        h = g.block(f"layers.{i}", h)
    h = g.layer_norm("norm", h)
    logits = g.linear("head", h)
    loss = g.op("NllLoss", "", g.op("LogSoftmax", "", logits))
    g.edges.append(GraphEdge(loss, g.node("loss", "loss", "")))
    rows: tuple[ModuleFlow, ...] = ()
    if flow:
        rows = _flow_rows(g.modules, layers)
    return g.report(f"tests/graph/tiny_gpt.py:TinyGPT{layers}", depth=1, flow=rows)


def _flow_rows(modules: list[GraphModule], layers: int) -> tuple[ModuleFlow, ...]:
    """As the engine writes them: per module with parameters the norm over its own, shrinking
    a decade every 3 blocks (vanishing towards the input); per activation module its dead
    fraction (blocks 7 and 8 dead); a functional relu called in block 10's MLP (`via`)."""
    rows = []
    for m in modules:
        if m.params:
            block = int(m.name.split(".")[1]) if m.name.startswith("layers.") else None
            if block is None:
                exponent = -1.0 if m.name in ("head", "norm") else -1.0 - layers / 3
            else:
                exponent = -1.0 - (layers - block) / 3
            rows.append(ModuleFlow(m.name, 10.0**exponent))
        elif m.name.endswith(".act"):
            dead = 0.9 if m.name in ("layers.7.mlp.act", "layers.8.mlp.act") else 0.02
            rows.append(ModuleFlow(m.name, None, dead))
    if layers > 10:
        rows.append(ModuleFlow("layers.10.mlp", None, 0.6, via="torch.relu", call=1))
    return tuple(rows)


def expected_boxes(report: GraphReport) -> int:
    """Module boxes at the report's depth, by the definition (independent of the page): a
    module at that depth, or a shallower one without children, that made a node or owns an
    unreached parameter."""
    by_name = {m.name: m for m in report.modules}

    def chain(name: str) -> list[str]:  # the model down to `name`, containers left out
        parts = name.split(".") if name else []
        prefixes = [".".join(parts[:d]) for d in range(len(parts) + 1)]
        return [p for p in prefixes if not by_name[p].container]

    has_children = {c[-2] for m in report.modules if not m.container for c in [chain(m.name)]
                    if len(c) > 1}  # fmt: skip
    used = {n.module for n in report.nodes if n.kind not in ("input", "loss")}
    used |= {u.module for u in report.unreached}

    def shown_as(name: str) -> str | None:
        for prefix in chain(name):
            if by_name[prefix].depth >= report.depth or prefix not in has_children:
                return prefix
        return None

    return len({shown_as(m) for m in used} - {None})


REPO_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HERE = "tests/graph/detached_branch.py"


def detached_branch() -> GraphReport:
    """encoder -> head, with an aux Linear whose output is detached before head uses it, a
    gate whose value comes back as a Python number (.item()), and a spare Linear the forward
    never calls. Depth 1."""
    g = GraphBuilder("DetachedBranch")
    x = g.node("input", "x", "", (4, 16))
    g.module("encoder", "Sequential")
    h = g.linear("encoder.0", x)
    g.module("encoder.1", "ReLU")
    h = g.op("Relu", "encoder.1", h)
    h = g.linear("encoder.2", h)
    aux = g.linear("aux", h)
    gate = g.op("Mean", "", g.linear("gate", h))
    cat = g.op("Cat", "", h, aux, cut={aux: "detach()"})
    g.module("head", "Linear", ("weight", "bias"))
    out = g.op(
        "Addmm", "head", g.param("head.bias"), cat, g.op("T", "head", g.param("head.weight"))
    )
    scaled = g.op("Mul", "", out, gate, cut={gate: ".item()"})
    loss = g.op("Mean", "", g.op("Pow", "", scaled))
    g.edges.append(GraphEdge(loss, g.node("loss", "loss", "")))
    g.module("spare", "Linear", ("weight", "bias"))
    cuts = (
        GraphCut(
            "detach()", "aux", "", "aux's output is detached before the model uses it",
            SourceLocation(HERE, 23, "DetachedBranch.forward"), ("aux.weight", "aux.bias"),
        ),
        GraphCut(
            ".item()", "gate", "", "gate's value comes back as a Python number (.item())",
            SourceLocation(HERE, 25, "DetachedBranch.forward"), ("gate.weight", "gate.bias"),
        ),
    )  # fmt: skip
    unreached = tuple(
        Unreached(f"{m}.{p}", m, reason)
        for m, reason in (
            ("aux", f"cut by detach() in aux ({HERE}:23)"),
            ("gate", f"cut by .item() in gate ({HERE}:25)"),
            ("spare", "never used by the forward"),
        )
        for p in ("weight", "bias")
    )
    # what the cuts left out, as the engine marks it: aux's and gate's nodes (and the Mean of
    # gate's output, before its .item()) never reach the loss
    g.nodes = [
        dataclasses.replace(n, reaches_loss=False)
        if n.module in ("aux", "gate") or n.id == gate
        else n
        for n in g.nodes
    ]
    return g.report(f"{HERE}:DetachedBranch", depth=1, cuts=cuts, unreached=unreached)


def wide(blocks: int = 60) -> GraphReport:
    """About 2000 fine nodes (`blocks` Blocks of ~33), for the page's speed on a big model."""
    return transformer(layers=blocks)

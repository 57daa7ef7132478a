"""`gradtool graph --dot`: the collapsed graph (formats/_graph.py) as Graphviz DOT.

One box per module at the depth ("name / Type / N params"), expanded modules as dashed
clusters holding their submodules and their own calls (small ellipses), one parameter leaf
per box (red when unreached), cut edges red and dashed with the cut's kind, the inputs at the
bottom and the loss at the top. With --flow each box is filled by the log of its gradient
norm (a legend gives the scale) and a dead fraction shows as a badge and a purple border.
"""

from __future__ import annotations

import math

from ..results import GraphReport
from ._graph import Box, Collapsed, collapse

# YlOrRd: small gradient norms pale, large ones red (log scale, the report's own range)
PALETTE = ("#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c")
DARK = {"#fc4e2a", "#e31a1c"}  # fills that need white text
CUT = "#d62728"
DEAD = "#7b3294"
NO_GRAD_FILL = "#d9d9d9"
NEVER_RAN = "#777777"

STYLE = {
    "module": 'shape=box, style="rounded,filled", fillcolor="#e8eef7", color="#4a6fa5"',
    "ops": 'shape=ellipse, style=filled, fillcolor="#f4f4f4", color="#999999", fontsize=9',
    "params": 'shape=box, style=filled, fillcolor="#fff6d5", color="#c9a227", fontsize=9',
    "unreached": (
        f'shape=box, style="filled,bold", fillcolor="#fde0dd", color="{CUT}", '
        f'fontcolor="#a50f15", fontsize=9'
    ),
    "input": 'shape=box, style="rounded,filled", fillcolor="#e5f5e0", color="#31a354"',
    "loss": 'shape=doubleoctagon, style=filled, fillcolor="#333333", fontcolor=white',
}


def to_dot(report: GraphReport, depth: int | None = None) -> str:
    """The DOT text of the report's graph at `depth` (default: the report's)."""
    view = collapse(report, report.depth if depth is None else depth)
    scale = _Scale(view) if report.flow else None
    lines = [
        "digraph gradtool {",
        "  graph [rankdir=BT, newrank=true, nodesep=0.3, ranksep=0.4, fontname=Helvetica,"
        f' fontsize=12, labelloc=t, label="{_q(_title(report, view))}"];',
        '  node [fontname=Helvetica, fontsize=10, margin="0.12,0.05"];',
        '  edge [color="#555555", arrowsize=0.6, fontname=Helvetica];',
    ]
    parents = _cluster_parents(report, view)
    inside: dict[str | None, list[Box]] = {}
    for b in view.boxes:
        where = b.cluster if b.cluster in parents else None
        inside.setdefault(where, []).append(b)

    by_id = {b.id: b for b in view.boxes}

    def emit(cluster: str | None, indent: str) -> None:
        for b in inside.get(cluster, []):
            sibling = by_id.get("p:" + b.id[2:]) if b.kind == "unreached" else None
            lines.append(f"{indent}{_id(b.id)} [{_node(b, scale, sibling)}];")
        for child in [c for c, p in parents.items() if p == cluster]:
            m = next(m for m in view.clusters if m.name == child)
            lines.append(f"{indent}subgraph {_id('cluster_' + child)} {{")
            lines.append(
                f'{indent}  label="{_q(child)}\\n{_q(m.type)}"; style="rounded,dashed"; '
                'color="#8c8c8c"; fontsize=10; labelloc=b; labeljust=l;'
            )
            emit(child, indent + "  ")
            lines.append(f"{indent}}}")

    emit(None, "  ")
    inputs = [b for b in view.boxes if b.kind == "input"]
    if inputs:
        lines.append("  { rank=min; " + " ".join(_id(b.id) for b in inputs) + " }")
    if any(b.kind == "loss" for b in view.boxes):
        lines.append(f"  {{ rank=max; {_id('loss')} }}")
    for lk in view.links:
        attrs = ""
        if lk.cut is not None:
            attrs = (
                f' [color="{CUT}", fontcolor="{CUT}", style=dashed, penwidth=1.8, '
                f'label="{_q(lk.cut)}", fontsize=9]'
            )
        lines.append(f"  {_id(lk.src)} -> {_id(lk.dst)}{attrs};")
    # a parameter leaf beside its box (same rank), not a rank below it: otherwise each leaf
    # pushes the next box sideways and a chain of blocks reads as a diagonal staircase
    by_id = {b.id: b for b in view.boxes}
    for lk in view.links:
        leaf, box = by_id.get(lk.src), by_id.get(lk.dst)
        if leaf is not None and box is not None and leaf.kind in ("params", "unreached"):
            if box.kind == "module" and box.module == leaf.module and lk.cut is None:
                lines.append(f"  {{ rank=same; {_id(leaf.id)}; {_id(box.id)} }}")
    marked = any(lk.cut for lk in view.links) or any(
        b.kind == "unreached" or not b.reaches_loss or (b.kind == "module" and b.calls == 0)
        for b in view.boxes
    )
    if scale is not None or marked:
        lines.append(f"  legend [shape=plaintext, margin=0, label=<{_legend(scale, view)}>];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _title(report: GraphReport, view: Collapsed) -> str:
    how = "--depth" if report.depth_given and view.depth == report.depth else "depth"
    return f"gradtool graph {report.target}  ({how} {view.depth} of {report.max_depth})"


def _cluster_parents(report: GraphReport, view: Collapsed) -> dict[str | None, str | None]:
    """Each drawn cluster -> the drawn cluster it sits in (None: the top)."""
    by_name = {m.name: m for m in report.modules}
    names = {m.name for m in view.clusters}
    out: dict[str | None, str | None] = {}
    for m in view.clusters:
        p = m.parent
        while p is not None and p not in names:
            p = by_name[p].parent if p in by_name else None
        out[m.name] = p if p else None
    return out


class _Scale:
    """log10 of the boxes' gradient norms mapped onto PALETTE."""

    def __init__(self, view: Collapsed) -> None:
        logs = [
            math.log10(b.grad_norm)
            for b in view.boxes
            if b.kind == "module" and b.grad_norm is not None and b.grad_norm > 0
        ]
        self.low = min(logs) if logs else 0.0
        self.high = max(logs) if logs else 0.0

    def colour(self, norm: float | None) -> str | None:
        if norm is None:
            return None
        if norm <= 0 or not math.isfinite(norm):
            return NO_GRAD_FILL
        span = self.high - self.low
        at = 0.5 if span <= 0 else (math.log10(norm) - self.low) / span
        return PALETTE[min(len(PALETTE) - 1, max(0, round(at * (len(PALETTE) - 1))))]


def _node(b: Box, scale: _Scale | None, sibling: Box | None = None) -> str:
    """`sibling`: for an unreached leaf, the reached one of the same box."""
    lines = [b.label]
    style = STYLE[b.kind]
    if b.kind == "module":
        # inside its parent's cluster a box is named relative to it ("norm2"), unless that is
        # a bare index of a Sequential ("3": then "encoder.3"); the full name is the tooltip
        name = b.label
        if b.cluster and name.startswith(b.cluster + ".") and not name.rpartition(".")[2].isdigit():
            name = name[len(b.cluster) + 1 :]
        lines = [name, b.type] if b.type else [name]
        style += f', tooltip="{_q(b.label)}"'
        if b.calls == 0:  # never ran: white, dotted (not "behind a cut")
            style = style.replace('"rounded,filled"', '"rounded,filled,dotted"')
            style = style.replace('fillcolor="#e8eef7"', 'fillcolor="white"')
            style = style.replace(
                'color="#4a6fa5"', f'color="{NEVER_RAN}", fontcolor="{NEVER_RAN}"'
            )
            lines.append("never ran")
        elif not b.reaches_loss:  # only behind a cut: no gradient from the loss gets here
            style = style.replace('"rounded,filled"', '"rounded,filled,dashed"')
            style = style.replace('fillcolor="#e8eef7"', f'fillcolor="{NO_GRAD_FILL}"')
        if b.numel:
            lines.append(f"{count(b.numel)} params")
        if b.cuts_inside:  # both ends of a cut in this box: said here, not drawn as a loop
            lines.append("cut inside: " + ", ".join(b.cuts_inside))
            style = style.replace('color="#4a6fa5"', f'color="{CUT}", penwidth=2')
        if b.calls > 1:
            lines.append(f"called {b.calls}×")
        if scale is not None:
            fill = scale.colour(b.grad_norm)
            if b.grad_norm is not None:
                lines.append(f"‖g‖ {b.grad_norm:.2g}")
            if b.grad_norm is None and b.numel:  # parameters, and no gradient reached them
                fill = NO_GRAD_FILL
                lines.append("no gradient")
            if fill is not None:
                font = ", fontcolor=white" if fill in DARK else ""
                style = style.replace('fillcolor="#e8eef7"', f'fillcolor="{fill}"') + font
            if b.dead_fraction:
                lines.append(f"[dead {b.dead_fraction:.0%}]")
                style = style.replace('color="#4a6fa5"', f'color="{DEAD}", penwidth=2.5')
    elif b.kind == "ops" and b.dead_fraction:
        lines.append(f"[dead {b.dead_fraction:.0%}]")
        style = style.replace('color="#999999"', f'color="{DEAD}", penwidth=2.5')
    elif b.kind in ("params", "unreached") and b.numel:
        lines.append(f"{count(b.numel)} params")
        if b.kind == "unreached":  # of how many tensors its module (box) has in the graph
            both = len(b.params) + len(sibling.params) if sibling is not None else len(b.params)
            lines[-1] += f" · {len(b.params)} of {both} tensors unreached"
            lines[0] = lines[0].removeprefix("unreached: ")
    label = "\\n".join(_q(x) for x in lines)
    return f'{style}, label="{label}"'


def _legend(scale: _Scale | None, view: Collapsed) -> str:
    rows = ['<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">']
    if scale is not None:
        rows.append('<TR><TD COLSPAN="3"><B>gradient norm (log scale)</B></TD></TR><TR>')
        picks = (0, len(PALETTE) // 2, len(PALETTE) - 1)
        for i in picks:
            value = scale.low + (scale.high - scale.low) * i / (len(PALETTE) - 1)
            rows.append(f'<TD BGCOLOR="{PALETTE[i]}">{10**value:.2g}</TD>')
        rows.append("</TR>")
        rows.append(f'<TR><TD COLSPAN="3" COLOR="{DEAD}">purple border: dead activations</TD></TR>')
    if any(lk.cut for lk in view.links):
        rows.append(
            f'<TR><TD COLSPAN="3"><FONT COLOR="{CUT}">- - red dashed: gradient cut</FONT></TD></TR>'
        )
    if any(not b.reaches_loss and b.calls for b in view.boxes if b.kind in ("module", "ops")):
        rows.append(
            f'<TR><TD COLSPAN="3" BGCOLOR="{NO_GRAD_FILL}">'
            "grey dashed box: only behind a cut</TD></TR>"
        )
    if any(b.kind == "module" and b.calls == 0 for b in view.boxes):
        rows.append(
            f'<TR><TD COLSPAN="3"><FONT COLOR="{NEVER_RAN}">'
            "white dotted box: never ran in the forward</FONT></TD></TR>"
        )
    if any(b.kind == "unreached" for b in view.boxes):
        rows.append(
            f'<TR><TD COLSPAN="3" BGCOLOR="#fde0dd"><FONT COLOR="{CUT}">'
            "red leaf: parameters the loss never reaches</FONT></TD></TR>"
        )
    rows.append("</TABLE>")
    return "".join(rows)


def count(n: int) -> str:
    """12, 1.2k, 3.4M."""
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def _id(text: str) -> str:
    return f'"{_q(text)}"'


def _q(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\0", "")

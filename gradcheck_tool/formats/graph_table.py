"""The graph report as text: a header, the modules at the report's depth in forward order
with where their values come from and go to, the cuts, the unreached parameters. Pure
functions of the `GraphReport` (collapsed by formats/_graph.py, as the pictures are)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..results import GraphReport
from ..stopping import STOPPED_BY
from ._graph import MAX_BOXES, Box, Collapsed, collapse
from .graph_dot import count

LINKS_SHOWN = 4  # sources or destinations listed per module before "+N"


def header_lines(report: GraphReport, view: Collapsed) -> list[str]:
    found = f"  ({report.found_by})" if report.found_by else ""
    how = (
        "--depth"
        if report.depth_given
        else f"default: deepest with at most {MAX_BOXES} boxes; --depth N"
    )
    lost = {u.name for u in report.unreached}
    reached = len({n.label for n in report.nodes if n.kind == "param"} - lost)
    ops = sum(n.kind == "op" for n in report.nodes)
    return [
        f"gradtool graph {report.target}{found}",
        f"depth {view.depth} of {report.max_depth} ({how})",
        f"{ops} autograd nodes; {reached} of {reached + len(lost)} trainable parameter "
        "tensors reach the loss",
    ]


def _name(box_id: str, boxes: dict[str, Box]) -> str:
    b = boxes[box_id]
    if b.kind == "module":
        return b.label
    if b.kind == "ops":
        dead = f", dead {b.dead_fraction:.0%}" if b.dead_fraction else ""
        return f"({b.label}{dead})"
    if b.kind == "input":
        return b.label
    return b.label if b.kind == "loss" else ""


def _listed(names: list[str]) -> str:
    names = [n for n in dict.fromkeys(names) if n]
    shown = ", ".join(names[:LINKS_SHOWN])
    return shown + (f" +{len(names) - LINKS_SHOWN}" if len(names) > LINKS_SHOWN else "")


def _ends(links: list, end: str, boxes: dict[str, Box]) -> Text:
    """The boxes at one end of `links`, a cut one red with its kind."""
    out = Text()
    seen: list[tuple[str, str | None]] = []
    for lk in links:
        key = (_name(getattr(lk, end), boxes), lk.cut)
        if key[0] and key not in seen:
            seen.append(key)
    for i, (name, cut) in enumerate(seen[:LINKS_SHOWN]):
        if i:
            out.append(", ")
        out.append(name + (f" [{cut}]" if cut else ""), style="red" if cut else "")
    if len(seen) > LINKS_SHOWN:
        out.append(f" +{len(seen) - LINKS_SHOWN}")
    return out


def modules_table(report: GraphReport, view: Collapsed) -> Table:
    boxes = {b.id: b for b in view.boxes}
    table = Table(
        title=f"modules at depth {view.depth}, in forward order",
        title_justify="left",
        pad_edge=False,
        show_edge=False,
    )
    table.add_column("module", overflow="fold")
    table.add_column("type", overflow="fold")
    table.add_column("params", justify="right", no_wrap=True)
    if report.flow:
        table.add_column("‖g‖", justify="right", no_wrap=True)
        table.add_column("dead", justify="right", no_wrap=True)
    table.add_column("from", overflow="fold")
    table.add_column("to", overflow="fold")
    rows = list(view.module_boxes)
    for i, b in enumerate(rows):
        into = [lk for lk in view.links if lk.dst == b.id and boxes[lk.src].kind != "params"]
        out = [lk for lk in view.links if lk.src == b.id]
        before = rows[i - 1].id if i else None
        after = rows[i + 1].id if i + 1 < len(rows) else None
        # a chain reads down the rows: "from the row above" and "to the row below" are blank
        src = (
            Text()
            if [(lk.src, lk.cut) for lk in into] == [(before, None)]
            else _ends(into, "src", boxes)
        )
        dst = (
            Text()
            if [(lk.dst, lk.cut) for lk in out] == [(after, None)]
            else _ends(out, "dst", boxes)
        )
        lost = f"u:{b.module}" in boxes
        cells: list[Text | str] = [
            Text(b.label, style="bold red" if lost else ""),
            b.type + (f" ×{b.calls}" if b.calls > 1 else ""),
            count(b.numel) if b.numel else "",
        ]
        if report.flow:
            cells.append("" if b.grad_norm is None else f"{b.grad_norm:.2e}")
            cells.append("" if b.dead_fraction is None else f"{b.dead_fraction:.0%}")
        cells += [src, dst if out else Text("(nothing)", style="yellow")]
        table.add_row(*cells)
    return table


def render_graph(report: GraphReport, console: Console) -> None:
    view = collapse(report, report.depth)
    for line in header_lines(report, view):
        console.print(Text(line))
    if report.interrupted:
        console.print(Text(f"stopped: {STOPPED_BY.get(report.interrupted, report.interrupted)}"))
    for w in report.warnings:
        console.print(Text(f"warning: {w}", style="yellow"))
    console.print()
    console.print(modules_table(report, view))
    console.print(Text("from / to: blank where it is just the row above / below", style="dim"))
    console.print()
    if report.cuts:
        console.print(cuts_table(report))
    else:
        console.print(Text("no gradient cut: every value the loss uses keeps its gradient"))
    if report.unreached:
        console.print()
        console.print(unreached_table(report))
    else:
        console.print(Text("every parameter that requires grad reaches the loss"))


def cuts_table(report: GraphReport) -> Table:
    table = Table(
        title=f"gradient cut ({len(report.cuts)})",
        title_justify="left",
        title_style="bold red",
        pad_edge=False,
        show_edge=False,
    )
    table.add_column("cut", no_wrap=True, style="red")
    table.add_column("value of → used by, the line, the parameters it costs", overflow="fold")
    for c in report.cuts:
        kind = c.kind
        if c.module is not None and c.kind in ("no_grad", "inference_mode"):
            kind += f" in {c.module or '(model)'}"
        used_by = "(nothing found)" if c.consumer is None else (c.consumer or "(model)")
        lines = [f"{c.producer or '(model)'} → {used_by}"]
        if c.location is not None:
            lines.append(f"{c.location.display_file}:{c.location.line}")
        if c.params:
            lines.append(f"costs {_listed(list(c.params))}")
        table.add_row(kind, "\n".join(lines))
    return table


def unreached_table(report: GraphReport) -> Table:
    table = Table(
        title=f"parameters the loss never reaches ({len(report.unreached)})",
        title_justify="left",
        title_style="bold red",
        pad_edge=False,
        show_edge=False,
    )
    table.add_column("parameter", overflow="fold")
    table.add_column("why", overflow="fold")
    for u in report.unreached:
        table.add_row(u.name, u.reason)
    return table

"""The graph report as text: a header, the modules at the report's depth in forward order
with where their values come from and go to, the cuts, the unreached parameters. Pure
functions of the `GraphReport` (collapsed by formats/_graph.py, as the pictures are)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..results import GraphReport
from ..stopping import STOPPED_BY
from ._graph import MAX_BOXES, Box, Collapsed, collapse, repeated_stack
from .graph_dot import count

LINKS_SHOWN = 4  # sources or destinations listed per module before "+N"


def header_lines(report: GraphReport, view: Collapsed) -> list[str]:
    found = f"  ({report.found_by})" if report.found_by else ""
    stack = repeated_stack(report)
    if report.depth_given:
        how = "--depth"
    elif stack is not None:
        how = f"default: one box per member of {stack.name or '(model)'}; --depth N"
    else:
        how = f"default: deepest with at most {MAX_BOXES} boxes; --depth N"
    if report.depth_asked is not None and report.depth_asked > report.max_depth:
        how = f"--depth {report.depth_asked}: the model is only {report.max_depth} deep"
    lost = {u.name for u in report.unreached}
    reached = len({n.label for n in report.nodes if n.kind == "param"} - lost)
    return [
        f"gradtool graph {report.target}{found}",
        f"depth {view.depth} of {report.max_depth} ({how})",
        f"{report.autograd_nodes} autograd nodes; {reached} of {reached + len(lost)} "
        "trainable parameter tensors reach the loss",
    ]


def not_cuts_note(not_cuts: tuple[str, ...]) -> str:
    """Values taken out of the graph that the loss never used: fine, said once."""
    return "note: not cuts (values taken out of the graph that the loss never uses): " + ", ".join(
        not_cuts
    )


def _prefix(name: str) -> str:
    """The rows' shared heading: a module's parent ("bert.encoder.layer.0"), or above a
    stack's index ("bert.encoder" for "bert.encoder.layer.3", shown as "layer.3")."""
    parent, _, last = name.rpartition(".")
    if last.isdigit() and parent:
        parent = parent.rpartition(".")[0]
    return parent


def _relative(name: str, prefix: str) -> str:
    return name[len(prefix) + 1 :] if prefix and name.startswith(prefix + ".") else name


def _name(box_id: str, boxes: dict[str, Box], prefix: str = "") -> str:
    b = boxes[box_id]
    if b.kind == "module":
        return _relative(b.label, prefix)
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


def _ends(links: list, end: str, boxes: dict[str, Box], prefix: str = "") -> Text:
    """The boxes at one end of `links`, a cut one red with its kind; module names under
    `prefix` (the row's heading) relative to it."""
    out = Text()
    seen: list[tuple[str, str | None]] = []
    for lk in links:
        key = (_name(getattr(lk, end), boxes, prefix), lk.cut)
        if key[0] and key not in seen:
            seen.append(key)
    for i, (name, cut) in enumerate(seen[:LINKS_SHOWN]):
        if i:
            out.append(", ")
        out.append(name + (f" [{cut}]" if cut else ""), style="red" if cut else "")
    if len(seen) > LINKS_SHOWN:
        out.append(f" +{len(seen) - LINKS_SHOWN}")
    return out


NAME_WIDTH = 26  # the module column: longer names break after a dot


def wrap_at_dots(text: Text | str, width: int, at: str = ". ,") -> Text:
    """`text` in lines of at most `width`, broken only after one of `at` (a dot, a comma, a
    space): a module name is never cut mid-word (a piece longer than `width` stays whole)."""
    text = Text(text) if isinstance(text, str) else text
    plain = text.plain
    if len(plain) <= width:
        return text
    breaks = _breaks(plain, at)
    cuts: list[int] = []
    start = 0
    last = None
    for b in breaks:
        if b - start > width and last is not None and last > start:
            cuts.append(last)
            start = last
        last = b
    lines = text.divide(cuts)
    out = Text()
    for i, line in enumerate(lines):
        line = line.copy()
        line.rstrip()
        if i:
            out.append("\n")
            while line.plain.startswith(" "):
                line = line[1:]
        out.append_text(line)
    return out


def _breaks(plain: str, at: str = ". ,") -> list[int]:
    """Where a line may break: after one of `at` not followed by a space."""
    out = [i + 1 for i, ch in enumerate(plain[:-1]) if ch in at and plain[i + 1] != " "]
    return out + [len(plain)]


def _longest_piece(text: Text | str) -> int:
    plain = text.plain if isinstance(text, Text) else text
    at = [0] + _breaks(plain)
    return max((b - a for a, b in zip(at, at[1:])), default=0)


def modules_table(report: GraphReport, view: Collapsed, width: int = 80) -> Table:
    """The modules in forward order; `width`: the console's, which the from / to columns
    are wrapped to by hand (at dots and commas: never mid-name)."""
    boxes = {b.id: b for b in view.boxes}
    table = Table(
        title=f"modules at depth {view.depth}, in forward order",
        title_justify="left",
        pad_edge=False,
        show_edge=False,
    )
    table.add_column("module", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    if report.flow:
        table.add_column("‖g‖", justify="right", no_wrap=True)
        table.add_column("dead", justify="right", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("to", no_wrap=True)
    rows = list(view.module_boxes)
    all_cells = []
    heading = ""
    for i, b in enumerate(rows):
        prefix = _prefix(b.label)
        if prefix and prefix != heading:  # a heading row: the names below are relative to it
            all_cells.append([Text(prefix + ".", style="dim")])
        heading = prefix
        into = [lk for lk in view.links if lk.dst == b.id and boxes[lk.src].kind != "params"]
        out = [lk for lk in view.links if lk.src == b.id]
        before = rows[i - 1].id if i else None
        after = rows[i + 1].id if i + 1 < len(rows) else None
        # a chain reads down the rows: "from the row above" and "to the row below" are blank
        src = (
            Text()
            if [(lk.src, lk.cut) for lk in into] == [(before, None)]
            else _ends(into, "src", boxes, prefix)
        )
        dst = (
            Text()
            if [(lk.dst, lk.cut) for lk in out] == [(after, None)]
            else _ends(out, "dst", boxes, prefix)
        )
        if b.cuts_inside:  # a cut with both ends in this row's module
            dst.append(("; " if dst.plain else "") + "cut inside: ", style="red")
            dst.append(", ".join(b.cuts_inside), style="red")
        lost = f"u:{b.module}" in boxes
        cells: list[Text | str] = [
            Text(
                ("  " if prefix else "") + _relative(b.label, prefix),
                style="bold red" if lost else "",
            ),
            b.type + (f" ×{b.calls}" if b.calls > 1 else ""),
            count(b.numel) if b.numel else "",
        ]
        if report.flow:
            cells.append("" if b.grad_norm is None else f"{b.grad_norm:.2e}")
            cells.append("" if b.dead_fraction is None else f"{b.dead_fraction:.0%}")
        cells += [src, dst if out else Text("(nothing)", style="yellow")]
        all_cells.append(cells)
    if not all_cells:
        return table
    ncols = len(table.columns)
    fixed = ncols - 2
    widths = [0] * fixed
    for cells in all_cells:
        cells[0] = wrap_at_dots(cells[0], NAME_WIDTH, at=".")
        for k in range(min(fixed, len(cells))):
            plain = cells[k].plain if isinstance(cells[k], Text) else cells[k]
            widths[k] = max([widths[k], len(str(table.columns[k].header))])
            widths[k] = max([widths[k]] + [len(x) for x in plain.split("\n")])
    room = width - sum(widths) - 3 * (ncols - 1)
    full = [c for c in all_cells if len(c) == ncols]
    src_min = max([_longest_piece(c[-2]) for c in full] + [4])
    dst_min = max([_longest_piece(c[-1]) for c in full] + [2])
    src_nat = max([len(c[-2].plain) for c in full] + [4])
    dst_nat = max([len(c[-1].plain) for c in full] + [2])
    # the room shared as the columns would be wide unwrapped, each at least its longest name
    src_w = max(src_min, min(src_nat, room * src_nat // (src_nat + dst_nat)))
    if room - src_nat >= max(dst_min, min(dst_nat, 24)):
        src_w = src_nat  # "from" whole, with room enough left for "to"
    dst_w = max(dst_min, room - src_w)
    for cells in all_cells:
        if len(cells) == ncols:
            cells[-2] = wrap_at_dots(cells[-2], src_w)
            cells[-1] = wrap_at_dots(cells[-1], dst_w)
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
    if report.not_cuts:
        console.print(Text(not_cuts_note(report.not_cuts), style="dim"))
    console.print()
    console.print(modules_table(report, view, console.width))
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
        if c.module and c.kind in ("no_grad", "inference_mode"):
            kind += f" in {c.module}"
        used_by = (
            "(nothing found)"
            if c.consumer is None
            else (c.consumer_text or c.consumer or "(model)")
        )
        lines = [f"{c.producer_text or c.producer or '(model)'} → {used_by}"]
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

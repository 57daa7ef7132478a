"""`gradtool graph --html PATH`: one self-contained page (no network: its script and style
inlined; it opens from file://). The report's data is embedded as JSON; the page collapses
the fine graph by module, lays it out in layers and draws it as SVG, with pan, zoom, click to
expand a module and a side panel of the cuts and unreached parameters (graph_page/graph.js)."""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

PAGE_DIR = "graph_page"  # package data beside this module: graph.js, graph.css

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="gradtool {version}">
<title>{title}</title>
<style>
{css}
</style>
</head>
<body>
<div id="stage">
  <svg id="graph" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{title}">
    <defs>
      <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"
              orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8a93a6"/></marker>
      <marker id="arrow-cut" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7"
              markerHeight="7" orient="auto-start-reverse">
        <path d="M0,0 L10,5 L0,10 z" fill="#d62728"/></marker>
    </defs>
    <g id="viewport"></g>
  </svg>
  <div id="toolbar">
    <button id="zoom-out" title="Zoom out">&minus;</button>
    <span class="label" id="zoom-value">100%</span>
    <button id="zoom-in" title="Zoom in">+</button>
    <button id="zoom-fit" title="Fit the graph to the window">fit</button>
    <span class="sep"></span>
    <span class="label">depth</span>
    <button id="depth-less" title="Collapse one module level">&minus;</button>
    <span class="label" id="depth-value"></span>
    <button id="depth-more" title="Expand one module level">+</button>
    <button id="depth-reset" title="Back to the report's depth">reset</button>
  </div>
  <div id="view-summary"></div>
</div>
<aside>
  <h1>gradtool graph</h1>
  <div id="target"></div>
  <div id="meta"></div>
  <section id="selected-section" hidden><h2>Module</h2><div id="selected"></div></section>
  <section id="legend-section" hidden>
    <h2>Gradient norm (log scale)</h2>
    <div id="legend-ramp"></div>
    <div id="legend-scale"><span id="legend-lo"></span><span id="legend-hi"></span></div>
    <div class="legend-row"><span class="swatch" style="background:#5a5a5a"></span>zero
      <span class="swatch" style="background:#e8eefc;border:1px solid #5473c9"></span>no data
      <span class="legend-dead" id="legend-dead"></span></div>
  </section>
  <h2>Cuts<span class="count" id="cuts-count"></span></h2>
  <ul id="cuts"></ul>
  <h2>Unreached parameters<span class="count" id="unreached-count"></span></h2>
  <ul id="unreached"></ul>
  <section id="warnings-section" hidden><h2>Warnings</h2><ul id="warnings"></ul></section>
  <h2>How to read it</h2>
  <ul><li class="help">Boxes are modules, arrows the forward's data (gradients flow back
    along them). Click a box with + to expand it, a frame's title to collapse it. Drag to pan,
    wheel or &minus; / + to zoom. Red dashed arrows: the gradient was cut there. A red dashed
    box: none of its parameters reaches the loss; a white dotted one: it never ran; a faded
    one: only behind a cut.</li></ul>
</aside>
<div id="tip" hidden></div>
<script type="application/json" id="graph-data">{data}</script>
<script>
{js}
</script>
</body>
</html>
"""


def _asset(name: str) -> str:
    return (
        resources.files(__package__).joinpath(PAGE_DIR).joinpath(name).read_text(encoding="utf-8")
    )


def _embedded_json(data: dict[str, Any]) -> str:
    """JSON that can't end its <script> element early: every "<" escaped (JSON keeps the
    value); ensure_ascii also escapes U+2028/2029."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def to_html(report: Any) -> str:
    """The page for a GraphReport (or anything with its to_dict())."""
    data = report.to_dict()
    title = html.escape(f"gradtool graph · {data['target']}")
    return _TEMPLATE.format(
        version=html.escape(str(data["version"])),
        title=title,
        css=_asset("graph.css"),
        data=_embedded_json(data),
        js=_script(),
    )


def _script() -> str:
    js = _asset("graph.js")
    if "</script" in js.lower():  # would end the inline <script> early
        raise AssertionError("graph_page/graph.js must not contain '</script'")
    return js


def write_html(report: Any, path: str | Path) -> Path:
    """Write the page; a path that can't be written is the user's `--html` error (exit 2)."""
    from ..errors import OptionError

    path = Path(path)
    try:
        path.write_text(to_html(report), encoding="utf-8")
    except OSError as exc:
        raise OptionError("html", f"{path}: could not write: {exc.strerror or exc}") from None
    return path

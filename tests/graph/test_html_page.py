"""`gradtool graph --html`: the page, in a real headless browser (Debian's chromium and
chromedriver, driven by selenium), opened from file:// on hand-made reports
(graph_reports.py). Screenshots go to test-artifacts/ (or $GRADTOOL_TEST_ARTIFACTS)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from pathlib import Path

import graph_reports
import pytest
from conftest import SAMPLES, invoke_cli

from gradcheck_tool.formats.graph_html import to_html, write_html

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("GRADTOOL_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM = os.environ.get("GRADTOOL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("GRADTOOL_CHROMEDRIVER")
    or shutil.which("chromedriver")
    or "/usr/bin/chromedriver"
)
INSTALL = "Debian: apt-get install chromium chromium-driver (.ci/run does it on CI)"


# --- the page as text (no browser) -----------------------------------------------------------


def _embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', page, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1))


def test_the_page_embeds_the_report_and_loads_nothing():
    report = graph_reports.detached_branch()
    page = to_html(report)
    assert _embedded(page) == json.loads(json.dumps(report.to_dict()))
    # every script and style inline: no src/href, no <link>, no URL but the SVG namespace
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "<link" not in page
    urls = set(re.findall(r"https?://[^\s\"')]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls


def test_a_page_that_cannot_be_written_is_the_users_html_error(tmp_path):
    from gradcheck_tool.errors import OptionError

    with pytest.raises(OptionError) as caught:
        write_html(graph_reports.detached_branch(), tmp_path / "no-such-folder" / "g.html")
    assert caught.value.option == "html"
    assert "could not write" in str(caught.value)


def test_a_target_that_looks_like_html_stays_data():
    report = dataclasses.replace(
        graph_reports.detached_branch(), target="m.py:</script><script>alert(1)</script>"
    )
    page = to_html(report)
    assert page.count("</script>") == 2  # the data's and the page's own
    assert _embedded(page)["target"] == report.target


# --- the page in headless Chromium -----------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("selenium", reason="pip install -e '.[test]' installs selenium")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"no chromium/chromedriver at {CHROMIUM}, {CHROMEDRIVER}: {INSTALL}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common import selenium_manager

    def offline(*args, **kwargs):
        raise AssertionError("Selenium Manager would download a driver: no network in tests")

    # the driver and the browser are named, so Selenium Manager has nothing to find; if it
    # is ever asked, the test fails instead of reaching the network
    manager = selenium_manager.SeleniumManager
    entry = "binary_paths" if hasattr(manager, "binary_paths") else "driver_location"
    saved = getattr(manager, entry)
    setattr(manager, entry, offline)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,900", "--hide-scrollbars", "--disable-gpu"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        setattr(manager, entry, saved)


def _open(browser, report, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = write_html(report, ARTIFACTS / f"graph_{name}.html")
    browser.get(path.resolve().as_uri())
    assert browser.execute_script("return document.getElementById('graph').dataset.ready")
    # self-contained: the page asked for nothing (no script, style, font or image to fetch)
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    _assert_no_console_errors(browser)


def _assert_no_console_errors(browser) -> None:
    bad = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not bad, bad


def _boxes(browser) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('g.box')).map(g => g.dataset.module)"
    )


def _scale(browser) -> float:
    transform = browser.find_element("id", "viewport").get_attribute("transform")
    return float(re.search(r"scale\(([-\d.e]+)\)", transform).group(1))


def _screenshot(browser, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.execute_script("document.getElementById('tip').hidden = true")  # the hover's
    assert browser.save_screenshot(str(ARTIFACTS / f"graph_{name}.png"))


def _target(browser, css: str):
    """The element a user would point at: a module box's rectangle (the box's group also holds
    its parameter leaf, so the group's centre can fall between the two)."""
    element = browser.find_element("css selector", css)
    inner = element.find_elements("css selector", ".box-rect")
    return inner[0] if inner else element


def _click(browser, css: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element(_target(browser, css)).click().perform()


def test_a_12_layer_transformer_is_one_box_per_block(browser):
    report = graph_reports.transformer(12)
    _open(browser, report, "transformer12")
    boxes = _boxes(browser)
    # embed, pos, 12 Blocks, norm, head: counted by hand, and by the definition
    assert len(boxes) == 16 == graph_reports.expected_boxes(report)
    assert sorted(boxes) == sorted(
        ["embed", "pos", "norm", "head"] + [f"layers.{i}" for i in range(12)]
    )
    # the forward's order top to bottom: each Block below the one before
    ys = browser.execute_script(
        "return Array.from({length: 12}, (_, i) => document.querySelector("
        "`g.box[data-module='layers.${i}']`).getBoundingClientRect().top)"
    )
    assert ys == sorted(ys) and len(set(ys)) == 12
    # the ModuleList takes no level and is no box or frame: its Blocks hang on the model
    assert not browser.find_elements("css selector", "[data-module='layers']")
    _screenshot(browser, "transformer12")


def test_clicking_a_box_expands_it_and_its_frame_title_collapses_it(browser):
    from selenium.webdriver.common.action_chains import ActionChains

    report = graph_reports.transformer(12)
    _open(browser, report, "transformer12")
    # hovering a box names it, its type and parameters
    ActionChains(browser).move_to_element(
        _target(browser, "g.box[data-module='layers.3']")
    ).perform()
    tip = browser.find_element("id", "tip")
    assert tip.is_displayed()
    assert tip.text.splitlines()[:3] == [
        "layers.3", "Block", "12 parameters: ln1.weight, ln1.bias, attn.qkv.weight, "
        "attn.qkv.bias, attn.proj.weight, attn.proj.bias, ln2.weight, ln2.bias, …",
    ]  # fmt: skip
    _click(browser, "g.box[data-module='layers.3']")
    boxes = _boxes(browser)
    children = ["layers.3.ln1", "layers.3.attn", "layers.3.ln2", "layers.3.mlp"]
    assert len(boxes) == 16 - 1 + 4 and set(children) <= set(boxes)
    assert "layers.3" not in boxes
    # the Block's own residual Adds are drawn as autograd nodes inside its frame
    adds = browser.find_elements("css selector", "g.fine.op[data-module='layers.3']")
    assert [a.text for a in adds] == ["Add", "Add"]
    assert browser.find_element("css selector", "#selected .strong").text == "layers.3"
    _screenshot(browser, "transformer12_expanded")
    _click(browser, "g.box[data-module='layers.3.attn']")  # one level deeper
    assert {"layers.3.attn.qkv", "layers.3.attn.proj"} <= set(_boxes(browser))
    # the expand kept layers.3.attn in view, which may have panned layers.3's head off it
    browser.find_element("id", "zoom-fit").click()
    _click(browser, ".frame-head[data-module='layers.3']")  # collapses it and all below
    assert sorted(_boxes(browser)) == sorted(
        ["embed", "pos", "norm", "head"] + [f"layers.{i}" for i in range(12)]
    )
    assert not browser.find_elements("css selector", ".frame[data-module^='layers.3']")
    _assert_no_console_errors(browser)


def test_zoom_and_pan_change_the_transform(browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    _open(browser, graph_reports.transformer(12), "transformer12")
    before = _scale(browser)
    browser.find_element("id", "zoom-in").click()
    assert _scale(browser) == pytest.approx(before * 1.25, rel=1e-3)
    browser.find_element("id", "zoom-out").click()
    assert _scale(browser) == pytest.approx(before, rel=1e-3)
    svg = browser.find_element("id", "graph")
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(svg), 0, -200).perform()
    assert _scale(browser) == pytest.approx(before * math.exp(200 * 0.0015), rel=1e-2)
    # a drag on the background moves the drawing and keeps the scale
    viewport = browser.find_element("id", "viewport")
    moved_from = viewport.get_attribute("transform")
    scale = _scale(browser)
    ActionChains(browser).move_to_element_with_offset(
        svg, -450, 300
    ).click_and_hold().move_by_offset(120, -80).release().perform()
    assert viewport.get_attribute("transform") != moved_from
    assert _scale(browser) == pytest.approx(scale)
    assert len(_boxes(browser)) == 16  # the drag was not a click on a box
    # fit: the whole drawing inside the window
    browser.find_element("id", "zoom-fit").click()
    inside = browser.execute_script(
        "const s = document.getElementById('graph').getBoundingClientRect();"
        "const v = document.getElementById('viewport').getBoundingClientRect();"
        "return v.left >= s.left - 1 && v.right <= s.right + 1 && v.top >= s.top - 1"
        " && v.bottom <= s.bottom + 1"
    )
    assert inside
    _screenshot(browser, "transformer12_fit")
    _assert_no_console_errors(browser)


def test_the_detached_branch_shows_its_cuts_and_unreached_parameters(browser):
    report = graph_reports.detached_branch()
    _open(browser, report, "detached_branch")
    assert sorted(_boxes(browser)) == ["aux", "encoder", "gate", "head", "spare"]
    assert len(_boxes(browser)) == graph_reports.expected_boxes(report)
    cuts = browser.find_elements("css selector", "path.edge.cut")
    assert sorted(c.get_attribute("data-cut") for c in cuts) == [".item()", "detach()"]
    assert browser.find_element("css selector", "path.edge.cut[data-src='m:aux']")
    labels = browser.find_elements("css selector", "g.edge-label")
    assert sorted(lb.text for lb in labels) == ["✂ .item()", "✂ detach()"]
    # a cut's label covers no box or node
    overlaps = browser.execute_script(
        "const r = e => e.getBoundingClientRect();"
        "const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom"
        " && b.top < a.bottom;"
        "const labels = Array.from(document.querySelectorAll('g.edge-label rect')).map(r);"
        "const things = Array.from(document.querySelectorAll('.box-rect, g.fine rect')).map(r);"
        "return labels.filter(l => things.some(t => hit(l, t))).length"
    )
    assert overlaps == 0
    panel_cuts = [li.text for li in browser.find_elements("css selector", "#cuts li")]
    assert len(panel_cuts) == 2
    assert "detach()" in panel_cuts[0] and "aux → (model)" in panel_cuts[0]
    assert "tests/graph/detached_branch.py:23" in panel_cuts[0]
    assert ".item()" in panel_cuts[1] and "tests/graph/detached_branch.py:25" in panel_cuts[1]
    names = [e.text for e in browser.find_elements("css selector", "#unreached li .name")]
    assert names == [u.name for u in report.unreached]
    # the spare Linear never ran: its box is there, marked as such (white, dotted, "never
    # ran", as in the DOT view), with its parameters as red leaves; no other box is
    spare = browser.find_element("css selector", "g.box.never-ran[data-module='spare']")
    assert "never ran" in spare.text
    assert len(browser.find_elements("css selector", "g.box.never-ran")) == 1
    assert "never ran" not in browser.find_element("css selector", "g.box[data-module='aux']").text
    red = browser.find_elements("css selector", "g.box .param-leaf.unreached")
    assert len(red) == 3  # aux, gate, spare
    # the boxes whose every node is behind a cut are faded; the path to the loss is not
    faded = browser.find_elements("css selector", "g.box.behind-cut, g.fine.behind-cut")
    assert sorted(f.get_attribute("data-module") for f in faded) == ["", "aux", "gate"]
    _screenshot(browser, "detached_branch")
    # a leaf module expands into its autograd nodes and parameters, the unreached ones red
    _click(browser, "g.box[data-module='spare']")
    params = browser.find_elements("css selector", "g.fine.param.unreached[data-module='spare']")
    assert sorted(p.text for p in params) == ["bias", "weight"]
    _click(browser, "g.box[data-module='aux']")
    assert browser.find_element("css selector", "path.edge.cut[data-cut='detach()']")
    _screenshot(browser, "detached_branch_expanded")
    _assert_no_console_errors(browser)


def test_flow_colours_boxes_by_gradient_norm(browser):
    report = graph_reports.transformer(12, flow=True)
    _open(browser, report, "transformer12_flow")
    norms = {f.module: f.grad_norm for f in report.flow if f.grad_norm is not None}

    def under(name: str) -> float:  # the norm over every parameter under a module
        return math.sqrt(
            sum(n * n for m, n in norms.items() if m == name or m.startswith(name + "."))
        )

    # the legend spans every box's norm but the whole model's (a container is no box)
    boxed = [under(m.name) for m in report.modules if m.name and not m.container]
    boxed = [n for n in boxed if n > 0]  # a module without parameters has no norm
    low, high = (float(browser.find_element("id", i).text) for i in ("legend-lo", "legend-hi"))
    assert low == pytest.approx(min(boxed), rel=1e-2)
    assert high == pytest.approx(max(boxed), rel=1e-2)
    fills = browser.execute_script(
        "const out = {}; document.querySelectorAll('g.box').forEach(g => {"
        " out[g.dataset.module] = getComputedStyle(g.querySelector('.box-rect')).fill; });"
        "return out"
    )

    def lightness(rgb: str) -> float:  # viridis brightens as the norm grows
        r, g, b = (int(v) for v in re.findall(r"\d+", rgb)[:3])
        return 0.299 * r + 0.587 * g + 0.114 * b

    # a Block's norm is over all its parameters: the root of the sum of its rows' squares
    block = {i: under(f"layers.{i}") for i in range(12)}
    by_norm = sorted(range(12), key=lambda i: block[i])
    assert [lightness(fills[f"layers.{i}"]) for i in by_norm] == sorted(
        lightness(fills[f"layers.{i}"]) for i in range(12)
    )
    assert lightness(fills["layers.0"]) < lightness(fills["layers.11"])
    dead = browser.execute_script(
        "return Array.from(document.querySelectorAll('g.box .badge.dead'))"
        ".map(b => [b.closest('g.box').dataset.module, b.textContent])"
    )
    # activation modules dead in blocks 7 and 8; a functional relu (`via`) in block 10's MLP
    assert sorted(dead) == [
        ["layers.10", "dead 60%"],
        ["layers.7", "dead 90%"],
        ["layers.8", "dead 90%"],
    ]
    _screenshot(browser, "transformer12_flow")
    _assert_no_console_errors(browser)


def test_a_graph_with_nothing_to_draw_still_renders(browser):
    from gradcheck_tool.results import GraphModule, GraphReport

    empty = GraphReport("m.py", "0.1.0", (GraphModule("", "M", None, 0),), (), ())
    _open(browser, empty, "empty")
    assert _boxes(browser) == []
    assert browser.find_element("id", "cuts-count").text == "0"


def test_a_graph_of_2000_nodes_renders_and_expands(browser):
    report = graph_reports.wide(60)
    assert len(report.nodes) >= 2000
    _open(browser, report, "wide60")
    assert len(_boxes(browser)) == graph_reports.expected_boxes(report) == 64
    browser.find_element("id", "depth-more").click()
    deeper = dataclasses.replace(report, depth=2)
    assert len(_boxes(browser)) == graph_reports.expected_boxes(deeper) == 4 + 60 * 4
    browser.find_element("id", "depth-more").click()
    deepest = dataclasses.replace(report, depth=3)
    assert len(_boxes(browser)) == graph_reports.expected_boxes(deepest)
    browser.find_element("id", "depth-reset").click()
    assert len(_boxes(browser)) == 64
    for _ in range(2):
        browser.find_element("id", "depth-less").click()
    assert _boxes(browser) == [""]  # depth 0: the model as one box, between input and loss
    _assert_no_console_errors(browser)


# --- `gradtool graph --html` on real models (the graph engine: another part of #15) ----------


def _real_page(browser, tmp_path, target: Path, name: str, *options: str) -> dict:
    """Run the command as a user would, open its page; the report is the --json of the run."""
    pytest.importorskip("gradcheck_tool.formats._graph", reason="the graph engine is absent")
    page, report = tmp_path / f"{name}.html", tmp_path / f"{name}.json"
    result = invoke_cli("graph", target, *options, "--html", page, "--json", report)
    assert result.code == 0, result.stdout + result.stderr
    data = json.loads(report.read_text())
    assert _embedded(page.read_text()) == data  # the page shows the run's report
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(page, ARTIFACTS / f"graph_{name}.html")
    browser.get(page.resolve().as_uri())
    assert browser.execute_script("return document.getElementById('graph').dataset.ready")
    _assert_no_console_errors(browser)
    _screenshot(browser, name)
    return data


def test_the_detached_branch_sample_from_the_command_line(browser, tmp_path):
    data = _real_page(browser, tmp_path, SAMPLES / "detached_branch.py", "sample_detached_branch")
    cuts = browser.find_elements("css selector", "path.edge.cut")
    assert sorted(c.get_attribute("data-cut") for c in cuts) == sorted(
        c["kind"] for c in data["cuts"]
    )
    assert len(data["cuts"]) >= 1
    shown = [li.text for li in browser.find_elements("css selector", "#unreached li .name")]
    assert shown == [u["name"] for u in data["unreached"]]
    # the gate's leaf: its elements (16 * 16 + 16), and tensors, not elements, unreached
    pills = [e.text for e in browser.find_elements("css selector", "g.box .param-leaf")]
    assert "272 params · 2 of 2 tensors unreached" in pills
    # the cut's ends named: the Mul of the model's own forward, not "(model)"
    panel = " ".join(li.text for li in browser.find_elements("css selector", "#cuts li"))
    assert "encoder.3 → Mul in DetachedBranch.forward" in panel and "(model)" not in panel


def test_a_12_layer_transformer_encoder_from_the_command_line(browser, tmp_path):
    deep = graph_reports.REPO_FIXTURES / "graph" / "deep_models.py"
    if not deep.exists():
        pytest.skip("tests/fixtures/graph/deep_models.py (the graph engine's tests) is absent")
    _real_page(browser, tmp_path, deep, "transformer_encoder12")
    boxes = _boxes(browser)
    assert sorted(boxes) == sorted(["embed", "head"] + [f"encoder.layers.{i}" for i in range(12)])


def test_dead_relus_of_a_forward_are_marked_on_their_nodes(browser, tmp_path):
    # dead_relu_mlp calls torch.relu in its own forward: flow's rows carry `via`, and the page
    # puts each on the Relu node of that call
    data = _real_page(
        browser, tmp_path, SAMPLES / "dead_relu_mlp.py", "sample_dead_relu_mlp_flow", "--flow"
    )
    dead = [f for f in data["flow"] if f.get("via") and (f["dead_fraction"] or 0) >= 0.5]
    assert dead, "the sample's flow run finds no dead functional ReLU"
    badges = browser.execute_script(
        "return Array.from(document.querySelectorAll('g.fine.op .badge.dead'))"
        ".map(b => [b.closest('g.fine').textContent.split('dead')[0], b.textContent])"
    )
    assert sorted(badges) == sorted(
        ["Relu", f"dead {round(100 * f['dead_fraction'])}%"] for f in dead
    )


_INSIDE = (
    "const s = document.getElementById('graph').getBoundingClientRect();"
    "const inside = e => { const r = e.getBoundingClientRect(); return r.left >= s.left - 1"
    " && r.right <= s.right + 1 && r.top >= s.top - 1 && r.bottom <= s.bottom + 1; };"
)


def test_on_load_a_12_layer_graph_is_whole_in_view_at_a_legible_zoom(browser):
    report = graph_reports.transformer(12)
    _open(browser, report, "transformer12_load")
    # the page counts autograd nodes as the text and JSON do
    meta = browser.find_element("id", "meta").text
    assert f"· {report.autograd_nodes} autograd nodes ·" in meta
    assert report.autograd_nodes == sum(n.kind == "op" for n in report.nodes) < len(report.nodes)
    # the loss (last) and the input (first) and every box inside the window
    assert browser.execute_script(
        _INSIDE + "return inside(document.querySelector('g.fine.loss'))"
        " && inside(document.querySelector('g.fine.input'))"
        " && Array.from(document.querySelectorAll('g.box')).every(inside)"
    )
    assert _scale(browser) >= 0.45


def test_on_load_a_graph_too_tall_to_read_whole_shows_its_top_at_full_width(browser):
    _open(browser, graph_reports.transformer(48), "transformer48_load")
    assert 0.45 <= _scale(browser) <= 1  # legible, not shrunk to fit 48 layers
    # the top (the input and the first layer) in view, the loss below the window
    assert browser.execute_script(
        _INSIDE + "return inside(document.querySelector('g.fine.input'))"
        " && inside(document.querySelector(\"g.box[data-module='layers.0']\"))"
        " && !inside(document.querySelector('g.fine.loss'))"
    )
    # the full width: the drawing's left and right edges inside the window
    assert browser.execute_script(
        "const s = document.getElementById('graph').getBoundingClientRect();"
        "const v = document.getElementById('viewport').getBoundingClientRect();"
        "return v.left >= s.left - 1 && v.right <= s.right + 1"
    )


def test_an_expanded_box_stays_in_view(browser):
    _open(browser, graph_reports.transformer(12), "transformer12_expand_last")
    _click(browser, "g.box[data-module='layers.11']")
    # every unit of the expanded Block (its frame, children and own nodes) inside the window,
    # none hidden under the side panel or below the window's edge
    shown = browser.execute_script(
        _INSIDE + "const mine = Array.from(document.querySelectorAll("
        "\"g.box[data-module^='layers.11.'], g.fine[data-module='layers.11']\"));"
        "return [mine.length, mine.filter(inside).length]"
    )
    assert shown[0] >= 4 and shown == [shown[0], shown[0]]
    _screenshot(browser, "transformer12_expand_last")
    _assert_no_console_errors(browser)

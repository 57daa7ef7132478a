"""The graph collapsed by module (formats/_graph.py), its default depth on 12-layer
Transformers, the DOT text and the images Graphviz makes of it, and the text summary at 80
columns."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import FIXTURES, REPO, SAMPLES
from torch import nn

from gradcheck_tool.engines.graph import run_graph
from gradcheck_tool.formats import table
from gradcheck_tool.formats._graph import MAX_BOXES, collapse, default_depth
from gradcheck_tool.formats.graph_dot import to_dot
from gradcheck_tool.formats.graph_files import render

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot not installed")


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEEP = _load(FIXTURES / "graph" / "deep_models.py", "graph_deep_models")
DETACHED = _load(SAMPLES / "detached_branch.py", "graph_views_detached_branch")


@pytest.fixture(scope="module")
def detached():
    model = DETACHED.build_model()
    return run_graph(
        model, (DETACHED.example_inputs(),), {}, loss_fn=DETACHED.loss_fn,
        target="sample_models/detached_branch.py",
    )  # fmt: skip


@pytest.fixture(scope="module")
def transformer():
    return run_graph(DEEP.build_model(), (DEEP.example_inputs(),), {}, target="deep_models.py")


def test_a_12_layer_transformer_shows_one_box_per_layer(transformer) -> None:
    view = collapse(transformer, transformer.depth)
    layers = [f"encoder.layers.{i}" for i in range(DEEP.LAYERS)]
    assert [b.label for b in view.module_boxes] == ["embed", *layers, "head"]
    assert [b.type for b in view.module_boxes][1:-1] == ["TransformerEncoderLayer"] * 12
    assert transformer.depth == 2 and not transformer.depth_given
    assert transformer.cuts == () and transformer.unreached == ()
    # one more level would show each layer's insides
    assert len(collapse(transformer, transformer.depth + 1).module_boxes) > 14
    # each layer's parameters are one leaf, with every one of its 12 tensors
    leaves = [b for b in view.boxes if b.kind == "params" and b.module == "encoder.layers.3"]
    assert len(leaves) == 1 and len(leaves[0].params) == 12
    assert leaves[0].numel == sum(
        p.numel() for p in DEEP.build_model().encoder.layers[3].parameters()
    )


@pytest.mark.parametrize("n", [2, 6, 12])
def test_a_bert_shows_one_box_per_layer_whatever_its_size(n) -> None:
    """The default depth keeps a repeated stack's members one box each, with 2 layers as with
    12 (BertModel: encoder.layer is a ModuleList of BertLayer)."""
    model, inputs = DEEP.bert(n)
    report = run_graph(
        model, (), inputs, loss_fn=lambda out, **kw: out.last_hidden_state.pow(2).mean()
    )
    view = collapse(report, report.depth)
    labels = [b.label for b in view.module_boxes]
    layers = [x for x in labels if x.startswith("encoder.")]
    assert layers == [f"encoder.layer.{i}" for i in range(n)]
    assert {b.type for b in view.module_boxes if b.label in layers} == {"BertLayer"}
    assert len(view.module_boxes) <= MAX_BOXES
    # the pooler is not in this loss: torch leaves its gradients None, and so does the graph
    assert {u.name for u in report.unreached} == {"pooler.dense.weight", "pooler.dense.bias"}
    assert report.cuts == ()  # the library's own no_grad/detach are not the user's cuts


def test_containers_take_no_level(transformer) -> None:
    by_name = {m.name: m for m in transformer.modules}
    assert by_name["encoder.layers"].container
    assert by_name["encoder"].depth == 1
    assert by_name["encoder.layers"].depth == 2  # its children's level, none of its own
    assert by_name["encoder.layers.0"].depth == 2
    assert by_name["encoder.layers.0.self_attn"].depth == 3


def test_depth_zero_is_one_box_and_expanding_a_module_shows_its_children(transformer) -> None:
    whole = collapse(transformer, 0)
    assert [b.label for b in whole.module_boxes] == ["(model)"]
    one = collapse(transformer, 1)
    assert [b.label for b in one.module_boxes] == ["embed", "encoder", "head"]
    assert [b.expandable for b in one.module_boxes] == [False, True, False]
    opened = collapse(transformer, 1, expanded=["encoder"])
    assert len(opened.module_boxes) == 14
    assert [m.name for m in opened.clusters] == ["encoder"]


def test_default_depth_is_the_stack_s_level_whatever_the_limit(transformer) -> None:
    assert default_depth(transformer, limit=3) == 2 == default_depth(transformer, limit=10_000)


def test_without_a_repeated_stack_the_default_depth_grows_with_the_limit(transformer) -> None:
    # the same report with the ModuleList renamed: no repeated stack left
    plain = replace(
        transformer,
        modules=tuple(
            replace(m, type="Holder") if m.type == "ModuleList" else m for m in transformer.modules
        ),
    )
    assert default_depth(plain, limit=3) == 1
    assert default_depth(plain, limit=10_000) == plain.max_depth


def test_collapsed_links_are_deduplicated_and_cuts_kept(detached) -> None:
    for depth in range(detached.max_depth + 1):
        view = collapse(detached, depth)
        keys = [(lk.src, lk.dst, lk.cut) for lk in view.links]
        assert len(keys) == len(set(keys))
        ids = {b.id for b in view.boxes}
        assert all(lk.src in ids and lk.dst in ids for lk in view.links)
    view = collapse(detached, 1)
    cuts = {(lk.src, lk.dst, lk.cut) for lk in view.links if lk.cut}
    assert cuts == {("m:encoder", "m:aux", "detach()"), ("m:encoder", "m:gate", "no_grad")}
    red = [b for b in view.boxes if b.kind == "unreached"]
    assert [(b.module, b.params) for b in red] == [("gate", ("gate.weight", "gate.bias"))]


def test_dot_marks_cuts_and_unreached_parameters(detached) -> None:
    text = to_dot(detached, 1)
    cut = re.search(r'"m:encoder" -> "m:aux" \[([^\]]*)\]', text)
    assert cut and "style=dashed" in cut.group(1) and 'label="detach()"' in cut.group(1)
    assert '"#d62728"' in cut.group(1)
    leaf = re.search(r'"u:gate" \[([^\]]*)\]', text)
    assert leaf and 'label="weight, bias\\n272 params · 2 of 2 tensors unreached"' in leaf.group(1)
    assert 'rank=max; "loss"' in text
    assert '"m:encoder" [' in text and 'label="encoder\\nSequential\\n416 params"' in text


@needs_dot
def test_svg_and_png_are_written_by_dot(detached, tmp_path) -> None:
    svg, png = tmp_path / "g.svg", tmp_path / "g.png"
    render(to_dot(detached), "svg", str(svg))
    render(to_dot(detached), "png", str(png))
    image = svg.read_text()
    assert "detach()" in image and "no_grad" in image and "stroke-dasharray" in image
    assert "2 of 2 tensors unreached" in image
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_dot
def test_dot_accepts_every_depth_with_flow(tmp_path) -> None:
    model = DETACHED.build_model()
    report = run_graph(model, (DETACHED.example_inputs(),), {}, loss_fn=DETACHED.loss_fn, flow=True)
    for depth in range(report.max_depth + 1):
        render(to_dot(report, depth), "svg", str(tmp_path / f"d{depth}.svg"))
    text = to_dot(report, 2)
    assert "gradient norm (log scale)" in text  # the legend
    assert "‖g‖" in text and "no gradient" in text  # gate: no gradient reaches it


def test_summary_fits_80_columns_and_names_the_cut_lines(detached) -> None:
    out = io.StringIO()
    table.write(detached, out, width=80)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for c in detached.cuts:
        assert f"detached_branch.py:{c.location.line}" in text.replace("\n", "")
    assert "gate.weight" in text and "behind the no_grad cut" in text
    assert "encoder.3 → aux.0" in text


def test_summary_of_a_transformer_lists_the_layers_in_order(transformer) -> None:
    out = io.StringIO()
    table.write(transformer, out, width=80)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = [line.split("│")[0].rstrip() for line in text.splitlines() if "│" in line]
    # the layers under their parent's heading, named relative to it
    assert rows == ["embed", "encoder.", *[f"  layers.{i}" for i in range(12)], "head"]
    assert "no gradient cut" in text


def test_json_is_the_report(detached) -> None:
    data = json.loads(json.dumps(detached.to_dict()))
    assert data["command"] == "graph" and data["depth"] == detached.depth
    assert {c["kind"] for c in data["cuts"]} == {"detach()", "no_grad"}
    assert {u["name"] for u in data["unreached"]} == {"gate.weight", "gate.bias"}


def test_the_views_need_no_torch() -> None:
    code = (
        "import sys; import gradcheck_tool.formats._graph, gradcheck_tool.formats.graph_dot, "
        "gradcheck_tool.formats.graph_table; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_frozen_parameters_are_not_leaves() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3).requires_grad_(False), torch.nn.Linear(3, 2))
    report = run_graph(model, (torch.randn(2, 3),), {})
    view = collapse(report, 1)
    assert [b.module for b in view.boxes if b.kind == "params"] == ["1"]
    assert report.unreached == ()


def test_flow_puts_a_functional_relus_dead_fraction_on_its_node() -> None:
    """dead_relu_mlp.py calls torch.relu twice in its forward; its docstring counts 25 and 28
    of 32 units dead on the example batch: the two Relu nodes carry those fractions."""
    sample = _load(SAMPLES / "dead_relu_mlp.py", "graph_views_dead_relu")
    report = run_graph(sample.DeadReluMLP(), (sample.example_inputs(),), {}, flow=True)
    view = collapse(report, 1)
    relus = [b for b in view.boxes if b.kind == "ops"]
    assert [b.label for b in relus] == ["Relu", "Relu"]
    assert [b.dead_fraction for b in relus] == [25 / 32, 28 / 32]
    assert "[dead 78%]" in to_dot(report, 1) and "[dead 88%]" in to_dot(report, 1)


def test_a_leaf_lists_only_the_parameters_in_the_graph() -> None:
    """A module with one frozen and one trainable parameter: its leaf names the trainable one
    only, with its own size."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    layer.bias.requires_grad_(False)
    report = run_graph(torch.nn.Sequential(layer), (torch.randn(2, 3),), {})
    [leaf] = [b for b in collapse(report, 1).boxes if b.kind == "params"]
    assert (leaf.params, leaf.label, leaf.numel) == (("0.weight",), "weight", 6)


def test_a_shared_block_is_one_box_that_says_how_often_it_ran() -> None:
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.nn.Linear(4, 4)

        def forward(self, x):
            for _ in range(3):
                x = torch.tanh(self.block(x))
            return x

    torch.manual_seed(0)
    report = run_graph(Shared(), (torch.randn(2, 4),), {})
    view = collapse(report, 1)
    assert [(b.label, b.calls) for b in view.module_boxes] == [("block", 3)]
    assert "called 3×" in to_dot(report, 1)
    # the three calls made three Addmm nodes of the block
    assert sum(n.label == "Addmm" and n.module == "block" for n in report.nodes) == 3


def test_boxes_inside_a_cluster_are_named_relative_to_it(transformer) -> None:
    text = to_dot(transformer, 3)
    assert re.search(r'"m:encoder.layers.0.norm2" \[[^\]]*label="norm2\\nLayerNorm', text)
    assert 'tooltip="encoder.layers.0.norm2"' in text
    # a Sequential's index alone says nothing: the full name is kept
    text = to_dot(run_graph(DETACHED.build_model(), (DETACHED.example_inputs(),), {}), 2)
    assert re.search(r'"m:encoder.3" \[[^\]]*label="encoder.3\\nReLU"', text)


def test_a_box_behind_a_cut_is_marked() -> None:
    cuts = _load(FIXTURES / "graph" / "cuts.py", "graph_views_cuts")
    torch.manual_seed(0)
    report = run_graph(cuts.Detach(), (cuts.example_inputs(),), {})
    boxes = {b.label: b for b in collapse(report, 1).module_boxes}
    assert (boxes["a"].reaches_loss, boxes["b"].reaches_loss) == (False, True)
    assert re.search(r'"m:a" \[[^\]]*"rounded,filled,dashed"', to_dot(report, 1))


class _LongEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings_of_the_vocabulary = nn.Linear(4, 4)
        self.token_type_embeddings = nn.Linear(4, 4)
        self.position_embeddings_for_long_inputs = nn.Linear(4, 4)


class _LongNames(nn.Module):
    """Names longer than an 80-column table's module column (BERT-like, longer)."""

    def __init__(self):
        super().__init__()
        self.embeddings_with_a_rather_long_name = _LongEmbeddings()
        self.classifier_head_with_a_long_name = nn.Linear(4, 1000)

    def forward(self, x):
        e = self.embeddings_with_a_rather_long_name
        h = e.word_embeddings_of_the_vocabulary(x) + e.token_type_embeddings(x)
        return self.classifier_head_with_a_long_name(h + e.position_embeddings_for_long_inputs(x))


def test_at_80_columns_no_module_name_or_number_is_cut() -> None:
    torch.manual_seed(0)
    model = _LongNames()
    report = run_graph(model, (torch.randn(2, 4),), {}, target="long_names.py", depth=2)
    out = io.StringIO()
    table.write(report, out, width=80)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    words = set(re.findall(r"[A-Za-z_][\w]*", text))
    for name, _ in model.named_modules():
        for part in name.split(".") if name else ():
            assert part in words, part  # each piece of every name whole on some line
    assert "5.0k" in text  # the head's 4 * 1000 + 1000 parameters, whole
    # a module's row starts with (the end of) its name: no row of a type without a name
    rows = [ln.split("│") for ln in text.splitlines() if "│ Linear" in ln]
    assert len(rows) == 4 and all(r[0].strip() for r in rows)
    assert f"{report.autograd_nodes} autograd nodes" in text


def test_one_count_of_autograd_nodes_in_every_view(detached) -> None:
    data = json.loads(json.dumps(detached.to_dict()))
    out = io.StringIO()
    table.write(detached, out, width=80)
    assert data["autograd_nodes"] == detached.autograd_nodes
    assert f"{detached.autograd_nodes} autograd nodes" in out.getvalue()
    # the op nodes of the report, counted here: no leaf, no loss, no input
    assert detached.autograd_nodes == len([n for n in data["nodes"] if n["kind"] == "op"])


class _NeverRuns(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        return self.used(x)


def test_a_module_that_never_ran_has_its_own_style_and_legend_entry() -> None:
    report = run_graph(_NeverRuns(), (torch.randn(2, 4),), {}, target="never.py")
    text = to_dot(report)
    box = re.search(r'"m:unused" \[([^\]]*)\]', text).group(1)
    assert "dotted" in box and "never ran" in box and "dashed" not in box
    assert "never ran in the forward" in text and "only behind a cut" not in text
    # its red leaf counts its parameters as the others do: 4 * 4 + 4
    leaf = re.search(r'"u:unused" \[([^\]]*)\]', text).group(1)
    assert "20 params · 2 of 2 tensors unreached" in leaf


def test_a_cut_inside_one_box_is_said_on_it_not_drawn_as_a_loop(detached):
    """At --depth 0 every cut of a model lies inside its one box: the DOT and the summary say
    'cut inside: ...' on it (they drew self-loops whose labels overlapped)."""
    report = detached
    view = collapse(report, 0)
    assert all(lk.src != lk.dst for lk in view.links)
    (model,) = [b for b in view.boxes if b.kind == "module"]
    assert set(model.cuts_inside) == {"detach()", "no_grad"}
    dot = to_dot(report, 0)
    assert "cut inside: detach(), no_grad" in dot
    assert "m: -> m:" not in dot.replace('"', "")

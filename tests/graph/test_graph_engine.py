"""gradtool graph's engine: each kind of cut found at the user's line with the module that
used the cut value; the unreached parameters equal torch's own answer (the parameters whose
.grad is None after a backward); no false alarm where nothing the loss needs was cut; the
user's model and state left as found."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import random
import sys

import numpy as np
import pytest
import torch
from conftest import FIXTURES, SAMPLES
from models import hook_free
from torch import nn

from gradcheck_tool.engines.graph import run_graph
from gradcheck_tool.errors import InputError


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # inspect.getsourcelines needs it
    spec.loader.exec_module(module)
    return module


CUTS = _load(FIXTURES / "graph" / "cuts.py", "graph_cut_fixtures")
DETACHED = _load(SAMPLES / "detached_branch.py", "graph_sample_detached_branch")


def marked_line(cls: type, kind: str) -> int:
    """The line of `cls` whose comment says `# cut: KIND` (read from the file, not gradtool)."""
    lines, first = inspect.getsourcelines(cls)
    hits = [first + i for i, text in enumerate(lines) if text.rstrip().endswith(f"# cut: {kind}")]
    assert len(hits) == 1, (cls, kind)
    return hits[0]


def torch_unreached(model: nn.Module, args: tuple, loss_fn=None) -> set[str]:
    """The reference: after loss.backward() on a copy, the parameters that require grad whose
    .grad is still None."""
    work = copy.deepcopy(model)
    work.train()
    out = work(*args)
    if loss_fn is not None:
        loss = loss_fn(out, *args)
    else:
        gen = torch.Generator().manual_seed(3)
        leaves = out if isinstance(out, tuple) else (out,)
        loss = sum((t * torch.randn(t.shape, generator=gen)).sum() for t in leaves)
    if loss.requires_grad:
        loss.backward()
    return {n for n, p in work.named_parameters() if p.requires_grad and p.grad is None}


def graph_of(cls: type, **kwargs):
    torch.manual_seed(0)
    model = cls()
    return model, run_graph(model, (CUTS.example_inputs(),), {}, target=cls.__name__, **kwargs)


# model, the cut's kind, the module whose value was cut, the module that used it (None: not
# found — torch.from_numpy is invisible to a TorchFunctionMode)
CUT_CASES = [
    ("Detach", "detach()", "a", "b"),
    ("TorchDetach", "detach()", "a", "b"),
    ("Data", ".data", "a", "b"),
    ("NoGrad", "no_grad", "a", "b"),
    ("InferenceMode", "inference_mode", "a", ""),
    ("Item", ".item()", "", ""),
    ("Tolist", ".tolist()", "a", "b"),
    ("Numpy", ".numpy()", "a", "b"),
    ("NumpyDirect", "detach()", "a", None),
    ("DecoratedNoGrad", "no_grad", "a", "b"),
    ("FunctionAndDetach", "detach()", "c", ""),
]


@pytest.mark.parametrize("name,kind,producer,consumer", CUT_CASES)
def test_each_kind_of_cut_is_found_at_its_line(name, kind, producer, consumer) -> None:
    cls = CUTS.MODELS[name]
    model, report = graph_of(cls)
    assert len(report.cuts) == 1, report.cuts
    cut = report.cuts[0]
    assert (cut.kind, cut.producer, cut.consumer) == (kind, producer, consumer)
    assert cut.location is not None and cut.location.line == marked_line(cls, kind)
    assert cut.location.file.endswith("cuts.py")
    # the parameters it costs are exactly those torch leaves without a gradient
    reference = torch_unreached(model, (CUTS.example_inputs(),))
    assert set(cut.params) == reference
    assert {u.name for u in report.unreached} == reference
    for u in report.unreached:
        assert u.reason.startswith(f"behind the {kind} cut at ") and u.reason.endswith(
            f"cuts.py:{cut.location.line}"
        )


@pytest.mark.parametrize("name", ["Detach", "Data", "NoGrad", "Tolist"])
def test_a_cut_is_a_red_edge_from_the_producer_to_the_consumer(name) -> None:
    _, report = graph_of(CUTS.MODELS[name])
    nodes = {n.id: n for n in report.nodes}
    cut_edges = [e for e in report.edges if e.cut is not None]
    assert cut_edges
    kind = report.cuts[0].kind
    assert all(e.cut == kind for e in cut_edges)
    # it leaves a node of module a (an op, or a's parameters) and enters b's node, or (no_grad:
    # no autograd node was made) the node standing for the call, which feeds b
    assert {nodes[e.src].module for e in cut_edges} == {"a"}
    after = {e.dst for e in cut_edges}
    after |= {e.dst for e in report.edges if e.src in after}
    assert "b" in {nodes[i].module for i in after}


@pytest.mark.parametrize("name", ["Healthy", "MetricUnderNoGrad", "LibraryCuts", "FunctionDetach"])
def test_no_false_alarm(name) -> None:
    """A healthy model has no cut; a metric under no_grad that never feeds the loss, a number
    printed with .item() and a boolean mask of a detached value are no cuts either (named in
    a note, not a warning); torch's own no_grad and detach (spectral norm, gumbel_softmax's
    straight-through estimator) are not the user's cuts, nor is what a custom
    autograd.Function's forward does (its backward carries the gradient)."""
    model, report = graph_of(CUTS.MODELS[name])
    assert report.cuts == ()
    assert report.unreached == ()
    assert torch_unreached(model, (CUTS.example_inputs(),)) == set()
    assert not any(e.cut for e in report.edges)
    assert report.warnings == ()
    if name == "MetricUnderNoGrad":
        lines, first = inspect.getsourcelines(CUTS.MODELS[name])
        at = {
            key: first + i
            for i, text in enumerate(lines)
            for key in ("float(h.norm())", ".item() > 1e9", "h.detach() > 0")
            if key in text
        }
        assert [n.rpartition(":")[0].rpartition(" at ")[0] for n in report.not_cuts] == [
            "no_grad",
            ".item()",
            "detach()",
        ]
        assert [int(n.rpartition(":")[2]) for n in report.not_cuts] == [
            at["float(h.norm())"],
            at[".item() > 1e9"],
            at["h.detach() > 0"],
        ]
    else:
        assert report.not_cuts == ()


def test_a_function_s_forward_cuts_nothing_but_the_user_s_detach_beside_it_does() -> None:
    """Both ways, against torch: with the Function alone every parameter gets a gradient; with
    the user's detach() beside it, exactly c's parameters get none, and the one cut is
    reported at the user's line (not inside the Function)."""
    model, report = graph_of(CUTS.MODELS["FunctionAndDetach"])
    assert torch_unreached(model, (CUTS.example_inputs(),)) == {"c.weight", "c.bias"}
    assert [c.location.line for c in report.cuts] == [
        marked_line(CUTS.MODELS["FunctionAndDetach"], "detach()")
    ]
    assert {u.name for u in report.unreached} == {"c.weight", "c.bias"}


def test_detached_branch_sample() -> None:
    model = DETACHED.build_model()
    x = DETACHED.example_inputs()
    report = run_graph(model, (x,), {}, loss_fn=DETACHED.loss_fn, target="detached_branch.py")
    kinds = {c.kind: c for c in report.cuts}
    assert set(kinds) == {"detach()", "no_grad"}
    assert (kinds["detach()"].producer, kinds["detach()"].consumer) == ("encoder.3", "aux.0")
    assert kinds["detach()"].location.line == _line_of(DETACHED, "features.detach()")
    assert kinds["no_grad"].module == "gate"
    assert kinds["no_grad"].location.line == _line_of(DETACHED, "self.gate(features)")
    reference = torch_unreached(model, (x,), DETACHED.loss_fn)
    assert reference == {"gate.weight", "gate.bias"}
    assert {u.name for u in report.unreached} == reference


def _line_of(module, text: str) -> int:
    lines = inspect.getsource(module).splitlines()
    hits = [i + 1 for i, line in enumerate(lines) if text in line and "=" in line]
    assert len(hits) == 1
    return hits[0]


class NeverRuns(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.spare = nn.Linear(4, 4)  # never called
        self.side = nn.Linear(4, 4)  # called, its result thrown away
        self.frozen = nn.Linear(4, 4).requires_grad_(False)

    def forward(self, x):
        self.side(x)
        return self.used(self.frozen(x))


def test_unreached_reasons_match_torch() -> None:
    torch.manual_seed(0)
    model = NeverRuns()
    x = torch.randn(2, 4)
    report = run_graph(model, (x,), {})
    reasons = {u.name: u.reason for u in report.unreached}
    assert set(reasons) == torch_unreached(model, (x,))  # frozen parameters are not listed
    assert reasons["spare.weight"] == "never used: spare never ran"
    assert reasons["side.bias"] == "used, but what it computes never reaches the loss"
    assert report.cuts == ()


def test_every_node_has_a_module_and_the_graph_reaches_each_parameter() -> None:
    """Each parameter node is named by its qualified name; every op node of a Linear model
    belongs to a module of the model (nodes inside composite ops take their consumer's)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.MultiheadAttention(8, 2, batch_first=True))

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            h = self.body[1](self.body[0](x))
            return self.body[2](h, h, h)[0]

    report = run_graph(Wrap(), (torch.randn(2, 3, 4),), {})
    names = {m.name for m in report.modules}
    params = {n.label for n in report.nodes if n.kind == "param"}
    assert params == {n for n, _ in Wrap().named_parameters()}
    for n in report.nodes:
        assert n.module in names
    attention = {n.label for n in report.nodes if n.kind == "op" and n.module == "body.2"}
    assert len(attention) >= 3  # the attention's own computation, not the model's
    assert report.edges and all(e.src != e.dst for e in report.edges)


def test_users_model_and_state_are_left_as_found() -> None:
    model = DETACHED.build_model()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    with torch.no_grad():
        run_graph(model, (DETACHED.example_inputs(),), {}, loss_fn=DETACHED.loss_fn, flow=True)
        assert not torch.is_grad_enabled()
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert hook_free(model)
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert (np.random.get_state()[1] == rng[2]).all()
    assert (torch.get_default_dtype(), torch.is_grad_enabled()) == (dtype, grad)


def test_flow_fills_each_module_with_torchs_gradient_norm() -> None:
    model = DETACHED.build_model()
    x = DETACHED.example_inputs()
    report = run_graph(model, (x,), {}, loss_fn=DETACHED.loss_fn, flow=True)
    flows = {f.module: f for f in report.flow}
    work = copy.deepcopy(model)
    DETACHED.loss_fn(work(x), x).backward()
    for name in ("encoder.0", "head", "aux.2"):
        mine = torch.cat([p.grad.flatten() for p in work.get_submodule(name).parameters()])
        assert flows[name].grad_norm == pytest.approx(float(mine.norm()), rel=1e-5)
    # the ReLUs of the encoder: the fraction of units zero for every example, by hand
    h = work.encoder[1](work.encoder[0](x))
    dead = float((h <= 0).all(dim=0).float().mean())
    assert flows["encoder.1"].dead_fraction == pytest.approx(dead)


def test_a_function_is_refused() -> None:
    with pytest.raises(InputError, match="needs an nn.Module"):
        run_graph(lambda x: x * 2, (torch.randn(2),), {})


def test_an_input_that_requires_grad_is_a_leaf() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    report = run_graph(model, (x,), {})
    inputs = [n for n in report.nodes if n.kind == "input"]
    assert [(n.label, n.shape) for n in inputs] == [("input", (4, 3))]
    assert x.grad is None


def test_nodes_behind_a_cut_are_marked() -> None:
    """Detach: module a's nodes are drawn (the branch behind the cut) but reach no loss; b's
    do. Checked against torch: a's parameters get no .grad, b's do."""
    model, report = graph_of(CUTS.MODELS["Detach"])
    by_module = {}
    for n in report.nodes:
        by_module.setdefault(n.module, set()).add(n.reaches_loss)
    assert by_module["a"] == {False} and by_module["b"] == {True}
    assert torch_unreached(model, (CUTS.example_inputs(),)) == {"a.weight", "a.bias"}


def test_the_item_round_trip_names_the_ops_of_the_forward() -> None:
    """Item's forward: `self.s(h).mean().item()` (a Mean made in Item.forward) and
    `self.b(h) * scale` (a Mul there): neither is a module's."""
    _, report = graph_of(CUTS.MODELS["Item"])
    (cut,) = report.cuts
    assert (cut.producer_text, cut.consumer_text) == ("Mean in Item.forward", "Mul in Item.forward")
    assert cut.text.startswith(".item() cuts Mean in Item.forward → Mul in Item.forward (")


def test_inputs_are_named_as_the_forward_names_them():
    """An input node is named by the forward's parameter (as `gradtool check` names it:
    `input:z`), a path inside it as Python indexing; keyword inputs by their keyword."""
    from gradcheck_tool.engines.graph import _input_labels

    def forward(x, z, *rest, mask=None):
        return x

    paths = {1: "[0][1]", 2: "[0][0]['a'][0]", 3: "[1]['mask']", 4: "[0][2]"}
    args, kwargs = (0, 0, 0), {"mask": 0}
    assert _input_labels(paths, args, kwargs, forward) == {
        1: "z",
        2: "x['a'][0]",
        3: "mask",
        4: "rest[0]",
    }
    assert _input_labels({1: "[0][1]"}, args, kwargs) == {1: "args[1]"}  # no forward to read

"""The tutorial's sample models: gradtool agrees with hand-computed values and with torch.

Two independent references: numbers worked out by hand (the tutorial's exercise network, the
single sigmoid neuron, the (x + y)·z gate), and `torch.autograd.gradcheck` in float64 on the
same functions.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SAMPLES, check_file, failing
from torch.func import functional_call

from gradcheck_tool.loading import load_target

# ∂f/∂θ for f = σ(σ(x·w1 + b1)·w2 + b2) at x = 1, w1 = 0.5, b1 = 0.1, w2 = −0.3, b2 = 0.2.
EXERCISE = {"w1": -0.0171586, "b1": -0.0171586, "w2": 0.1614125, "b2": 0.2499975}
# σ(w·x + b) at w = (2, −3), b = −3, x = (−1, −2): z = 1, σ'(1) = σ(1)(1 − σ(1)).
_DS = math.exp(-1) / (1 + math.exp(-1)) ** 2
NEURON = {"weight": [-_DS, -2 * _DS], "bias": _DS, "input:x": [2 * _DS, -3 * _DS]}
# f = (x + y)·z at 2, 3, 4.
GATE = {"x": 4.0, "y": 4.0, "z": 5.0}


def engine_gradients(spec) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """gradtool's analytic and central-difference gradients of the file's loss.

    The report lists analytic/numeric values only for failing tensors, so this goes through
    the engine's Problem (the float64 copy and the loss it differentiates): analytic from
    autograd, numeric from (f(θ + h) − f(θ − h)) / 2h at every coordinate, h = 1e-6. The
    report's own rel_error then ties the engine's numeric pass to these values.
    """
    from gradcheck_tool.prepare import Problem, normalize_inputs

    loaded = load_target(str(spec))
    args, kwargs = normalize_inputs(loaded.example_inputs)
    problem = Problem(loaded.obj, args, kwargs, loss_fn=loaded.loss_fn, dtype=torch.float64, seed=0)
    base = {c.name: c.value.detach().clone() for c in problem.checkables}
    leaves = {n: v.clone().requires_grad_(True) for n, v in base.items()}
    with torch.enable_grad():
        loss = problem.terms(leaves)[0]
        grads = torch.autograd.grad(loss, list(leaves.values()))
    analytic = dict(zip(leaves, grads))
    h = 1e-6
    numeric = {}
    with torch.no_grad():
        for name, value in base.items():
            flat = torch.empty(value.numel(), dtype=torch.float64)
            for i in range(value.numel()):
                step = torch.zeros(value.numel(), dtype=value.dtype)
                step[i] = h
                step = step.view(value.shape)
                plus = problem.terms({**base, name: value + step})[0]
                minus = problem.terms({**base, name: value - step})[0]
                flat[i] = (plus - minus) / (2 * h)
            numeric[name] = flat.view(value.shape)
    return analytic, numeric


def assert_matches(expected: dict, got: dict[str, torch.Tensor], atol: float) -> None:
    for name, value in expected.items():
        want = torch.tensor(value, dtype=torch.float64)
        assert torch.allclose(got[name], want, rtol=0, atol=atol), (name, got[name], want)


# --- the exercise network -------------------------------------------------------------------


def test_exercise_net_torch_float64_matches_hand_values():
    params = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for k, v in {"w1": 0.5, "b1": 0.1, "w2": -0.3, "b2": 0.2}.items()
    }
    x = torch.tensor(1.0, dtype=torch.float64)
    f = torch.sigmoid(torch.sigmoid(x * params["w1"] + params["b1"]) * params["w2"] + params["b2"])
    grads = torch.autograd.grad(f, list(params.values()))
    assert_matches(EXERCISE, dict(zip(params, grads)), atol=1e-6)


def test_exercise_net_analytic_and_numeric_match_hand_values():
    analytic, numeric = engine_gradients(SAMPLES / "exercise_net.py")
    assert_matches(EXERCISE, analytic, atol=1e-6)
    assert_matches(EXERCISE, numeric, atol=1e-6)


def test_exercise_net_report():
    # rel_error ≤ 1e-7 ties the engine's own numeric gradient to the analytic one, which
    # matches the hand values above.
    report = check_file(SAMPLES / "exercise_net.py")
    assert report.passed
    assert {r.name for r in report.results} == {"w1", "b1", "w2", "b2", "input:x"}
    for name in EXERCISE:
        result = report.result(name)
        assert result.kind == "parameter"
        assert (result.shape, result.numel, result.checked) == ((), 1, 1)
        assert result.rel_error <= 1e-7 and result.rating == "excellent"
    assert report.result("input:x").kind == "input"


def test_exercise_net_agrees_with_torch_gradcheck():
    loaded = load_target(str(SAMPLES / "exercise_net.py"))
    model = loaded.obj.double()
    names = [n for n, _ in model.named_parameters()]
    x = loaded.example_inputs.double()

    def f(*values):
        return functional_call(model, dict(zip(names, values)), (x,))

    values = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert torch.autograd.gradcheck(f, values, eps=1e-6, atol=1e-8)


# --- single sigmoid neuron and the gate ---------------------------------------------------


def test_sigmoid_neuron_matches_hand_values():
    analytic, numeric = engine_gradients(SAMPLES / "sigmoid_neuron.py")
    assert_matches(NEURON, analytic, atol=1e-6)
    assert_matches(NEURON, numeric, atol=1e-6)
    assert check_file(SAMPLES / "sigmoid_neuron.py").passed


def test_gate_matches_hand_values():
    spec = f"{SAMPLES / 'gate.py'}:gate"
    analytic, numeric = engine_gradients(spec)
    assert_matches(GATE, analytic, atol=1e-6)
    assert_matches(GATE, numeric, atol=1e-6)
    report = check_file(spec)
    assert report.passed
    assert [r.name for r in report.results] == ["x", "y", "z"]
    assert all(r.kind == "input" for r in report.results)


def test_gate_agrees_with_torch_gradcheck():
    loaded = load_target(f"{SAMPLES / 'gate.py'}:gate")
    inputs = tuple(t.double().requires_grad_(True) for t in loaded.example_inputs)
    assert torch.autograd.gradcheck(loaded.obj, inputs)
    (x, y, z) = inputs
    grads = torch.autograd.grad(loaded.obj(x, y, z), inputs)
    assert [g.item() for g in grads] == [4.0, 4.0, 5.0]


# --- custom activation, correct and buggy -------------------------------------------------


@pytest.mark.parametrize(
    "sample, expected_pass", [("custom_activation.py", True), ("custom_activation_buggy.py", False)]
)
def test_custom_activation_verdict_agrees_with_torch_gradcheck(sample, expected_pass):
    loaded = load_target(str(SAMPLES / sample))
    assert loaded.kind == "function"
    x = loaded.example_inputs.double().requires_grad_(True)
    torch_says = torch.autograd.gradcheck(loaded.obj.apply, (x,), raise_exception=False)
    report = check_file(SAMPLES / sample)
    assert torch_says is expected_pass
    assert report.passed is expected_pass
    assert [r.name for r in report.results] == ["x"]
    if not expected_pass:
        result = report.result("x")
        assert result.rating == "bug" and result.rel_error > 1e-3
        assert result.worst and all(w.abs_error > 1e-3 for w in result.worst)


# --- every sample: its documented verdict, and torch agrees --------------------------------

MODULE_SAMPLES = ["exercise_net.py", "sigmoid_neuron.py", "deep_sigmoid_mlp.py"]
MODULE_SAMPLES += ["dead_relu_mlp.py", "small_cnn.py"]


@pytest.mark.parametrize("sample", MODULE_SAMPLES)
def test_module_sample_passes_and_torch_gradcheck_agrees(sample):
    report = check_file(SAMPLES / sample)
    assert report.passed, failing(report)
    assert all(r.checked == r.numel for r in report.results)  # small: every coordinate

    # Reference: torch.autograd.gradcheck of the same loss on a float64 copy.
    loaded = load_target(str(SAMPLES / sample))
    model = loaded.obj.double()
    x = loaded.example_inputs.double()
    names = [n for n, _ in model.named_parameters()]
    probe = model(x)
    projection = torch.randn(probe.shape, generator=torch.Generator().manual_seed(0)).double()

    def loss(*values):
        out = functional_call(model, dict(zip(names, values)), (x,))
        if loaded.loss_fn is not None:
            return loaded.loss_fn(out, x)
        return (out * projection).sum()

    values = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert torch.autograd.gradcheck(loss, values, eps=1e-6, atol=1e-5, rtol=1e-3)


TUTORIAL_SAMPLES = [
    *MODULE_SAMPLES,
    "gate.py",
    "custom_activation.py",
    "custom_activation_buggy.py",
]


@pytest.mark.parametrize("sample", TUTORIAL_SAMPLES)
def test_sample_docstring_says_what_it_shows_and_the_verdict(sample):
    text = (SAMPLES / sample).read_text()
    assert text.startswith('"""'), sample
    assert "Expected verdict" in text, sample
    assert "gradtool check sample_models/" in text, sample


def test_dead_relu_sample_really_has_many_dead_units():
    loaded = load_target(str(SAMPLES / "dead_relu_mlp.py"))
    model, x = loaded.obj, loaded.example_inputs
    with torch.no_grad():
        h1 = torch.relu(model.hidden1(x))
        h2 = torch.relu(model.hidden2(h1))
    dead1 = (h1.amax(0) == 0).float().mean().item()
    dead2 = (h2.amax(0) == 0).float().mean().item()
    assert dead1 >= 0.5 and dead2 >= 0.5
    assert dead1 < 1 and dead2 < 1  # some units alive, so some gradient flows

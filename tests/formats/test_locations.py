"""Source locations: every checked tensor and flow finding points at the line of the user's
code that makes its gradient, checked against line numbers known by hand in
fixtures/located.py (and sample_models/nan_log.py)."""

from __future__ import annotations

import json
import os

import torch
from ci_reports import LOCATED, tensor
from conftest import SAMPLES

import gradcheck_tool.formats.json as fjson
from gradcheck_tool import check, flow, formats
from gradcheck_tool.loading import load_target, scope_for
from gradcheck_tool.locations import (
    def_location,
    is_user_file,
    locate_findings,
    locate_results,
    nearest_functions,
)
from gradcheck_tool.results import Finding

FILE = str(LOCATED)
# the hand-known lines of fixtures/located.py
SQUARE_BACKWARD = 15
WRONG_BACKWARD = 28  # below @staticmethod and @once_differentiable
SCALED_TANH = 33
BLOCK_FORWARD = 42
WITH_FUNCTION_FORWARD = 52
PLAIN_CLASS = 67
STACKED_FORWARD = 81


def sources(name: str, **options) -> dict[str, tuple[int, str]]:
    spec = f"{FILE}:{name}"
    with scope_for(spec):
        loaded = load_target(spec)
        report = check(loaded.obj, loaded.example_inputs, **options)
    for r in report.results:
        assert r.source is not None, r.name
        assert r.source.file == FILE  # absolute
    return {r.name: (r.source.line, r.source.what) for r in report.results}


def test_the_fixture_lines_are_what_the_tests_say():
    lines = LOCATED.read_text().splitlines()
    assert lines[SQUARE_BACKWARD - 1].strip().startswith("def backward")
    assert lines[WRONG_BACKWARD - 1].strip().startswith("def backward")
    assert lines[WRONG_BACKWARD - 2].strip() == "@once_differentiable"
    assert lines[SCALED_TANH - 1].startswith("def scaled_tanh")
    assert lines[BLOCK_FORWARD - 1].strip().startswith("def forward")
    assert lines[PLAIN_CLASS - 1].startswith("class Plain")
    assert lines[STACKED_FORWARD - 1].strip().startswith("def forward")


def test_a_function_points_at_its_backward_def_line_not_a_decorator():
    assert sources("Square") == {"x": (SQUARE_BACKWARD, "Square.backward")}
    assert sources("WrongSquare") == {"x": (WRONG_BACKWARD, "WrongSquare.backward")}


def test_second_order_results_point_at_the_backward_too():
    found = sources("Square", second_order=True)
    assert found["x"] == found["x (2nd order)"] == (SQUARE_BACKWARD, "Square.backward")


def test_a_plain_function_points_at_its_def_line():
    assert sources("scaled_tanh") == {"x": (SCALED_TANH, "scaled_tanh")}


def test_a_function_inside_a_module_is_where_the_gradients_through_it_come_from():
    found = sources("Net")
    wrong = (WRONG_BACKWARD, "WrongSquare.backward")
    # everything before WrongSquare gets its gradient through WrongSquare's backward
    for name in ("block.fc.weight", "seq.0.bias", "inner.proj.weight", "input:x"):
        assert found[name] == wrong, name
    # the stock Linear after it: its user-defined owner's forward
    assert found["inner.head.weight"] == (WITH_FUNCTION_FORWARD, "WithFunction.forward")


def test_stock_layers_point_at_the_nearest_user_module():
    found = sources("Stacked")
    # nn.Linear inside a stock nn.Sequential inside the user's module
    assert found["seq.0.weight"] == (STACKED_FORWARD, "Stacked.forward")
    assert found["block.fc.bias"] == (BLOCK_FORWARD, "Block.forward")  # the owner first
    assert found["input:x"] == (STACKED_FORWARD, "Stacked.forward")


def test_a_user_module_without_its_own_forward_points_at_its_class():
    spec = f"{FILE}:Plain"
    with scope_for(spec):
        loaded = load_target(spec)
        report = check(type(loaded.obj)(torch.nn.Linear(3, 3)), loaded.example_inputs)
    assert {(r.source.line, r.source.what) for r in report.results} == {
        (PLAIN_CLASS, "class Plain")
    }


def test_the_nearest_of_two_functions_wins():
    with scope_for(FILE):
        square = load_target(f"{FILE}:Square").obj
        wrong = load_target(f"{FILE}:WrongSquare").obj
    w = torch.randn(3, requires_grad=True)
    v = torch.randn(3, requires_grad=True)
    out = wrong.apply(square.apply(w) + v)  # w: Square then WrongSquare; v: WrongSquare only
    found = nearest_functions([out], {id(w): "w", id(v): "v"})
    assert (found["w"].line, found["v"].line) == (SQUARE_BACKWARD, WRONG_BACKWARD)


def test_library_code_is_not_the_users():
    assert not is_user_file(torch.nn.modules.linear.__file__)
    assert not is_user_file(formats.__file__)
    assert not is_user_file(os.__file__)
    assert is_user_file(FILE)
    assert def_location(torch.nn.Linear.forward) is None


def test_flow_findings_point_at_the_layers_user_module():
    with scope_for(FILE):
        model = load_target(f"{FILE}:Stacked").obj

    def loss_fn(output, x):
        return output.sum()

    nested = Finding("nan", "(loss)", "m", "f")
    findings = locate_findings(
        [
            Finding("dead_relu", "block.fc", "m", "f", consequences=(nested,)),
            Finding("vanishing", "seq.0", "m", "f"),
            Finding("no_grad", "(model)", "m", "f"),
            Finding("nan", "(inputs)", "m", "f"),
        ],
        model,
        loss_fn,
    )
    lines = [f.source.line if f.source else None for f in findings]
    assert lines == [BLOCK_FORWARD, STACKED_FORWARD, STACKED_FORWARD, None]
    loss_line = loss_fn.__code__.co_firstlineno
    assert findings[0].consequences[0].source.line == loss_line


def test_flow_reports_carry_locations_into_the_json():
    loaded = load_target(str(SAMPLES / "nan_log.py"))
    report = flow(loaded.obj, loaded.example_inputs, loss_fn=loaded.loss_fn)
    (nan,) = report.findings_of("nan")
    # LogCompress.forward in sample_models/nan_log.py
    assert (nan.source.line, nan.source.what) == (15, "LogCompress.forward")
    text = (SAMPLES / "nan_log.py").read_text().splitlines()[14]
    assert text.strip().startswith("def forward")
    assert json.loads(fjson.dumps(report))["findings"][0]["source"]["line"] == 15


def test_check_json_writes_the_location_relative_to_the_working_directory(monkeypatch):
    monkeypatch.chdir(LOCATED.parent.parent.parent.parent)  # the repository
    loaded = load_target(f"{FILE}:WrongSquare")
    report = check(loaded.obj, loaded.example_inputs)
    data = json.loads(fjson.dumps(report))
    assert data["results"][0]["source"] == {
        "file": os.path.join("tests", "formats", "fixtures", "located.py"),
        "line": WRONG_BACKWARD,
        "what": "WrongSquare.backward",
    }


def test_without_the_graph_walk_a_function_still_points_at_its_backward():
    # what an interrupted check gets: api._finished skips the forward the walk needs
    class Problem:
        kind = "function"
        checkables = ()

    with scope_for(FILE):
        Problem.target = load_target(f"{FILE}:Square").obj
    (located,) = locate_results(Problem(), [tensor("x")], walk_graph=False)
    assert located.source.line == SQUARE_BACKWARD


def test_ctrl_c_during_the_graph_walk_keeps_the_verdicts(monkeypatch):
    import gradcheck_tool.locations as locations
    from gradcheck_tool.engines.check import Interrupted

    def stopped(problem):
        raise KeyboardInterrupt

    monkeypatch.setattr(locations, "_graph_sources", stopped)
    with scope_for(FILE):
        loaded = load_target(f"{FILE}:Stacked")
        try:
            check(loaded.obj, loaded.example_inputs)
        except Interrupted as stop:
            report = stop.report
        else:
            raise AssertionError("Ctrl-C was swallowed")
    assert report.interrupted and report.passed is False
    assert all(r.passed for r in report.results)  # every verdict was in
    assert report.result("seq.0.weight").source.line == STACKED_FORWARD  # static locations

"""Monitor in the user's own training loop: flow's report plus a history, the loop's own
gradients, no trace left on the model, training unchanged, one read-back at report time.
"""

from __future__ import annotations

import json

import pytest
import torch
from models import (
    Functional,
    LogOfNegatives,
    SeventyPercentDead,
    batch,
    hook_free,
    monitor_mlp,
)
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as module_hooks

from gradcheck_tool import FlowReport, Monitor, flow


def train(model: nn.Module, steps: int, *, validate: bool = False) -> list[dict]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch(32, 16), torch.arange(32) % 4
    grads = []
    for _ in range(steps):
        with torch.no_grad():  # an independent count of the first ReLU's dead units
            dead = (model[0](x) <= 0).all(dim=0).float().mean().item()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        grads[-1]["dead"] = dead
        opt.step()
        if validate:
            with torch.no_grad():
                model(x)
    return grads


def test_monitor_reports_the_flow_json_plus_history_and_leaves_no_trace() -> None:
    model = monitor_mlp()
    attrs = {id(m): set(vars(m)) for m in model.modules()}
    with Monitor(model, every=3) as mon:
        grads = train(model, 10, validate=True)
    report = mon.report()
    assert hook_free(model)
    assert all(set(vars(m)) == attrs[id(m)] for m in model.modules())
    assert report["source"] == "monitor" and report["command"] == "flow"
    assert report["steps_seen"] == 10  # the no_grad validation calls are not steps
    assert [h["step"] for h in report["history"]] == [1, 4, 7, 10]
    flow_keys = set(flow(monitor_mlp(), batch(32, 16)).to_dict())
    assert flow_keys <= set(report)
    # the recorded gradient norms are the loop's own gradients at those steps
    for h in report["history"]:
        g = grads[h["step"] - 1]
        expected = torch.sqrt(g["2.weight"].pow(2).sum() + g["2.bias"].pow(2).sum()).item()
        assert h["rows"]["2"]["grad_norm"] == pytest.approx(expected, rel=1e-5)
        assert h["rows"]["1"]["dead_fraction"] == pytest.approx(g["dead"])
    json.dumps(report, allow_nan=False)


def test_monitor_does_not_change_training() -> None:
    watched, plain = monitor_mlp(), monitor_mlp()
    with Monitor(watched, every=1):
        train(watched, 5)
    train(plain, 5)
    for a, b in zip(watched.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_monitor_hooks_are_off_on_steps_it_does_not_record() -> None:
    seen: list[int] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(
                len(self._forward_hooks)
                + len(self._forward_pre_hooks)
                + len(module_hooks._global_forward_hooks)
                + len(module_hooks._global_forward_pre_hooks)
            )
            return x

    model = nn.Sequential(nn.Linear(16, 4), Probe())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, every=3):
        for _ in range(7):
            opt.zero_grad()
            model(batch(4, 16)).pow(2).sum().backward()
            opt.step()
    assert [n > 0 for n in seen] == [True, False, False, True, False, False, True]


def test_monitor_reads_back_once_at_report_not_during_training(monkeypatch) -> None:
    calls = {"tolist": 0, "item": 0}
    real_tolist, real_item = torch.Tensor.tolist, torch.Tensor.item

    def tolist(self):  # noqa: ANN001, ANN202
        calls["tolist"] += 1
        return real_tolist(self)

    def item(self):  # noqa: ANN001, ANN202
        calls["item"] += 1
        return real_item(self)

    model = monitor_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch(32, 16), torch.arange(32) % 4
    with Monitor(model, every=1) as mon:
        monkeypatch.setattr(torch.Tensor, "tolist", tolist)
        monkeypatch.setattr(torch.Tensor, "item", item)
        for _ in range(6):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        during = dict(calls)
        report = mon.report()
    assert during == {"tolist": 0, "item": 0}
    assert calls == {"tolist": 1, "item": 0}  # one transfer for all six recorded steps
    assert report["steps"] == 6


def test_monitor_finds_dead_relus_and_survives_an_exception_in_the_loop() -> None:
    model = SeventyPercentDead()
    with pytest.raises(RuntimeError, match="user stops"):
        with Monitor(model) as mon:
            model(batch(32, 16)).sum().backward()
            raise RuntimeError("user stops")
    assert hook_free(model)
    report = mon.flow_report()
    assert isinstance(report, FlowReport)
    (finding,) = report.findings_of("dead_relu")
    assert finding.layer == "act" and finding.value == pytest.approx(0.7)


def test_monitor_cleans_up_when_the_forward_raises() -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("boom")

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Fails())
    with pytest.raises(ValueError):
        with Monitor(model):
            model(batch(2, 4))
    assert hook_free(model)
    assert not torch._C._is_torch_function_mode_enabled()


def test_monitor_sees_functional_activations_and_the_first_nan() -> None:
    model = LogOfNegatives()
    with Monitor(model, every=1) as mon:
        model(batch(8, 8)).sum().backward()
    report = mon.flow_report()
    (finding,) = report.findings_of("nan")
    assert finding.layer == "logb"

    model = Functional()
    with Monitor(model) as mon:
        model(batch(16, 6)).sum().backward()
    rows = [r for r in mon.flow_report().layers if r.kind == "activation"]
    assert [r.via for r in rows] == ["F.relu", "torch.sigmoid", "F.gelu", "Tensor.relu"]

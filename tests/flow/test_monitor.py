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
from gradcheck_tool.engines.flow.samples import UpdateStatus


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


# --- the optimizer steps (optim_watch.py): hooks, zero_grad, updates ----------------------


def optimizer_hooks() -> int:
    from torch.optim import optimizer as optim_hooks

    return len(optim_hooks._global_optimizer_pre_hooks) + len(
        optim_hooks._global_optimizer_post_hooks
    )


def small_loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    *,
    zero: str = "set_to_none",
    micro: int = 1,
) -> None:
    """`steps` optimizer steps of `micro` backward calls each, zeroing as `zero` says."""
    x, y = batch(8 * micro, 16), torch.arange(8 * micro) % 4
    for _ in range(steps):
        for j in range(micro):
            out = model(x[j * 8 : (j + 1) * 8])
            if zero == "after_forward":
                opt.zero_grad()
            F.cross_entropy(out, y[j * 8 : (j + 1) * 8]).backward()
        opt.step()
        if zero == "set_to_none":
            opt.zero_grad()
        elif zero == "in_place":
            opt.zero_grad(set_to_none=False)
        elif zero == "model":
            model.zero_grad()
        elif zero == "data":  # the old idiom: zeroes without bumping the version counter
            for p in model.parameters():
                p.grad.data.zero_()


def test_optimizer_hooks_are_on_only_inside_the_block_even_when_the_loop_raises() -> None:
    model = monitor_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = optimizer_hooks()
    params_dict = [dict(vars(p)) for p in model.parameters()]
    with Monitor(model):
        assert optimizer_hooks() == before + 2
        small_loop(model, opt, 2)
    assert optimizer_hooks() == before and hook_free(model)
    with pytest.raises(RuntimeError, match="user stops"):
        with Monitor(model):
            small_loop(model, opt, 1)
            model(batch(8, 16)).sum().backward()
            raise RuntimeError("user stops")
    assert optimizer_hooks() == before and hook_free(model)
    assert [dict(vars(p)) for p in model.parameters()] == params_dict


@pytest.mark.parametrize(
    ("zero", "micro", "every", "found"),
    [
        ("never", 1, 1, True),
        ("never", 1, 3, True),
        ("never", 4, 3, True),
        ("set_to_none", 1, 1, False),
        ("in_place", 1, 1, False),
        ("model", 1, 1, False),
        ("data", 1, 1, False),
        ("after_forward", 1, 1, False),
        ("set_to_none", 4, 1, False),  # accumulation over 4 micro-batches
        ("set_to_none", 4, 3, False),
    ],
)
def test_grad_not_zeroed_only_when_gradients_pile_up_across_steps(
    zero: str, micro: int, every: int, found: bool
) -> None:
    model = monitor_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Monitor(model, every=every) as mon:
        small_loop(model, opt, 6, zero=zero, micro=micro)
    kinds = mon.flow_report().kinds
    assert ("grad_not_zeroed" in kinds) is found, kinds
    assert "not_updated" not in kinds


def test_update_ratios_are_the_steps_own_and_only_after_recorded_steps() -> None:
    model = monitor_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = batch(8, 16), torch.arange(8) % 4
    expected = []
    with Monitor(model, every=2) as mon:
        for _ in range(5):
            before = [p.detach().clone() for p in model[2].parameters()]
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            delta = sum((p - b).pow(2).sum() for p, b in zip(model[2].parameters(), before))
            norm = sum(b.pow(2).sum() for b in before)
            expected.append((delta / norm).sqrt().item())
    report = mon.flow_report()
    assert [h.step for h in report.history] == [1, 3, 5]
    for h in report.history:
        assert h.row("2").update_ratio == pytest.approx(expected[h.step - 1], rel=1e-4)
    assert report.layers[0].update_ratio is not None  # the last step's rows carry it too
    assert mon.report()["layers"][0]["update_ratio"] == report.layers[0].update_ratio


def test_two_optimizers_on_one_model_and_one_on_another_model() -> None:
    model, other = monitor_mlp(), nn.Linear(16, 4)
    head = torch.optim.SGD(model[4].parameters(), lr=0.1)
    body = torch.optim.Adam([*model[0].parameters(), *model[2].parameters()], lr=1e-3)
    unrelated = torch.optim.SGD(other.parameters(), lr=0.1)
    x, y = batch(8, 16), torch.arange(8) % 4
    with Monitor(model) as mon:
        for _ in range(4):
            head.zero_grad()
            body.zero_grad()
            F.cross_entropy(model(x), y).backward()
            other(x).sum().backward()  # never zeroed, but not the watched model's
            head.step()
            body.step()
            unrelated.step()
    report = mon.flow_report()
    assert report.findings == ()
    assert {k for k, v in report.history[0].rows if v.update_ratio} == {"0", "2", "4"}

    # only the head's optimizer zeroes: the body's gradients pile up
    with Monitor(model) as mon:
        for _ in range(4):
            head.zero_grad()
            F.cross_entropy(model(x), y).backward()
            head.step()
            body.step()
    (finding,) = mon.flow_report().findings_of("grad_not_zeroed")
    assert finding.layer == "0" and "in 0, 2 (4 parameters)" in finding.message


def test_parameters_the_steps_never_move_are_named_with_the_reason() -> None:
    model = monitor_mlp()
    opt = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.0}],
        lr=0.1,
    )
    model[0].weight.requires_grad_(False)  # frozen on purpose: not a finding
    with Monitor(model) as mon:
        small_loop(model, opt, 3)
    found = {f.layer: f for f in mon.flow_report().findings_of("not_updated")}
    assert set(found) == {"2", "4"}
    assert "in param group 1, whose learning rate is 0" in found["2"].message
    assert "in no optimizer's param groups" in found["4"].message
    assert dict(found["2"].evidence)["lr"] == 0.0


def test_a_learning_rate_too_high_names_the_optimizer_and_lr() -> None:
    model = monitor_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    with Monitor(model) as mon:
        small_loop(model, opt, 6)
    (finding,) = mon.flow_report().findings_of("update_too_large")
    assert "(sgd, lr 5)" in finding.message
    assert finding.threshold == 0.2 and dict(finding.evidence)["steps seen"] == 6


@pytest.mark.parametrize(
    ("set_to_none", "why"),
    [(True, "no .grad left when the optimizer stepped"), (False, "unchanged by the optimizer")],
)
def test_zeroing_between_backward_and_step_is_not_updated(set_to_none: bool, why: str) -> None:
    model = monitor_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch(8, 16), torch.arange(8) % 4
    with Monitor(model) as mon:
        for _ in range(3):
            F.cross_entropy(model(x), y).backward()
            opt.zero_grad(set_to_none=set_to_none)  # one line too early
            opt.step()
    (found,) = mon.flow_report().findings_of("not_updated")  # one finding per reason
    assert found.layer == "0" and why in found.message
    assert "6 parameters in 3 layers (0, 2, 4) receive gradients" in found.message


def test_updates_survive_the_periodic_read_back() -> None:
    model = monitor_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, flush_every=2) as mon:
        small_loop(model, opt, 7)
    history = mon.flow_report().history
    assert len(history) == 7 and all(h.row("2").update_ratio for h in history)


def test_the_readme_example_of_a_forgotten_zero_grad_prints_its_finding(capsys) -> None:
    """examples/monitor_forgot_zero_grad.py, as the README runs it: Monitor.print_report()
    prints the table and names the bug first."""
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "monitor_forgot_zero_grad.py"
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert "findings (1)" in out and "grad_not_zeroed" in out
    assert "gradients are never zeroed" in out and "evidence:" in out
    assert "…" not in out


def test_a_layer_used_without_being_called_gets_its_gradient_read() -> None:
    """nn.MultiheadAttention reads out_proj.weight directly, never calling out_proj: the
    Monitor must still see its gradient (it reported `no_grad`, 'its module never ran')."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    model = nn.Sequential(nn.Embedding(50, 32), nn.TransformerEncoder(layer, 2))
    tokens = torch.randint(0, 50, (8, 6))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Monitor(model) as mon:
        for _ in range(2):
            opt.zero_grad()
            model(tokens).pow(2).mean().backward()
            opt.step()
    report = mon.flow_report()
    assert "no_grad" not in report.kinds, report.findings
    row = report.row("1.layers.0.self_attn.out_proj")
    assert row.grad_norm is not None and row.grad_norm > 0


@pytest.mark.parametrize("kind", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("zero", [True, False])
def test_closure_steps_are_measured_not_judged_before_the_closure(kind: str, zero: bool) -> None:
    """opt.zero_grad(); opt.step(closure): the gradient exists only once the closure's
    backward ran, inside the step (it was once "no .grad left when the optimizer stepped")."""
    model = monitor_mlp()
    make = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
        "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
        "lbfgs": lambda p: torch.optim.LBFGS(p, lr=0.05, max_iter=3),
    }
    opt = make[kind](model.parameters())
    x, y = batch(16, 16), torch.arange(16) % 4

    def closure() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with Monitor(model) as mon:
        for _ in range(5):
            if zero:
                opt.zero_grad()
            opt.step(closure)
    report = mon.flow_report()
    if zero:
        assert report.findings == ()
    else:  # a closure that never zeroes is still a loop that never zeroes
        assert "grad_not_zeroed" in report.kinds and "not_updated" not in report.kinds
    measured = [h for h in report.history if h.row("2").update_ratio]
    assert len(measured) == 5  # every optimizer step, after the call its closure made last


@pytest.mark.parametrize("every", [1, 2, 3])
@pytest.mark.parametrize("zero", [True, False])
def test_grad_not_zeroed_when_the_model_is_called_twice_per_step(every: int, zero: bool) -> None:
    """Siamese views: two calls of the model, one backward, one optimizer step. The check is
    at the first backward after the optimizer step, whichever call it follows."""
    model = monitor_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x1 = batch(16, 16)
    x2 = x1 + 0.1 * batch(16, 16)
    with Monitor(model, every=every) as mon:
        for _ in range(8):
            if zero:
                opt.zero_grad()
            a, b = model(x1), model(x2)
            (-F.cosine_similarity(a, b).mean()).backward()
            opt.step()
    kinds = mon.flow_report().kinds
    assert ("grad_not_zeroed" in kinds) is not zero, kinds
    assert "not_updated" not in kinds


def test_an_update_below_the_dtypes_resolution_is_not_a_parameter_left_unchanged() -> None:
    """A conv bias before BatchNorm gets a gradient ~1e-8 (the norm cancels it): lr·g is far
    below the resolution of the bias in float32, so SGD leaves it unchanged. It learns what
    it can: not a not_updated warning."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)
    )
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    model(x)  # the lazy layer's shape
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Monitor(model) as mon:
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            with torch.no_grad():  # the gradient BatchNorm leaves the bias: below resolution
                model[0].bias.grad.mul_(1e-9)
            opt.step()
    report = mon.flow_report()
    assert "not_updated" not in report.kinds
    statuses = {s.param_updates.get("0.bias", (None,))[0] for s in mon._samples}
    assert statuses == {UpdateStatus.BELOW_RESOLUTION}


def test_one_not_updated_finding_per_reason_naming_its_layers() -> None:
    model = monitor_mlp()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)  # 2 and 4 left out
    with Monitor(model) as mon:
        small_loop(model, opt, 3)
    (found,) = mon.flow_report().findings_of("not_updated")
    assert found.layer == "2" and found.key is None
    assert found.message.startswith("4 parameters in 2 layers (2, 4) receive gradients")
    assert dict(found.evidence)["layers"] == 2.0


@pytest.mark.parametrize("when", ["after_backward", "after_step"])
def test_report_inside_the_loop_loses_no_optimizer_step(when: str) -> None:
    """report() at every step (logging) must find what one report at the end finds."""
    found = {}
    for log in (False, True):
        model = monitor_mlp()
        opt = torch.optim.SGD([*model[0].parameters(), *model[2].parameters()], lr=0.01)
        x, y = batch(8, 16), torch.arange(8) % 4
        with Monitor(model) as mon:
            for _ in range(6):  # never zeroed, and the head is in no param group
                F.cross_entropy(model(x), y).backward()
                if log and when == "after_backward":
                    mon.report()
                opt.step()
                if log and when == "after_step":
                    mon.report()
        report = mon.flow_report()
        found[log] = set(report.kinds)
        assert all(h.row("0").update_ratio for h in report.history[:-1])
    assert found[True] == found[False] >= {"grad_not_zeroed", "not_updated"}


def test_flow_on_the_monitored_model_inside_the_block() -> None:
    """flow() deep-copies the model: the copy must not drag the Monitor along (its hook
    once made the copy fail, blaming the model)."""
    import copy

    model = monitor_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = batch(8, 16), torch.arange(8) % 4
    with Monitor(model) as mon:
        small_loop(model, opt, 2)
        report = flow(model, (x,), loss_fn=lambda out, _x: F.cross_entropy(out, y), steps=2)
        twin = copy.deepcopy(model)
        F.cross_entropy(twin(x), y).backward()  # the copy's hook does nothing
        small_loop(model, opt, 1)
    assert isinstance(report, FlowReport) and mon.steps_seen == 3
    assert hook_free(model) and mon.flow_report().findings == ()


def test_a_lazy_model_entered_before_its_first_forward() -> None:
    """LazyLinear shapes its parameters in the first forward: a hook on the gradient node of
    the uninitialized parameter once broke the user's backward (expected shape [0])."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyLinear(32), nn.ReLU(), nn.LazyLinear(4))
    with Monitor(model) as mon:
        model(batch(8, 16))  # the first forward: shapes the parameters
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        small_loop(model, opt, 3)
    report = mon.flow_report()
    assert hook_free(model) and report.warnings == () and report.findings == ()
    assert report.history[-1].row("2").grad_norm


def test_another_models_optimizer_step_does_not_cancel_the_zeroing_check() -> None:
    """A GAN monitored on its generator, every=2: the discriminator's optimizer steps between
    the generator's step and its next backward, which is still checked."""
    gen, disc = monitor_mlp(), nn.Linear(4, 1)
    opt_g = torch.optim.SGD(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.SGD(disc.parameters(), lr=1e-3)
    with Monitor(gen, every=2) as mon:
        for _ in range(8):
            opt_d.zero_grad()
            disc(gen(batch(8, 16)).detach()).mean().backward()
            opt_d.step()
            disc(gen(batch(8, 16))).mean().backward()  # the generator's never zeroed
            opt_g.step()
    assert "grad_not_zeroed" in mon.flow_report().kinds


def test_gradscaler_overflow_steps_are_no_nan_finding() -> None:
    """fp16 autocast with a GradScaler whose first scales overflow: the scaler skips those
    optimizer steps by design and training goes on; the Monitor says so, without a finding."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    with Monitor(model) as mon:
        for _ in range(30):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    report = mon.flow_report()
    assert report.findings == (), report.findings
    assert any("no optimizer applied" in w for w in report.warnings), report.warnings
    assert scaler.get_scale() < 2.0**40  # the scaler did skip overflowing steps


def test_optimizer_records_are_not_kept_once_applied() -> None:
    """Each record holds a per-parameter table: a long run that reports now and then must
    not keep one per recorded step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    with Monitor(model) as mon:
        for step in range(30):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if step % 10 == 9:
                mon.report()
        assert len(mon._watch.records) <= 2  # the current step's, and the one it may await
    assert mon.flow_report().steps == 30

"""The findings registry: each rule on hand-built step samples (no model), the registry's
order, and everything derived from it (FINDING_KINDS, --fail-on, styles, the plot's marks)."""

from __future__ import annotations

import math
import textwrap

import pytest

from gradcheck_tool.engines.flow import findings
from gradcheck_tool.engines.flow.findings import (
    FINDING_KINDS,
    RULES,
    Detection,
    Evidence,
    FindingRule,
    Severity,
    dead_relu,
    detect_findings,
    exploding,
    grad_not_zeroed,
    nan,
    no_grad,
    not_updated,
    parse_fail_on,
    saturation,
    update_too_large,
    update_too_small,
    vanishing,
)
from gradcheck_tool.engines.flow.samples import NanSite, StepSample, UpdateStatus
from gradcheck_tool.engines.flow.thresholds import FlowThresholds
from gradcheck_tool.errors import InputError
from gradcheck_tool.formats.flow_table import kind_style
from gradcheck_tool.results import FlowReport, LayerStats

TH = FlowThresholds()


def layer(name: str, grad_norm: float | None, order: int = 0, **kw) -> LayerStats:
    kw.setdefault("numel", 100)
    return LayerStats(name, "Linear", "layer", name, order, grad_norm=grad_norm, **kw)


def stack(*grad_norms: float, **kw) -> list[LayerStats]:
    """fc0, fc1, ... in forward order: fc0 is nearest the input."""
    return [layer(f"fc{i}", g, order=i, **kw) for i, g in enumerate(grad_norms)]


def act(name: str, order: int = 0, **kw) -> LayerStats:
    kw.setdefault("units", 10)
    kw.setdefault("unit", "feature")
    return LayerStats(name, kw.pop("type", "ReLU"), "activation", name, order, **kw)


def sample(rows: list[LayerStats], step: int = 1, **kw) -> StepSample:
    return StepSample(step, kw.pop("loss", None), rows, kw.pop("nan", None), **kw)


def evidence(*samples: StepSample, batch: int | None = None, th: FlowThresholds = TH, keys=None):
    keys = {r.key for s in samples for r in s.rows} if keys is None else keys
    return Evidence(samples, th, batch, keys)


def found(rule: FindingRule, ev: Evidence) -> list:
    return rule.findings(ev)


# --- vanishing ---------------------------------------------------------------------------


def test_vanishing_fires_below_its_ratio_and_points_at_the_first_layer() -> None:
    (f,) = found(vanishing.RULE, evidence(sample(stack(1e-5, 1e-3, 1e-1, 1.0))))
    assert f.kind == "vanishing" and f.layer == "fc0" and f.key == "fc0"
    assert f.message == (
        "gradients vanish toward the input: the RMS gradient of fc0 is 1.0e-05× that of fc3"
    )
    assert f.value == pytest.approx(1e-5)
    assert f.fix == vanishing.FIX


def test_vanishing_is_silent_above_its_ratio_after_a_nan_and_on_one_layer() -> None:
    assert found(vanishing.RULE, evidence(sample(stack(1e-2, 1.0)))) == []
    site = NanSite("forward", "fc1", "boom")
    assert found(vanishing.RULE, evidence(sample(stack(1e-5, 1.0), nan=site))) == []
    assert found(vanishing.RULE, evidence(sample(stack(1e-5)))) == []
    # frozen layers and rows outside the compared keys do not count
    rows = stack(1e-5, 1.0)
    assert found(vanishing.RULE, evidence(sample(rows), keys={"fc1"})) == []
    frozen = [layer("fc0", 1e-5, frozen=True), layer("fc1", 1.0, order=1)]
    assert found(vanishing.RULE, evidence(sample(frozen))) == []


def test_vanishing_names_the_first_quarter_when_there_are_many_layers() -> None:
    (f,) = found(vanishing.RULE, evidence(sample(stack(1e-6, 1e-6, 1, 1, 1, 1, 1, 1))))
    assert "the RMS gradient of the first 2 layers (fc0, fc1) is 1.0e-06× that of the last 2" in (
        f.message
    )


# --- exploding: the first of its checks that fires -----------------------------------------


def test_exploding_fires_on_the_weight_gradient_ratio() -> None:
    (f,) = found(exploding.RULE, evidence(sample(stack(1e4, 1.0, 1.0, 1.0))))
    assert (f.kind, f.layer, f.value) == ("exploding", "fc0", pytest.approx(1e4))
    assert f.message == (
        "gradients grow toward the input: the RMS gradient of fc0 is 1.0e+04× that of fc3"
    )
    assert f.fix == exploding.FIX
    assert found(exploding.RULE, evidence(sample(stack(1e2, 1.0)))) == []


def test_exploding_fires_on_a_growing_backward_signal() -> None:
    rows = [
        layer(f"fc{i}", 1.0, order=i, output_grad_norm=g, output_numel=100)
        for i, g in enumerate((1e4, 1.0, 1.0, 1.0))
    ]
    (f,) = found(exploding.RULE, evidence(sample(rows)))
    assert f.message == (
        "the gradient flowing backward grows toward the input: at the output of fc0 it is "
        "1.0e+04× (RMS) what it is at the output of fc3"
    )
    calm = [layer(r.name, 1.0, r.order, output_grad_norm=1.0, output_numel=100) for r in rows]
    assert found(exploding.RULE, evidence(sample(calm))) == []


def test_exploding_fires_on_an_overflowing_norm() -> None:
    (f,) = found(exploding.RULE, evidence(sample([layer("fc0", 1.0), layer("big", math.inf)])))
    assert f.layer == "big" and f.value == math.inf
    assert (
        f.message
        == "the gradient norm of big overflows to inf (its entries are finite but enormous)"
    )


def test_exploding_fires_on_a_huge_gain_over_the_loss_gradient() -> None:
    rows = [layer("fc0", 1e7), layer("fc1", 2e6), layer("fc2", 10.0)]
    (f,) = found(exploding.RULE, evidence(sample(rows, loss_grad=1.0), keys=set()))
    assert f.layer == "fc0" and f.value == pytest.approx(1e7)
    assert f.message == (
        "huge gradients: fc0's gradient norm 1.00e+07 is 1.0e+07× the loss's gradient at the "
        "model output (2 layer(s) above 1e+06×)"
    )
    small = [layer("fc0", 1e5)]
    assert found(exploding.RULE, evidence(sample(small, loss_grad=1.0), keys=set())) == []


def test_exploding_fires_on_growth_over_steps() -> None:
    first = sample([layer("fc0", 1.0), layer("fc1", 1.0)], step=1)
    last = sample([layer("fc0", 1e4), layer("fc1", 2.0)], step=5)
    (f,) = found(exploding.RULE, evidence(first, last, keys=set()))
    assert (f.layer, f.step, f.value) == ("fc0", 5, pytest.approx(1e4))
    assert f.message == (
        "gradients explode during training: fc0's gradient norm grew 1.0e+04× from step 1 to "
        "step 5 at step 5"
    )
    calm = sample([layer("fc0", 10.0), layer("fc1", 2.0)], step=5)
    assert found(exploding.RULE, evidence(first, calm, keys=set())) == []


def test_exploding_reports_only_its_first_check_that_fires() -> None:
    rows = [*stack(1e4, 1.0), layer("big", math.inf, order=9)]
    (f,) = found(exploding.RULE, evidence(sample(rows), keys={"fc0", "fc1"}))
    assert f.message.startswith("gradients grow toward the input")


def test_vanishing_and_exploding_are_independent_rules() -> None:
    # vanishing from the weight matrices, exploding from an overflow elsewhere: both, as before
    rows = [*stack(1e-5, 1.0), layer("big", math.inf, order=9)]
    ev = evidence(sample(rows), keys={"fc0", "fc1"})
    assert [f.kind for f in detect_findings(ev.samples, TH, None, ev.comparable_keys)] == [
        "exploding",
        "vanishing",
    ]


# --- dead units, saturation -----------------------------------------------------------------


def test_dead_relu_fires_above_its_fraction_with_the_batch_and_the_trend() -> None:
    (f,) = found(dead_relu.RULE, evidence(sample([act("relu", dead_fraction=0.7)]), batch=8))
    assert (f.kind, f.layer, f.key, f.value) == ("dead_relu", "relu", "relu", 0.7)
    assert f.message == "70.0% of the 10 features of relu are dead: zero for all 8 examples"
    assert f.fix == dead_relu.FIX
    before = sample([act("relu", dead_fraction=0.1)], step=1)
    after = sample([act("relu", dead_fraction=0.7)], step=3)
    (f,) = found(dead_relu.RULE, evidence(before, after))
    assert f.message == (
        "70.0% of the 10 features of relu are dead: zero for every example at step 3 "
        "(was 10.0% at step 1)"
    )
    assert f.step == 3


def test_dead_relu_is_silent_at_or_below_its_fraction() -> None:
    rows = [act("a", dead_fraction=0.5), act("b", inactive_fraction=0.9), layer("fc", 1.0)]
    assert found(dead_relu.RULE, evidence(sample(rows))) == []


def test_saturation_fires_above_its_fraction() -> None:
    rows = [act("squash", type="Tanh", saturated_fraction=0.9), act("ok", saturated_fraction=0.4)]
    (f,) = found(saturation.RULE, evidence(sample(rows)))
    assert (f.kind, f.layer, f.value) == ("saturation", "squash", 0.9)
    assert f.message == (
        "90.0% of the outputs of squash (Tanh) sit within 1% of an asymptote, where almost no "
        "gradient passes"
    )
    strict = FlowThresholds(saturated_fraction=0.95)
    assert found(saturation.RULE, evidence(sample(rows), th=strict)) == []


# --- no gradient, NaN -----------------------------------------------------------------------


def test_no_grad_names_the_parameters_and_why() -> None:
    missing = [
        ("fc", ["fc.weight"], "not reached by backward"),
        ("", ["scale", "shift"], "gradient exactly zero on this batch"),
    ]
    one, two = found(no_grad.RULE, evidence(sample([], no_grad=missing)))
    assert one.message == "fc.weight receives no gradient: not reached by backward"
    assert (one.key, two.key) == ("fc", "(model)")
    assert two.message == "scale, shift receive no gradient: gradient exactly zero on this batch"
    assert found(no_grad.RULE, evidence(sample([]))) == []


@pytest.mark.parametrize("where", ["forward", "backward", "loss", "inputs"])
def test_nan_reports_the_first_step_with_a_non_finite_value(where: str) -> None:
    site = NanSite(where, "fc1", "fc1 made NaN")
    clean, bad = sample([], step=1), sample([], step=2, nan=site)
    (f,) = found(nan.RULE, evidence(clean, bad, sample([], step=3, nan=NanSite("loss", "x", "y"))))
    assert (f.kind, f.layer, f.key, f.step, f.where) == ("nan", "fc1", "fc1", 2, where)
    assert f.message == "fc1 made NaN at step 2"
    assert f.fix == nan.FIXES[where if where in ("backward", "inputs") else ""]
    assert found(nan.RULE, evidence(clean)) == []


# --- the registry and what derives from it ------------------------------------------------


def test_registry_order_is_the_panel_order() -> None:
    assert FINDING_KINDS == (
        "nan",
        "grad_not_zeroed",
        "not_updated",
        "exploding",
        "vanishing",
        "update_too_large",
        "update_too_small",
        "dead_relu",
        "saturation",
        "no_grad",
    )
    assert findings.finding_kinds() == FINDING_KINDS == tuple(r.kind for r in RULES)
    rows = [act("relu", dead_fraction=0.9), act("tanh", saturated_fraction=0.9)]
    last = sample(rows, nan=NanSite("forward", "fc", "m"), no_grad=[("fc", ["fc.w"], "why")])
    out = detect_findings([last], TH, None, set())
    assert [f.kind for f in out] == ["nan", "dead_relu", "saturation", "no_grad"]
    assert FlowReport("m", "0", (), tuple(out)).kinds == (
        "nan",
        "dead_relu",
        "saturation",
        "no_grad",
    )


def test_styles_fail_on_and_plot_marks_come_from_the_rules() -> None:
    # the styles the table and panel had before the registry, now from each rule's severity
    assert {k: kind_style(k) for k in FINDING_KINDS} == {
        "nan": "bold red",
        "grad_not_zeroed": "bold red",
        "not_updated": "yellow",
        "exploding": "bold red",
        "vanishing": "yellow",
        "update_too_large": "yellow",
        "update_too_small": "yellow",
        "dead_relu": "yellow",
        "saturation": "yellow",
        "no_grad": "magenta",
    }
    assert kind_style("no_such_kind") == ""
    assert parse_fail_on("all") == set(FINDING_KINDS)
    assert parse_fail_on("NaN, exploding") == {"nan", "exploding"}
    with pytest.raises(InputError) as err:
        parse_fail_on("nan,boom")
    assert "boom" in str(err.value) and ", ".join(FINDING_KINDS) in err.value.hint
    assert {r.kind for r in RULES if r.marks_layer_gradient} == {"nan", "exploding", "vanishing"}


def test_a_registered_rule_is_a_kind_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    def detect(ev: Evidence):
        if ev.last.loss is not None and ev.last.loss > 1e6:
            yield Detection("(loss)", f"the loss is {ev.last.loss:.2e}", step=ev.last.step)

    rule = FindingRule("huge_loss", Severity.WARNING, {"": "Scale the targets."}, detect)
    monkeypatch.setattr(findings, "RULES", (*RULES[:3], rule, *RULES[3:]))
    assert findings.finding_kinds()[3] == "huge_loss"
    assert parse_fail_on("huge_loss") == {"huge_loss"}
    assert "huge_loss" in parse_fail_on("all")
    assert kind_style("huge_loss") == "yellow"
    rows = [act("relu", dead_fraction=0.9)]
    out = detect_findings([sample(rows, loss=3e7)], TH, None, set())
    assert [(f.kind, f.message, f.fix) for f in out] == [
        ("huge_loss", "the loss is 3.00e+07", "Scale the targets."),
        ("dead_relu", out[1].message, dead_relu.FIX),
    ]
    assert FlowReport("m", "0", (), tuple(out)).kinds == ("huge_loss", "dead_relu")


def test_a_rule_needs_a_default_fix() -> None:
    with pytest.raises(ValueError, match="default fix"):
        FindingRule("x", Severity.NOTICE, {"backward": "..."}, lambda ev: [])


def test_the_worked_example_in_the_registry_docstring_runs() -> None:
    doc = findings.__doc__
    start = doc.index('    """huge_loss')
    code = textwrap.dedent(doc[start : doc.index("and one line here")])
    scope = {"__name__": "gradcheck_tool.engines.flow.findings.huge_loss"}
    scope["__package__"] = "gradcheck_tool.engines.flow.findings"
    exec(compile(code, "huge_loss.py", "exec"), scope)
    rule = scope["RULE"]
    (f,) = rule.findings(evidence(sample([], loss=5e6, step=2)))
    assert (f.kind, f.layer, f.step, f.value) == ("huge_loss", "(loss)", 2, 5e6)
    assert rule.findings(evidence(sample([], loss=1.0))) == []


# --- training-loop bugs seen through the optimizer steps ----------------------------------


def two_layers() -> list[LayerStats]:
    return [
        layer("fc0", 1.0, order=0, params=("fc0.weight", "fc0.bias")),
        layer("fc1", 1.0, order=1, params=("fc1.weight", "fc1.bias")),
    ]


def test_grad_not_zeroed_fires_when_most_checked_steps_added_to_the_last_gradient() -> None:
    stale = ["fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias"]
    steps = [sample(two_layers(), step=1)]  # the first step follows no optimizer step
    steps += [sample(two_layers(), step=s, zeroing_checked=4, stale_grads=stale) for s in (2, 3)]
    (f,) = found(grad_not_zeroed.RULE, evidence(*steps))
    assert (f.kind, f.layer, f.step, f.value) == ("grad_not_zeroed", "", 2, 1.0)
    assert f.message.startswith("gradients are never zeroed: at 2 of 2 checked steps")
    assert "in every layer (4 parameters)" in f.message
    assert dict(f.evidence) == {
        "steps with stale gradients": 2.0,
        "steps checked": 2.0,
        "parameters": 4.0,
    }
    assert f.threshold == TH.grad_not_zeroed_fraction and f.fix == grad_not_zeroed.FIX
    # one layer's optimizer never zeroes: that layer is named
    steps = [
        sample(two_layers(), step=s, zeroing_checked=4, stale_grads=["fc1.weight"]) for s in (2, 3)
    ]
    (f,) = found(grad_not_zeroed.RULE, evidence(*steps))
    assert (f.layer, f.key) == ("fc1", "fc1") and "in fc1 (1 parameters)" in f.message


def test_grad_not_zeroed_is_silent_on_zeroed_steps_and_rare_stale_ones() -> None:
    clean = [sample(two_layers(), step=s, zeroing_checked=4) for s in (2, 3, 4)]
    assert found(grad_not_zeroed.RULE, evidence(*clean)) == []
    once = [*clean, sample(two_layers(), step=5, zeroing_checked=4, stale_grads=["fc0.bias"])]
    assert found(grad_not_zeroed.RULE, evidence(*once)) == []  # 1 of 4 < half
    assert found(grad_not_zeroed.RULE, evidence(sample(two_layers()))) == []  # nothing checked


def moved(**status: tuple) -> dict:
    return {name.replace("_", "."): s for name, s in status.items()}


def test_not_updated_names_the_layer_and_why() -> None:
    missing = (UpdateStatus.NOT_IN_OPTIMIZER, None)
    ok = (UpdateStatus.UPDATED, 0)
    one = sample(
        two_layers(), param_updates=moved(fc0_weight=ok, fc1_weight=missing, fc1_bias=missing)
    )
    (f,) = found(not_updated.RULE, evidence(one))  # one step shows it is in no param group
    assert (f.kind, f.layer, f.key) == ("not_updated", "fc1", "fc1")
    assert f.message == (
        "fc1.weight, fc1.bias receive gradients but never change: in no optimizer's param "
        "groups (1 optimizer step seen)"
    )
    assert f.fix == not_updated.FIXES["not_in_optimizer"] and f.threshold == 1.0
    lr0 = (UpdateStatus.LR_ZERO, 1)
    steps = [sample(two_layers(), step=s, param_updates=moved(fc0_weight=lr0)) for s in (1, 2)]
    (f,) = found(not_updated.RULE, evidence(*steps))
    assert "fc0.weight receives gradients but never changes: in param group 1, whose " in f.message
    assert dict(f.evidence)["lr"] == 0.0 and dict(f.evidence)["param group"] == 1.0
    assert f.fix == not_updated.FIXES["lr_zero"]


def test_not_updated_is_silent_for_a_warm_up_step_and_for_parameters_that_moved_once() -> None:
    lr0, ok = (UpdateStatus.LR_ZERO, 0), (UpdateStatus.UPDATED, 0)
    assert (
        found(not_updated.RULE, evidence(sample(two_layers(), param_updates=moved(fc0_weight=lr0))))
        == []
    )
    unchanged = (UpdateStatus.UNCHANGED, 0)
    steps = [
        sample(two_layers(), step=1, param_updates=moved(fc0_weight=unchanged)),
        sample(two_layers(), step=2, param_updates=moved(fc0_weight=ok)),
        sample(two_layers(), step=3, param_updates=moved(fc0_weight=unchanged)),
    ]
    assert found(not_updated.RULE, evidence(*steps)) == []


def with_updates(ratios: list[float], key: str = "fc0") -> list[StepSample]:
    return [sample(two_layers(), step=s + 1, updates={key: r}) for s, r in enumerate(ratios)]


def test_update_too_large_and_too_small_need_most_steps_beyond_their_limit() -> None:
    ev = Evidence(with_updates([0.5, 0.6, 0.4, 1e-3]), TH, None, {"fc0", "fc1"}, "sgd", 5.0)
    (f,) = found(update_too_large.RULE, ev)
    assert (f.kind, f.layer, f.value) == ("update_too_large", "fc0", pytest.approx(0.45))
    assert f.message.startswith("the optimizer's updates are too large (sgd, lr 5): each step")
    assert dict(f.evidence)["steps beyond"] == 3.0 and f.threshold == TH.update_too_large
    assert found(update_too_small.RULE, ev) == []
    (f,) = found(update_too_small.RULE, evidence(*with_updates([1e-8, 2e-8, 3e-8])))
    assert f.kind == "update_too_small" and f.value == pytest.approx(2e-8)
    # too few steps, too few of them beyond, or a row the rules do not compare
    assert found(update_too_large.RULE, evidence(*with_updates([0.5, 0.5]))) == []
    assert found(update_too_large.RULE, evidence(*with_updates([0.5] * 3 + [1e-3] * 4))) == []
    assert found(update_too_large.RULE, evidence(*with_updates([0.5] * 4), keys={"fc1"})) == []
    healthy = [1e-3, 3e-3, 2e-2, 5e-2]
    assert found(update_too_large.RULE, evidence(*with_updates(healthy))) == []
    assert found(update_too_small.RULE, evidence(*with_updates(healthy))) == []

"""The findings registry: each rule on hand-built step samples (no model), the registry's
order, and everything derived from it (FINDING_KINDS, --fail-on, styles, the plot's marks)."""

from __future__ import annotations

import dataclasses
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
from gradcheck_tool.engines.flow.samples import ZERO_GRADIENT, NanSite, StepSample, UpdateStatus
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
    kw.setdefault("units", 100)
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
        "gradients vanish toward the input: the RMS gradient of fc0 is 1.0e-05× that of fc3 "
        "(a steady decline over 4 Linear layers)"
    )
    assert f.value == pytest.approx(1e-5)
    assert f.fix == vanishing.FIX
    assert f.threshold == TH.vanishing_ratio
    assert dict(f.evidence) == {
        "first/last RMS gradient": pytest.approx(1e-5),
        "steadiness": pytest.approx(1.0),
        "layers": 4.0,
    }


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


def bert_like(query0: float, query1: float) -> list[LayerStats]:
    """Two transformer blocks: query, value, ffn each; then a classifier."""
    names = [f"layer.{i}.{part}" for i in (0, 1) for part in ("query", "value", "ffn")]
    grads = [query0, 1.0, 1.0, query1, 1.0, 1.0]
    rows = [layer(n, g, order=i) for i, (n, g) in enumerate(zip(names, grads))]
    return [*rows, layer("classifier", 1.0, order=9)]


def test_vanishing_compares_one_role_across_blocks_not_different_layers() -> None:
    # BERT at init: layer 0's query gradient is tiny, and so is layer 1's: no trend
    assert found(vanishing.RULE, evidence(sample(bert_like(1e-5, 1e-5)))) == []
    # the query gradient does fall by 1e5 from block 1 to block 0: that is a trend
    (f,) = found(vanishing.RULE, evidence(sample(bert_like(1e-5, 1.0))))
    assert (f.layer, f.value) == ("layer.0.query", pytest.approx(1e-5))
    assert "over 2 Linear layers" in f.message


def test_vanishing_needs_a_steady_decline_not_a_zigzag() -> None:
    zigzag = stack(1e-5, 1.0, 1e-5, 1.0)  # first/last 1e-5, but steadiness 1/3
    assert found(vanishing.RULE, evidence(sample(zigzag))) == []
    lenient = FlowThresholds(trend_steadiness=0.3)
    assert len(found(vanishing.RULE, evidence(sample(zigzag), th=lenient))) == 1


# --- exploding: the first of its checks that fires -----------------------------------------


def sized(name: str, grad: float, weight: float, order: int = 0, **kw) -> LayerStats:
    """A layer with a gradient and a weight norm (100 entries: weight RMS = norm / 10)."""
    return layer(name, grad, order=order, weight_norm=weight, **kw)


def optimized(*samples: StepSample, optimizer="sgd", lr=1e-2, loss="loss_fn", th=TH):
    keys = {r.key for s in samples for r in s.rows}
    return Evidence(samples, th, None, keys, optimizer, lr, loss=loss)


def test_exploding_fires_when_an_sgd_step_would_outgrow_the_layer() -> None:
    rows = [sized("fc0", 1e2, 5.0), sized("fc1", 1e5, 5.0, 1), sized("fc2", 1e5, 5.0, 2)]
    (f,) = found(exploding.RULE, optimized(sample(rows)))
    # the layer nearest the input above the limit, not the largest
    assert (f.layer, f.value) == ("fc1", pytest.approx(200.0))
    assert f.message == (
        "gradients too large for a step: one SGD step at lr 1.0e-02 would change fc1 by "
        "2.0e+02× its own size (‖g‖ 1.00e+05, ‖w‖ 5.00e+00; a healthy step is ~1e-03×); "
        "2 layers are above the limit"
    )
    assert f.threshold == TH.exploding_update == 0.65
    assert dict(f.evidence) == {
        "lr·‖g‖/‖w‖": pytest.approx(200.0),
        "‖g‖": 1e5,
        "‖w‖": 5.0,
        "lr": 1e-2,
        "layers above": 2.0,
    }
    # below the limit; and at a learning rate that makes the same gradients a small step
    calm = [sized("fc0", 1e2, 5.0), sized("fc1", 3e2, 5.0, 1)]  # steps of 0.2 and 0.6
    assert found(exploding.RULE, optimized(sample(calm))) == []
    assert found(exploding.RULE, optimized(sample(rows), lr=1e-5)) == []


def test_exploding_skips_layers_whose_weights_are_near_zero_by_design_or_scale_free() -> None:
    # a zero-initialised head (‖w‖ 0) or LayerScale's 1e-6 gammas: any gradient dwarfs them
    rows = [sized("fc0", 1.0, 5.0), sized("head", 1.0, 0.0, 1), sized("gamma", 1.0, 1e-5, 2)]
    assert found(exploding.RULE, optimized(sample(rows))) == []
    # a conv normalised next (timm's MobileNetV3 stem at init): its scale does not matter
    stem = sized("stem", 1e3, 2.0)
    bn = LayerStats("bn", "BatchNorm2d", "layer", "bn", 1, numel=32, grad_norm=1.0, weight_norm=4.0)
    assert found(exploding.RULE, optimized(sample([stem, bn]))) == []
    (f,) = found(exploding.RULE, optimized(sample([stem, sized("fc", 1.0, 4.0, 1)])))
    assert f.layer == "stem"


def test_exploding_with_adam_or_the_projection_judges_the_gradient_per_loss_gradient() -> None:
    rows = [sized("fc0", 1e5, 5.0), sized("fc1", 1e3, 5.0, 1)]
    big = sample(rows, loss_grad=2.0)  # ‖g‖/‖w‖ 2e4 at fc0: 1e4 per unit of loss gradient
    for ev in (optimized(big, optimizer="adam", lr=1e-3), optimized(big, loss="projection")):
        (f,) = found(exploding.RULE, ev)
        assert (f.layer, f.value) == ("fc0", pytest.approx(1e4))
        assert f.message == (
            "huge gradients: fc0's gradient over its weight, ‖g‖/‖w‖ = 1.00e+05/5.00e+00, "
            "is 1.0e+04× the loss's gradient at the model output (2.00e+00)"
        )
        assert f.threshold == TH.exploding_relative
        assert dict(f.evidence)["‖∂loss/∂output‖"] == 2.0
    # the same gradients with a 50× larger loss gradient: not exploding (2e2 < 4e2)
    calm = sample(rows, loss_grad=100.0)
    assert found(exploding.RULE, optimized(calm, optimizer="adam", lr=1e-3)) == []
    # SGD on the projection: lr·‖g‖/‖w‖ = 200 says nothing, the projection's scale is arbitrary
    assert found(exploding.RULE, optimized(calm, loss="projection")) == []


def test_exploding_without_the_loss_gradient_compares_gradient_and_weight() -> None:
    rows = [sized("fc0", 1e4, 5.0), sized("fc1", 1e3, 5.0, 1)]  # ‖g‖/‖w‖ 2e3 at fc0
    (f,) = found(exploding.RULE, optimized(sample(rows), optimizer="adam", lr=1e-3))
    assert (
        f.message
        == "huge gradients: fc0's gradient norm 1.00e+04 is 2.0e+03× its weight norm 5.00e+00"
    )
    assert f.threshold == TH.exploding_grad_weight
    # ...but not on the projection loss, whose scale is arbitrary
    assert found(exploding.RULE, optimized(sample(rows), optimizer=None, loss="projection")) == []
    calm = [sized("fc0", 5e2, 5.0), sized("fc1", 5e1, 5.0, 1)]  # ‖g‖/‖w‖ 1e2 at fc0
    assert found(exploding.RULE, optimized(sample(calm), optimizer=None, lr=None)) == []
    # ...nor under the Monitor: GradScaler may have multiplied the gradients by 65536
    assert found(exploding.RULE, optimized(sample(rows), optimizer=None, lr=None, loss=None)) == []


def monitored(*samples: StepSample, optimizer="sgd", lr=5e-2):
    """Evidence as the Monitor gives it: a real loop's steps (Evidence.loss None)."""
    return optimized(*samples, optimizer=optimizer, lr=lr, loss=None)


def test_the_monitor_judges_the_sgd_steps_it_measured_not_scaled_or_clipped_gradients() -> None:
    # AMP's GradScaler: gradients (and the loss's gradient) 65536× what the step uses; or
    # clipping after backward. lr·‖g‖/‖w‖ would be 1e4×; the measured steps are 1e-3
    scaled = [sized("fc0", 1e5, 5.0), sized("fc1", 1e5, 5.0, 1)]
    steps = [
        sample(scaled, step=i, loss_grad=6.5e4, updates={"fc0": 1e-3, "fc1": 2e-3}) for i in (1, 2)
    ]
    assert found(exploding.RULE, monitored(*steps)) == []
    # the same gradients on flow's own SGD steps are the steps it takes: exploding
    assert [f.kind for f in found(exploding.RULE, optimized(steps[-1]))] == ["exploding"]
    # a measured step as large as the layer is exploding, wherever the gradient came from
    big = sample(scaled, step=3, loss_grad=6.5e4, updates={"fc0": 1e-3, "fc1": 0.9})
    (f,) = found(exploding.RULE, monitored(*steps, big))
    assert (f.layer, f.step, f.value) == ("fc1", 3, pytest.approx(0.9))
    assert f.message == (
        "steps too large: the optimizer's step after step 3 changed fc1 by 9.0e-01× its own "
        "size (measured ‖Δw‖/‖w‖; a healthy step is ~1e-03×)"
    )
    assert f.evidence[0] == ("update/weight", pytest.approx(0.9))
    assert f.threshold == TH.exploding_update
    # the last step's report before its optimizer step: the last measured step judges
    pending = sample(scaled, step=4, loss_grad=6.5e4)
    assert [f.step for f in found(exploding.RULE, monitored(*steps, big, pending))] == [3]
    assert found(exploding.RULE, monitored(*steps, pending)) == []


def test_the_monitor_never_applies_the_lr_to_a_layer_no_optimizer_steps() -> None:
    # the head is in no param group: nothing measured for it, so nothing predicted either
    rows = [sized("fc0", 0.2, 5.0), sized("head", 1.2, 1.2, 1)]
    steps = [sample(rows, step=i, loss_grad=1.0, updates={"fc0": 0.16}) for i in (1, 2)]
    assert found(exploding.RULE, monitored(*steps, lr=5.0)) == []


def test_the_monitor_judges_scaled_gradients_per_unit_of_the_loss_gradient() -> None:
    # no optimizer step seen (or not SGD): ‖g‖/(‖w‖·‖∂loss/∂output‖), which a scale cancels
    calm = [sized("fc0", 1e5, 5.0), sized("fc1", 1e5, 5.0, 1)]
    for optimizer, lr in ((None, None), ("sgd", 5e-2), ("adam", 1e-3)):
        ev = monitored(sample(calm, loss_grad=6.5e4), optimizer=optimizer, lr=lr)
        assert found(exploding.RULE, ev) == []
        ev = monitored(sample(calm, loss_grad=1.0), optimizer=optimizer, lr=lr)
        (f,) = found(exploding.RULE, ev)
        assert f.evidence[0] == ("‖g‖/(‖w‖·‖∂loss/∂output‖)", pytest.approx(2e4))


def test_exploding_fires_on_the_weight_gradient_ratio() -> None:
    (f,) = found(exploding.RULE, evidence(sample(stack(1e4, 1.0, 1.0, 1.0))))
    assert (f.kind, f.layer, f.value) == ("exploding", "fc0", pytest.approx(1e4))
    assert f.message == (
        "gradients grow toward the input: the RMS gradient of fc0 is 1.0e+04× that of fc3 "
        "(a steady rise over 4 Linear layers)"
    )
    assert f.fix == exploding.FIX
    assert f.threshold == TH.exploding_ratio
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
    def grown(*samples: StepSample, loss: str | None = "loss_fn") -> list:
        return found(exploding.RULE, Evidence(samples, TH, None, set(), loss=loss))

    first = sample([layer("fc0", 1.0), layer("fc1", 1.0)], step=1, loss_grad=1.0)
    last = sample([layer("fc0", 1e4), layer("fc1", 2.0)], step=5, loss_grad=1.0)
    (f,) = grown(first, last)
    assert (f.layer, f.step, f.value) == ("fc0", 5, pytest.approx(1e4))
    assert f.message == (
        "gradients explode during training: fc0's gradient norm grew 1.0e+04× from step 1 to "
        "step 5 at step 5"
    )
    calm = sample([layer("fc0", 10.0), layer("fc1", 2.0)], step=5, loss_grad=1.0)
    assert grown(first, calm) == []
    # the Monitor: the same growth against the loss's gradient at the output...
    (f,) = grown(first, last, loss=None)
    assert f.value == pytest.approx(1e4)
    assert f.message.endswith("step 5 (per unit of the loss's gradient at the output) at step 5")
    # ...but not GradScaler's scale, which multiplies both (2^13 after 26000 steps)
    scaled = sample([layer("fc0", 8192.0), layer("fc1", 8192.0)], step=5, loss_grad=8192.0)
    assert grown(first, scaled, loss=None) == []
    assert grown(first, dataclasses.replace(scaled, loss_grad=None), loss=None) == []


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
    assert f.message == "70.0% of the 100 features of relu are dead: zero for all 8 examples"
    assert f.fix == dead_relu.FIX
    before = sample([act("relu", dead_fraction=0.1)], step=1)
    after = sample([act("relu", dead_fraction=0.7)], step=3)
    (f,) = found(dead_relu.RULE, evidence(before, after))
    assert f.message == (
        "70.0% of the 100 features of relu are dead: zero for every example at step 3 "
        "(was 10.0% at step 1)"
    )
    assert f.step == 3


def test_dead_relu_is_silent_at_or_below_its_fraction() -> None:
    rows = [act("a", dead_fraction=0.5), act("b", inactive_fraction=0.9), layer("fc", 1.0)]
    assert found(dead_relu.RULE, evidence(sample(rows))) == []


def test_dead_relu_in_a_few_units_must_be_beyond_coin_flips() -> None:
    # 6 of 8 dead (MobileNetV3's first squeeze-excitation ReLU at init): 14% likely by chance
    assert found(dead_relu.RULE, evidence(sample([act("se", units=8, dead_fraction=6 / 8)]))) == []
    (f,) = found(dead_relu.RULE, evidence(sample([act("se", units=8, dead_fraction=1.0)])))
    assert f.threshold == pytest.approx(0.5 + (2.33 * 8**0.5 / 2 + 0.5) / 8)
    assert dict(f.evidence) == {"dead fraction": 1.0, "units": 8.0}
    # 24 of 32 passes (the chance is 0.35%), 23 of 32 does not
    assert len(found(dead_relu.RULE, evidence(sample([act("r", units=32, dead_fraction=0.75)]))))
    assert (
        found(dead_relu.RULE, evidence(sample([act("r", units=32, dead_fraction=23 / 32)]))) == []
    )


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


def test_no_grad_is_silent_on_zeros_from_a_zero_initialised_layer_after_it() -> None:
    # timm's zero_init_last: a residual branch's last BatchNorm starts at 0, so everything
    # before it in the branch gets exactly zero gradient until the first step moves it
    rows = [
        layer("conv1", 0.0, order=0, weight_norm=3.0),
        layer("bn2", 0.5, order=1, weight_norm=0.0),
    ]
    gated = [("conv1", ["conv1.weight"], ZERO_GRADIENT)]
    assert found(no_grad.RULE, evidence(sample(rows, no_grad=gated))) == []
    # a zero-initialised layer *before* it does not explain its zeros; nor missing gradients
    before = [layer("bn2", 0.5, order=0, weight_norm=0.0), layer("conv1", 0.0, order=1)]
    assert len(found(no_grad.RULE, evidence(sample(before, no_grad=gated)))) == 1
    detached = [("conv1", ["conv1.weight"], "not reached by backward")]
    assert len(found(no_grad.RULE, evidence(sample(rows, no_grad=detached)))) == 1


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
    # root cause first: the training-loop bugs, then a divergence before what it explains;
    # not_learning after the causes it may name, before the notices
    assert FINDING_KINDS == (
        "grad_not_zeroed",
        "not_updated",
        "diverging",
        "nan",
        "exploding",
        "vanishing",
        "update_too_large",
        "update_too_small",
        "dead_relu",
        "saturation",
        "not_learning",
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
        "diverging": "bold red",
        "not_learning": "yellow",
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


def test_dead_and_saturated_findings_carry_their_numbers_and_threshold() -> None:
    from gradcheck_tool.engines.flow.findings import dead_relu, saturation

    (found,) = dead_relu.RULE.findings(
        evidence(sample([act("act", units=100, dead_fraction=0.75)]))
    )
    assert dict(found.evidence) == {"dead fraction": 0.75, "units": 100.0}
    # beyond what coin flips give 100 units 1% of the time: 50% + (2.33·5 + 0.5)/100
    assert found.threshold == pytest.approx(0.6215)
    squashed = act("sq", type="Tanh", saturated_fraction=0.9)
    (found,) = saturation.RULE.findings(evidence(sample([squashed])))
    assert dict(found.evidence)["saturated fraction"] == 0.9
    assert found.threshold == TH.saturated_fraction


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
    # three large first steps, then healthy ones: only a candidate, marked as such ...
    early = evidence(*with_updates([0.5] * 3 + [1e-3] * 4))
    (f,) = found(update_too_large.RULE, early)
    assert f.where == "early steps" and dict(f.evidence)["steps in a row"] == 3.0
    # ... which is no finding when it did no damage (consequences.py)
    assert detect_findings(early.samples, TH, None, early.comparable_keys) == []
    assert found(update_too_large.RULE, evidence(*with_updates([0.5, 1e-3, 1e-3] * 3))) == []
    assert found(update_too_large.RULE, evidence(*with_updates([0.5] * 4), keys={"fc1"})) == []
    healthy = [1e-3, 3e-3, 2e-2, 5e-2]
    assert found(update_too_large.RULE, evidence(*with_updates(healthy))) == []
    assert found(update_too_small.RULE, evidence(*with_updates(healthy))) == []


def test_update_size_rules_do_not_judge_flows_projection_loss() -> None:
    # flow without loss_fn trains a random projection of the output, which has no minimum:
    # its loss falls without end and its steps grow; no step size is healthy or not there
    for ratios, rule in (([0.5] * 4, update_too_large), ([1e-8] * 4, update_too_small)):
        steps = with_updates(ratios)
        keys = {"fc0", "fc1"}
        projection = Evidence(steps, TH, None, keys, "sgd", 1e-2, loss="projection")
        assert found(rule.RULE, projection) == []
        real = Evidence(steps, TH, None, keys, "sgd", 1e-2, loss="loss_fn")
        assert [f.kind for f in found(rule.RULE, real)] == [rule.RULE.kind]


def test_update_too_small_spares_the_layers_behind_a_zero_initialised_one() -> None:
    # timm's zero_init_last: a residual branch's last BatchNorm starts at 0; the convs before
    # it get no gradient at first and tiny ones while it grows: by design, not a low lr
    def rows(bn_weight: float) -> list[LayerStats]:
        return [
            layer("conv1", 1e-4, order=0, weight_norm=11.0),
            layer("bn2", 0.02, order=1, weight_norm=bn_weight),
            layer("fc", 0.9, order=2, weight_norm=2.0),
        ]

    def run(first_bn: float) -> list[StepSample]:
        bns = [first_bn] + [0.002 * s for s in range(1, 6)]
        return [
            sample(rows(w), step=s + 1, updates={"conv1": 2e-7, "bn2": 0.03, "fc": 5e-3})
            for s, w in enumerate(bns)
        ]

    gated = Evidence(run(0.0), TH, None, {"conv1", "fc"}, "sgd", 1e-2, loss="loss_fn")
    assert found(update_too_small.RULE, gated) == []
    # the same tiny steps behind a BatchNorm that did not start at zero: too small
    plain = Evidence(run(8.0), TH, None, {"conv1", "fc"}, "sgd", 1e-2, loss="loss_fn")
    (f,) = found(update_too_small.RULE, plain)
    assert f.layer == "conv1"


def test_update_too_small_spares_the_layers_inside_a_block_scaled_near_zero() -> None:
    # ConvNeXt's layer scale: the block's own gamma (1e-6) scales what fc1 computes; the
    # block is ordered before its children, yet acts after them
    def rows(gamma_rms: float) -> list[LayerStats]:
        return [
            layer("blocks.1", 0.05, order=0, weight_norm=gamma_rms * 10),  # 100 entries
            layer("blocks.1.fc1", 1e-7, order=1, weight_norm=1.6),
            layer("head", 0.9, order=2, weight_norm=2.0),
        ]

    def run(gamma_rms: float) -> Evidence:
        steps = [
            sample(rows(gamma_rms), step=s, updates={"blocks.1.fc1": 3e-9, "head": 5e-3})
            for s in range(1, 7)
        ]
        return Evidence(steps, TH, None, {"blocks.1.fc1", "head"}, "sgd", 1e-2, loss="loss_fn")

    assert found(update_too_small.RULE, run(1e-6)) == []
    # a block whose own weights are of ordinary size: fc1's tiny steps are too small
    assert [f.layer for f in found(update_too_small.RULE, run(0.1))] == ["blocks.1.fc1"]


def test_exploding_judges_only_the_first_step_of_a_projection_run() -> None:
    # flow --steps without loss_fn: its projection has no minimum, the weights and gradients
    # grow without end (tiny Llama: ‖g‖/‖w‖ 1e15 by step 10); the model as given is step 1
    def step(s: int, grad: float) -> StepSample:
        return sample([sized("fc0", grad, 5.0), sized("fc1", 1.0, 5.0, 1)], step=s, loss_grad=1.0)

    run = [step(1, 1.0), *(step(s, 10.0 ** (2 * s)) for s in range(2, 11))]
    assert found(exploding.RULE, optimized(*run, loss="projection")) == []
    # exploding at the first step is still found; on a real loss the last step is judged
    assert len(found(exploding.RULE, optimized(step(1, 1e5), *run[1:], loss="projection"))) == 1
    assert len(found(exploding.RULE, optimized(*run, optimizer="adam", lr=1e-3))) == 1


def test_update_too_small_is_about_the_model_not_one_slow_layer() -> None:
    # a BERT's key weights at init barely move while the other layers do: no finding
    names = ["q", "k", "v", "o"]
    rows = [layer(n, 1.0, order=i, params=(f"{n}.weight",)) for i, n in enumerate(names)]

    def steps(ratios: dict[str, float]) -> list[StepSample]:
        return [sample(rows, step=s, updates=dict(ratios)) for s in range(1, 6)]

    one_slow = evidence(*steps({"q": 1e-3, "k": 5e-7, "v": 1e-3, "o": 2e-3}))
    assert found(update_too_small.RULE, one_slow) == []
    all_slow = evidence(*steps({"q": 3e-8, "k": 5e-8, "v": 2e-8, "o": 4e-8}))
    (f,) = found(update_too_small.RULE, all_slow)
    assert f.key == "v" and "and 3 other layers too" in f.message
    # none below 1e-6, but none moving at even 1/100 of the healthy rate (Adam at lr 1e-7
    # on a wide MLP): the fastest is named
    crawling = evidence(*steps({"q": 2e-6, "k": 1.3e-6, "v": 3e-6, "o": 4e-6}))
    (f,) = found(update_too_small.RULE, crawling)
    assert f.key == "o" and "no layer moves by more than 4.0e-06" in f.message
    assert f.threshold == TH.update_small_everywhere
    assert (
        found(update_too_small.RULE, evidence(*steps({"q": 2e-6, "k": 1e-6, "v": 3e-6, "o": 2e-5})))
        == []
    )


def test_a_nan_step_no_optimizer_applied_is_not_a_finding_when_training_went_on() -> None:
    """GradScaler skips an overflowing step: non-finite gradients, no optimizer step after
    them, finite steps later. Applied, from the forward, or the last step: still a finding."""
    bad = NanSite("backward", "fc0", "the gradient reaching fc0 is non-finite")

    def run(stepped: bool, where: str = "backward", finite_after: bool = True):
        site = NanSite(where, bad.layer, bad.message)
        steps = [sample(stack(1.0, 1.0), step=1, nan=site, stepped=stepped)]
        if finite_after:
            steps.append(sample(stack(1.0, 1.0), step=2, stepped=True))
        return found(nan.RULE, evidence(*steps))

    assert run(stepped=False) == []
    (f,) = run(stepped=True)  # the optimizer applied it: a real NaN
    assert f.step == 1
    assert len(run(stepped=False, where="forward")) == 1  # the model's own NaN
    assert len(run(stepped=False, finite_after=False)) == 1  # nothing finite after it

"""Root cause first: the diverging and not_learning rules and the consequences pass, on
hand-built step samples (no model). Both sides of each rule: what it must catch and the
healthy runs it must leave alone."""

from __future__ import annotations

import math

import pytest

from gradcheck_tool.engines.flow.findings import (
    Evidence,
    detect_findings,
    diverging,
    no_grad,
    not_learning,
)
from gradcheck_tool.engines.flow.findings._divergence import find_blow_up, update_ratios
from gradcheck_tool.engines.flow.samples import ZERO_GRADIENT, NanSite, StepSample
from gradcheck_tool.engines.flow.thresholds import FlowThresholds
from gradcheck_tool.results import LayerStats, OverfitVerdict

TH = FlowThresholds()


def fc(name: str, weight: float = 1.0, grad: float = 0.1, order: int = 0, **kw) -> LayerStats:
    kw.setdefault("numel", 100)
    return LayerStats(
        name, "Linear", "layer", name, order, grad_norm=grad, weight_norm=weight, **kw
    )


def tanh(saturated: float, order: int = 1) -> LayerStats:
    return LayerStats(
        "act", "Tanh", "activation", "act", order, units=10, unit="feature",
        saturated_fraction=saturated,
    )  # fmt: skip


def run(losses, rows=None, nan_at=None, no_grad_at=None, **kw) -> list[StepSample]:
    """One sample per loss (step 1, 2, ...); `rows(step)` gives each step's rows."""
    out = []
    for i, loss in enumerate(losses, 1):
        nan = NanSite("loss", "", "the loss is inf") if i == nan_at else None
        ng = (no_grad_at or {}).get(i, [])
        out.append(StepSample(i, loss, rows(i) if rows else [fc("fc")], nan, ng))
    return out


def ev(samples, lr=0.1, optimizer="sgd", overfit=None) -> Evidence:
    return Evidence(samples, TH, None, frozenset(), optimizer, lr, overfit)


def kinds(found) -> list[str]:
    return [f.kind for f in found]


# --- diverging: caught -------------------------------------------------------------------


def test_a_loss_that_grows_by_orders_of_magnitude_and_stays_up_diverges() -> None:
    (f,) = diverging.RULE.findings(ev(run([2.0, 1.5, 30.0, 400.0, 900.0])))
    assert f.kind == "diverging" and f.step == 4  # 400 is the first ≥ 100× the low 1.5
    assert "from 1.5 at step 2 to 900 at step 5 (6.0e+02×)" in f.message
    assert "sgd at lr 0.1" in f.message
    # the table prints "(threshold 100)" after the evidence: it is the first entry's
    assert f.evidence[0] == ("growth", pytest.approx(600.0))
    assert f.threshold == TH.diverging_growth


def test_a_loss_that_becomes_non_finite_after_growing_diverges_and_names_it() -> None:
    samples = run([49.9, 204.0, 1.5e5, math.inf], nan_at=4)
    (f,) = diverging.RULE.findings(ev(samples))
    assert "then the loss was inf at step 4" in f.message
    assert "1.5e+05" in f.message and f.threshold == TH.diverging_nonfinite_growth


def test_the_layer_whose_update_blew_up_first_is_named() -> None:
    # sgd: ‖Δw‖/‖w‖ = lr·‖g‖/‖w‖; fc1's reaches 0.5 after step 1, fc0's only later
    def rows(step):
        return [fc("fc0", grad=0.01 * 10**step, order=0), fc("fc1", grad=5.0, order=1)]

    (f,) = diverging.RULE.findings(ev(run([1.0, 50.0, 5e3, 5e4], rows)))
    assert (
        f.layer == "fc1"
        and "first layer to take a huge step: fc1, ‖Δw‖/‖w‖ = 0.5 after step 1" in f.message
    )


def test_measured_updates_are_used_when_the_samples_have_them() -> None:
    samples = run([1.0, 50.0, 5e3, 5e4], lambda s: [fc("fc0"), fc("fc1", order=1)])
    for s in samples:
        s.updates = {"fc0": 3.0, "fc1": 1e-3}  # what StepSample.updates will carry
    (f,) = diverging.RULE.findings(ev(samples))
    assert f.layer == "fc0" and "fc0, ‖Δw‖/‖w‖ = 3 after step 1" in f.message
    assert [how for _, how, _ in update_ratios(ev(samples), 0)] == ["measured"] * 2


def test_a_nan_right_after_an_update_as_large_as_the_weights_diverges() -> None:
    # the loss barely moved, but the weights went from 1 to inf in one step
    samples = run(
        [2.0, 1.9, math.nan], lambda s: [fc("fc", weight=math.inf if s == 3 else 1.0)], nan_at=3
    )
    (f,) = diverging.RULE.findings(ev(samples, lr=None, optimizer=None))
    assert f.step == 3 and "‖Δw‖/‖w‖ ≥ inf" in f.message
    assert f.evidence[0] == ("largest update/weight", math.inf)
    assert f.threshold == TH.diverging_update


# --- diverging: healthy runs left alone --------------------------------------------------


@pytest.mark.parametrize(
    "losses",
    [
        [2.3, 13.0, 7.8, 1.9, 0.25, 0.036, 0.32, 0.05, 3e-4],  # rises 5.6× first, then fits
        [2.3, 1.0, 0.5, 0.4],  # falls
        [2.0, 1.0, 300.0, 1.5],  # a 300× spike that comes back within 10×
        [2.3, 1e-4, 1e-2, 5e-3],  # near zero: 100× of almost nothing
        [-1.0, -10.0, -1e3, -1e5],  # a loss without a minimum falls; it does not diverge
        [1e7, 1e7, 1e7],  # enormous, but not growing
    ],
)
def test_runs_that_do_not_blow_up_do_not_diverge(losses) -> None:
    assert diverging.RULE.findings(ev(run(losses))) == []


def test_a_nan_the_loss_did_not_grow_into_is_the_nan_findings() -> None:
    found = detect_findings(run([2.0, 1.5, 1.2, math.nan], nan_at=4), TH, None, set(), lr=0.01)
    assert kinds(found) == ["nan"]


def test_no_loss_or_one_step_never_diverges() -> None:
    assert diverging.RULE.findings(ev(run([None, None, None]))) == []
    assert diverging.RULE.findings(ev(run([1.0]))) == []
    assert find_blow_up(ev(run([None, 1.0, None, 500.0]))) is not None  # only where known


# --- consequences ------------------------------------------------------------------------


def test_what_appeared_after_the_blow_up_is_attached_to_it() -> None:
    def rows(step):
        return [fc("fc"), tanh(0.0 if step < 3 else 1.0)]

    samples = run(
        [2.0, 1.5, 300.0, 1e5, math.inf], rows, nan_at=5, no_grad_at={4: [("fc", ["fc.w"], "zero")]}
    )
    (f,) = detect_findings(samples, TH, None, set(), optimizer="sgd", lr=0.1)
    assert f.kind == "diverging"
    assert kinds(f.consequences) == ["nan", "saturation", "no_grad"]
    assert f.to_dict()["consequences"][0]["kind"] == "nan"


def test_what_was_there_before_the_blow_up_stays_a_finding_of_its_own() -> None:
    def rows(step):
        return [fc("fc"), tanh(0.9)]  # saturated from the first step: a cause, not a result

    ng = {s: [("head", ["head.w"], "not reached by backward")] for s in range(1, 5)}
    samples = run([2.0, 1.5, 300.0, 1e5], rows, no_grad_at=ng)
    found = detect_findings(samples, TH, None, set(), optimizer="sgd", lr=0.1)
    assert kinds(found) == ["diverging", "saturation", "no_grad"]
    assert found[0].consequences == ()


def test_no_grad_reads_the_step_before_the_first_nan() -> None:
    ng = {2: [("a", ["a.w"], "zero")], 3: [("b", ["b.w"], "zero")]}
    (f,) = no_grad.RULE.findings(ev(run([1.0, 0.9, math.nan], nan_at=3, no_grad_at=ng)))
    assert f.layer == "a" and f.step == 2


# --- not_learning ------------------------------------------------------------------------


def failed(first: float, last: float) -> OverfitVerdict:
    return OverfitVerdict(True, False, first, last, min(first, last), "not near zero")


def test_tiny_updates_are_named_with_their_numbers_and_a_learning_rate_to_try() -> None:
    samples = run([2.35] * 10, lambda s: [fc("fc", weight=10.0, grad=1.0)])
    (f,) = not_learning.RULE.findings(ev(samples, lr=1e-5, overfit=failed(2.35, 2.35)))
    assert "learning rate too small" in f.message and "1.0e-06" in f.message
    assert "try lr ≈ 1e-02" in f.message
    assert dict(f.evidence)["update/weight"] == pytest.approx(1e-6)


def test_reasons_are_ranked_by_how_far_past_their_threshold() -> None:
    def rows(step):
        return [
            fc("fc0", weight=10.0, grad=1.0, frozen=True, numel=300),
            fc("fc1", weight=10.0, grad=1.0, order=1),
            LayerStats(
                "relu", "ReLU", "activation", "relu", 2, units=100, unit="feature",
                dead_fraction=0.7,
            ),
        ]  # fmt: skip

    samples = run([2.3] * 10, rows)
    (f,) = not_learning.RULE.findings(ev(samples, lr=1e-6, overfit=failed(2.3, 2.3)))
    text = f.message
    # lr: 1e-4 / 1e-7 = 1000 ≫ frozen: 75% / 50% ≫ dead: 0.7 / 0.62 (dead_relu's limit
    # for 100 units: beyond what chance gives)
    assert text.index("(1) learning rate") < text.index("(2) frozen") < text.index("(3) dead")


@pytest.mark.parametrize(
    "losses, overfit",
    [
        ([2.3, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05, 0.03], failed(2.3, 0.03)),  # still halving
        ([2.3] * 10, OverfitVerdict(True, True, 2.3, 0.001, 0.001, "ok")),  # it fit
        ([2.3] * 10, None),  # no loss_fn / one step: no verdict
        ([2.0, 1.5, 300.0, 1e5], failed(2.0, 1e5)),  # diverging says it instead
    ],
)
def test_not_learning_is_silent_where_it_does_not_apply(losses, overfit) -> None:
    samples = run(losses, lambda s: [fc("fc", weight=10.0, grad=1.0)])
    assert not_learning.RULE.findings(ev(samples, lr=1e-6, overfit=overfit)) == []


def test_not_learning_needs_a_reason_with_evidence() -> None:
    # a healthy update size (lr·g/w = 1e-3) and nothing dead, frozen or unreached: the
    # overfit line's "train longer" is all there is to say
    samples = run([2.3, 2.2, 2.1, 2.0], lambda s: [fc("fc", weight=10.0, grad=1.0)])
    assert not_learning.RULE.findings(ev(samples, lr=1e-2, overfit=failed(2.3, 2.0))) == []


def test_a_cause_the_blow_up_hides_is_reported_as_it_was_seen_before() -> None:
    # exploding gradients at the first step (early/late RMS ratio 1e4); one step later the
    # weights are inf and the exploding rule, reading a NaN step, is silent
    def rows(step):
        w = math.inf if step == 2 else 1.0
        return [fc("fc0", weight=w, grad=1e4), fc("fc1", weight=w, grad=1.0, order=1)]

    samples = run([-4e12, math.nan], rows, nan_at=2)
    found = detect_findings(samples, TH, None, {"fc0", "fc1"}, optimizer="sgd", lr=0.01)
    # gradients exploding before the first update are the deeper cause: they come first
    assert kinds(found) == ["exploding", "diverging"]
    assert kinds(found[1].consequences) == ["nan"] and found[0].step == 1


# --- large updates and loop bugs as causes ----------------------------------------------------


def _relu(dead: float, order: int = 1) -> LayerStats:
    return LayerStats(
        "act", "ReLU", "activation", "act", order, units=100, unit="feature", dead_fraction=dead
    )


def _updating(ratios, dead_from: int, stale_from: int | None = None) -> list[StepSample]:
    """fc then a ReLU: steps with measured update ratios; the ReLU dies from `dead_from`; the
    backward adds to stale gradients from `stale_from` (a loop without zero_grad)."""
    out = []
    for i, r in enumerate(ratios, 1):
        stale = stale_from is not None and i >= stale_from
        out.append(
            StepSample(
                i,
                None,
                [fc("fc", weight=1.0, grad=0.1), _relu(0.9 if i >= dead_from else 0.0)],
                None,
                updates={"fc": r},
                zeroing_checked=2 if i > 1 else 0,
                stale_grads=["fc.weight", "fc.bias"] if stale else [],
            )
        )
    return out


def test_damage_after_large_first_steps_is_attached_to_them() -> None:
    samples = _updating([0.9, 0.8, 0.5, 1e-3, 1e-3, 1e-3, 1e-3], dead_from=3)
    found = detect_findings(samples, TH, None, {"fc"}, optimizer="adam", lr=0.1)
    assert kinds(found) == ["update_too_large"]
    assert found[0].where == "early steps"
    assert kinds(found[0].consequences) == ["dead_relu"]
    # the same large first steps without damage: no finding at all
    calm = _updating([0.9, 0.8, 0.5, 1e-3, 1e-3, 1e-3, 1e-3], dead_from=99)
    assert detect_findings(calm, TH, None, {"fc"}, optimizer="adam", lr=0.1) == []


def test_a_forgotten_zero_grad_is_the_cause_of_the_large_updates_it_makes() -> None:
    samples = _updating([0.5] * 6, dead_from=4, stale_from=2)
    found = detect_findings(samples, TH, None, {"fc"}, optimizer="sgd", lr=0.5)
    assert kinds(found) == ["grad_not_zeroed"]
    assert kinds(found[0].consequences) == ["update_too_large", "dead_relu"]


def test_not_learning_names_unreached_parameters_only_with_evidence() -> None:
    # timm's zero_init_last: layer1.0.conv1 gets exactly zero gradient at the first step
    # only, because bn2 after it starts at zero; the loss falls 2.25 → 0.106 in 10 steps
    def rows(step):
        bn = 0.0 if step == 1 else 1e-3 * step
        return [
            fc("conv1", weight=11.0, grad=0.0 if step == 1 else 2e-4),
            fc("bn2", weight=bn, grad=0.02, order=1),
            fc("fc", weight=2.0, grad=0.9, order=2),
        ]

    losses = [2.25, 1.33, 0.71, 0.42, 0.28, 0.2, 0.17, 0.14, 0.12, 0.106]
    gated = {1: [("conv1", ["conv1.weight"], ZERO_GRADIENT)]}
    samples = run(losses, rows, no_grad_at=gated)
    assert not_learning.RULE.findings(ev(samples, lr=1e-2, overfit=failed(2.25, 0.106))) == []
    # zeros at the first step only, without a zero-initialised layer after: reached later
    plain = run(losses, lambda s: [fc("conv1", weight=11.0), fc("fc", order=2)], no_grad_at=gated)
    assert not_learning.RULE.findings(ev(plain, lr=1e-2, overfit=failed(2.25, 0.106))) == []
    # a parameter the loss never reaches at any step: named
    never = {i: [("head2", ["head2.weight"], "not reached by backward")] for i in range(1, 11)}
    flat = run([2.3] * 10, lambda s: [fc("fc"), fc("head2", order=1)], no_grad_at=never)
    (f,) = not_learning.RULE.findings(ev(flat, lr=1e-2, overfit=failed(2.3, 2.3)))
    assert "the loss does not reach head2.weight" in f.message


def test_frozen_layers_are_a_reason_only_when_they_hold_most_parameters() -> None:
    def frozen(share_of_400: int):
        def rows(step):
            return [
                fc("emb", weight=10.0, grad=1.0, frozen=True, numel=share_of_400),
                fc("fc", weight=10.0, grad=1.0, order=1, numel=400 - share_of_400),
            ]

        return run([2.3, 2.2, 2.1, 2.0], rows)

    # a frozen pretrained embedding (15.7%) or a frozen backbone of a head-only fine-tune
    # below half: meant, and the rest learns (update size 1e-3: healthy)
    for share in (63, 150):
        found = not_learning.RULE.findings(ev(frozen(share), lr=1e-2, overfit=failed(2.3, 2.0)))
        assert found == []
    # most of the model frozen (frozen_by_mistake: 93.5%)
    (f,) = not_learning.RULE.findings(ev(frozen(374), lr=1e-2, overfit=failed(2.3, 2.0)))
    assert "frozen layers (requires_grad=False) hold 93.5% of the parameters" in f.message
    assert dict(f.evidence)["frozen share"] == pytest.approx(0.935)


def test_a_rising_loss_is_a_reason_only_when_it_rose_clearly() -> None:
    def rows(step):
        return [fc("fc", weight=10.0, grad=1.0)]

    # an LSTM with dropout: 1.64 → 1.65, noise
    noisy = run([1.64, 1.6, 1.62, 1.63, 1.65], rows)
    assert not_learning.RULE.findings(ev(noisy, lr=1e-2, overfit=failed(1.64, 1.65))) == []
    # from its lowest 1.2 to 2.4: 2× (≥ 1.5×)
    rose = run([1.64, 1.2, 1.5, 2.0, 2.4], rows)
    (f,) = not_learning.RULE.findings(ev(rose, lr=1e-2, overfit=failed(1.64, 2.4)))
    assert "the loss rose (1.2 at its lowest → 2.4)" in f.message
    assert dict(f.evidence)["loss rise"] == pytest.approx(2.0)


def test_not_learnings_evidence_starts_with_the_loss_its_threshold_is_for() -> None:
    samples = run([2.35] * 10, lambda s: [fc("fc", weight=10.0, grad=1.0)])
    (f,) = not_learning.RULE.findings(ev(samples, lr=1e-5, overfit=failed(2.35, 2.35)))
    assert f.evidence[0] == ("last loss", 2.35)
    assert f.threshold == pytest.approx(max(TH.overfit_absolute, TH.overfit_fraction * 2.35))


def test_dead_units_are_a_reason_only_where_dead_relu_would_call_them_dead() -> None:
    # 6 of 8 units dead: coin flips do that often (MobileNetV3's squeeze-excitation ReLU);
    # dead_relu's limit for 8 units is ~97%, so neither rule names them
    def rows(step):
        return [
            fc("fc0", weight=10.0, grad=1.0, frozen=True, numel=300),
            fc("fc1", weight=10.0, grad=1.0, order=1),
            LayerStats(
                "relu", "ReLU", "activation", "relu", 2, units=8, unit="feature",
                dead_fraction=0.75,
            ),
        ]  # fmt: skip

    samples = run([2.3] * 10, rows)
    (f,) = not_learning.RULE.findings(ev(samples, lr=1e-2, overfit=failed(2.3, 2.3)))
    assert "frozen" in f.message and "dead units" not in f.message

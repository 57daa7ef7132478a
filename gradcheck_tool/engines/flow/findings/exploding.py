"""exploding: gradients so large that a step of the chosen optimizer would change a layer by
more than its own size, gradients that grow steadily toward the input, or (backstops) norms
that overflow, dwarf the loss's own gradient, or grow by orders of magnitude while training.
The first of these checks that fires is the finding (at most one per run)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

from ....results import LayerStats
from ..samples import label
from ._layers import (
    at_last_step,
    compared_layers,
    grad_weight,
    normalised_next,
    rms,
    signal_rms,
    steady,
    trend_detection,
    trends,
)
from ._rule import Detection, Evidence, FindingRule, Severity

FIX = (
    "Clip gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)), "
    "lower the learning rate, and check the initialization scale (He/Xavier, not N(0, 1))."
)


def _sized(ev: Evidence) -> list[tuple[LayerStats, float]]:
    """(layer, ‖g‖/‖w‖) of the weight matrices whose size matters: not the per-feature
    scales of norm layers (EfficientNet's BatchNorm gammas take steps of ~1× their size at
    batch 4 and train fine), nor embeddings, nor weights near zero by design (a
    zero-initialised head: any gradient is large next to it), nor layers normalised next
    (Note [scale-free layers] in _layers.py)."""
    floor = ev.thresholds.exploding_weight_rms
    scale_free = normalised_next(ev)
    return [
        (r, ratio)
        for r in compared_layers(ev)
        if (ratio := grad_weight(r)) is not None
        and math.isfinite(ratio)
        and r.weight_norm / math.sqrt(r.numel) >= floor
        and r.key not in scale_free
    ]


def _largest(pairs: list[tuple[LayerStats, float]]) -> tuple[LayerStats | None, float]:
    """The row with the largest value (the first of equals); (None, nan) when there is none."""
    return max(pairs, key=lambda x: x[1]) if pairs else (None, math.nan)


def _first_above(
    pairs: list[tuple[LayerStats, float]], limit: float
) -> tuple[LayerStats | None, float, int]:
    """The layer nearest the input whose value is above `limit`, its value, and how many
    layers are above it; (None, nan, 0) when none is."""
    above = [(r, v) for r, v in pairs if v > limit]
    return (*above[0], len(above)) if above else (None, math.nan, 0)


def _layers_above(count: int) -> str:
    return "" if count < 2 else f"; {count} layers are above the limit"


def _predicts_sgd_steps(ev: Evidence) -> bool:
    """flow's own SGD steps on the user's loss: lr·‖g‖/‖w‖ is the step it takes (no
    GradScaler, no clipping between backward and step)."""
    return ev.optimizer == "sgd" and bool(ev.lr) and ev.loss == "loss_fn"


def _sgd_step_too_large(ev: Evidence) -> Detection | None:
    """SGD: one step changes a layer by ‖Δw‖/‖w‖ of its size. flow predicts it, lr·‖g‖/‖w‖;
    the Monitor measures it (Note [real steps])."""
    if ev.loss is None:
        return _measured_sgd_step_too_large(ev)
    if not _predicts_sgd_steps(ev):
        return None
    th = ev.thresholds
    assert ev.lr is not None
    updates = [(r, ev.lr * ratio) for r, ratio in _sized(ev)]
    row, update, count = _first_above(updates, th.exploding_update)
    if row is None:
        return None
    return at_last_step(
        ev,
        row,
        f"gradients too large for a step: one SGD step at lr {ev.lr:.1e} would change "
        f"{label(row.name)} by {update:.1e}× its own size (‖g‖ {row.grad_norm:.2e}, "
        f"‖w‖ {row.weight_norm:.2e}; a healthy step is ~1e-03×){_layers_above(count)}",
        update,
        evidence=(
            ("lr·‖g‖/‖w‖", update),
            ("‖g‖", row.grad_norm),
            ("‖w‖", row.weight_norm),
            ("lr", ev.lr),
            ("layers above", float(count)),
        ),
        threshold=th.exploding_update,
    )


# Note [real steps]: in a real training loop (the Monitor) the recorded gradient is not the
# one the optimizer steps with: AMP's GradScaler multiplies it by its scale (65536 at
# first), gradient clipping shrinks it after backward, and a layer may sit in no param group
# or in one with its own lr. So the Monitor never predicts a step as lr·‖g‖/‖w‖: it judges
# the ‖Δw‖/‖w‖ it measured (StepSample.updates), and the gradient only by criteria a scale
# cancels out of (‖g‖/‖w‖ per unit of the loss's gradient at the output, which the scaler
# multiplies alike; trends across depth).


def _measured_sgd_step_too_large(ev: Evidence) -> Detection | None:
    """The Monitor's SGD: the last measured step's ‖Δw‖/‖w‖ (Note [real steps])."""
    if ev.optimizer != "sgd":
        return None
    sample = next((s for s in reversed(ev.samples) if s.updates), None)
    if sample is None:
        return None
    th = ev.thresholds
    updates = [
        (r, sample.updates[r.key])
        for r, _ in _sized(ev)
        if r.key in sample.updates and math.isfinite(sample.updates[r.key])
    ]
    row, update, count = _first_above(updates, th.exploding_update)
    if row is None:
        return None
    at = f" after step {sample.step}" if ev.multi else ""
    return Detection(
        row.name,
        f"steps too large: the optimizer's step{at} changed {label(row.name)} by "
        f"{update:.1e}× its own size (measured ‖Δw‖/‖w‖; a healthy step is ~1e-03×)"
        f"{_layers_above(count)}",
        key=row.key,
        value=update,
        step=sample.step,
        evidence=(("update/weight", update), ("layers above", float(count))),
        threshold=th.exploding_update,
    )


def _gradient_dwarfs_weight(ev: Evidence) -> Detection | None:
    """Adam (its step is ~lr per entry whatever the gradient), an unknown optimizer, or
    flow's projection loss (its scale is arbitrary): ‖g‖/‖w‖ per unit of the loss's
    gradient at the model output, which no choice of loss scale or lr changes; and every
    optimizer under the Monitor, whose gradients may be scaled (Note [real steps])."""
    if _predicts_sgd_steps(ev):
        return None
    th = ev.thresholds
    loss_grad = ev.last.loss_grad
    sized = _sized(ev)
    if not loss_grad or not math.isfinite(loss_grad):
        # without the loss's gradient (an output that is not a tensor): ‖g‖/‖w‖ on flow's
        # real loss; the projection's scale is arbitrary and the Monitor's gradients may be
        # scaled (Note [real steps]): the trends below still judge them
        if ev.loss != "loss_fn":
            return None
        row, ratio, count = _first_above(sized, th.exploding_grad_weight)
        if row is None:
            return None
        return at_last_step(
            ev,
            row,
            f"huge gradients: {label(row.name)}'s gradient norm {row.grad_norm:.2e} is "
            f"{ratio:.1e}× its weight norm {row.weight_norm:.2e}{_layers_above(count)}",
            ratio,
            evidence=(
                ("‖g‖/‖w‖", ratio),
                ("‖g‖", row.grad_norm),
                ("‖w‖", row.weight_norm),
                ("layers above", float(count)),
            ),
            threshold=th.exploding_grad_weight,
        )
    relative = [(r, ratio / loss_grad) for r, ratio in sized]
    row, value, count = _first_above(relative, th.exploding_relative)
    if row is None:
        return None
    return at_last_step(
        ev,
        row,
        f"huge gradients: {label(row.name)}'s gradient over its weight, "
        f"‖g‖/‖w‖ = {row.grad_norm:.2e}/{row.weight_norm:.2e}, is {value:.1e}× "
        f"the loss's gradient at the model output ({loss_grad:.2e}){_layers_above(count)}",
        value,
        evidence=(
            ("‖g‖/(‖w‖·‖∂loss/∂output‖)", value),
            ("‖g‖", row.grad_norm),
            ("‖w‖", row.weight_norm),
            ("‖∂loss/∂output‖", loss_grad),
            ("layers above", float(count)),
        ),
        threshold=th.exploding_relative,
    )


def _grows_toward_input(
    ev: Evidence, measure: Callable[[LayerStats], float | None], message: str
) -> Detection | None:
    """The steadiest large growth of `measure` along a role, first layers over last;
    `message` is formatted with the ratio and the layers' names (head, tail)."""
    th = ev.thresholds
    found = steady(trends(ev, measure), th.trend_steadiness)
    worst = max(found, key=lambda t: t.ratio, default=None)
    if worst is None or not worst.ratio > th.exploding_ratio:
        return None
    return trend_detection(ev, worst, message, "first/last RMS", th.exploding_ratio)


def _weight_gradients_grow(ev: Evidence) -> Detection | None:
    """The weight gradients of one role, first layers against last (the tutorial's plot)."""
    return _grows_toward_input(
        ev,
        rms,
        "gradients grow toward the input: the RMS gradient of {head} is "
        "{ratio:.1e}× that of {tail} (a steady rise over {layers} {type} layers)",
    )


def _backward_signal_grows(ev: Evidence) -> Detection | None:
    """The gradient at each layer's output: each layer amplifies it."""
    return _grows_toward_input(
        ev,
        signal_rms,
        "the gradient flowing backward grows toward the input: at the output "
        "of {head} it is {ratio:.1e}× (RMS) what it is at the output of {tail}",
    )


def _layers(ev: Evidence) -> list[LayerStats]:
    return [r for r in ev.last.rows if r.kind == "layer"]


def _norm_overflows(ev: Evidence) -> Detection | None:
    """A gradient norm that overflows to inf although its entries are finite."""
    overflow = [r for r in _layers(ev) if r.grad_norm is not None and math.isinf(r.grad_norm)]
    if not overflow:
        return None
    return at_last_step(
        ev,
        overflow[0],
        f"the gradient norm of {label(overflow[0].name)} overflows to "
        "inf (its entries are finite but enormous)",
        math.inf,
        evidence=(("‖g‖", math.inf),),
        threshold=math.inf,
    )


def _huge_gain(ev: Evidence) -> Detection | None:
    """A layer's gradient far larger than the loss's own gradient at the model output."""
    loss_grad = ev.last.loss_grad
    if not loss_grad:
        return None
    th = ev.thresholds
    gains = [(r, r.grad_norm / loss_grad) for r in _layers(ev) if r.grad_norm]
    huge = [(r, g) for r, g in gains if g > th.exploding_gain]
    row, gain = _largest(huge)
    if row is None:
        return None
    return at_last_step(
        ev,
        row,
        f"huge gradients: {label(row.name)}'s gradient norm "
        f"{row.grad_norm:.2e} is {gain:.1e}× the loss's gradient at the "
        f"model output ({len(huge)} layer(s) above "
        f"{th.exploding_gain:.0e}×)",
        gain,
        evidence=(("‖g‖/‖∂loss/∂output‖", gain), ("‖g‖", row.grad_norm), ("layers", len(huge))),
        threshold=th.exploding_gain,
    )


def _grew_over_steps(ev: Evidence) -> Detection | None:
    """Over --steps: a layer's gradient norm that grew by orders of magnitude. Under the
    Monitor, per unit of the loss's gradient at the output: GradScaler's scale doubles every
    2000 steps without an overflow, 1024× in 20000 (Note [real steps])."""
    if not ev.multi:
        return None
    unit0, unit1 = 1.0, 1.0
    scaled = ev.loss is None
    if scaled:
        unit0, unit1 = ev.first.loss_grad, ev.last.loss_grad
        if not unit0 or not unit1 or not math.isfinite(unit0) or not math.isfinite(unit1):
            return None
    grown = []
    for r in _layers(ev):
        a = ev.first_rows.get(r.key)
        if a is not None and a.grad_norm and r.grad_norm and math.isfinite(r.grad_norm):
            grown.append((r, (r.grad_norm / unit1) / (a.grad_norm / unit0)))
    th = ev.thresholds
    row, g = _largest([(r, g) for r, g in grown if g > th.exploding_growth])
    if row is None:
        return None
    return at_last_step(
        ev,
        row,
        f"gradients explode during training: {label(row.name)}'s "
        f"gradient norm grew {g:.1e}× from step {ev.first.step} to step "
        f"{ev.last.step}" + (" (per unit of the loss's gradient at the output)" if scaled else ""),
        g,
        evidence=(("growth", g), ("‖g‖", row.grad_norm)),
        threshold=th.exploding_growth,
    )


CHECKS = (
    _sgd_step_too_large,
    _gradient_dwarfs_weight,
    _weight_gradients_grow,
    _backward_signal_grows,
    _norm_overflows,
    _huge_gain,
    _grew_over_steps,
)


def detect(ev: Evidence) -> Iterator[Detection]:
    if ev.loss == "projection" and ev.multi:
        # flow's --steps without loss_fn trains its random projection, which has no
        # minimum: the weights grow without end and so do the gradients. Only the first
        # step measures the model as it was given
        ev = dataclasses.replace(ev, samples=ev.samples[:1])
    if ev.last.nan is not None:
        return  # after a NaN the norms say nothing
    for check in CHECKS:
        found = check(ev)
        if found is not None:
            yield found
            return


RULE = FindingRule("exploding", Severity.ERROR, {"": FIX}, detect, marks_layer_gradient=True)

"""exploding: gradients that grow toward the input, overflow, dwarf the loss's own gradient,
or grow by orders of magnitude while training. The first of these checks that fires is the
finding (at most one per run)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from ....results import LayerStats
from ..samples import label
from ._layers import at_last_step, compared_layers, early_late, weight_rms
from ._rule import Detection, Evidence, FindingRule, Severity

FIX = (
    "Clip gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)), "
    "lower the learning rate, and check the initialization scale (He/Xavier, not N(0, 1))."
)


def _grows_toward_input(
    ev: Evidence, values: list[tuple[LayerStats, float]], message: str
) -> Detection | None:
    """The earliest layers' values over the latest layers' above the exploding ratio;
    `message` is formatted with the ratio and the layers' names (head, tail)."""
    compared = early_late(values)
    if compared is None or not compared.ratio > ev.thresholds.exploding_ratio:
        return None
    text = message.format(head=compared.head, tail=compared.tail, ratio=compared.ratio)
    return at_last_step(ev, compared.row, text, compared.ratio)


def _weight_gradients_grow(ev: Evidence) -> Detection | None:
    """The weight gradients, first layers against last (the tutorial's plot)."""
    return _grows_toward_input(
        ev,
        weight_rms(ev),
        "gradients grow toward the input: the RMS gradient of {head} is "
        "{ratio:.1e}× that of {tail}",
    )


def _backward_signal_grows(ev: Evidence) -> Detection | None:
    """The gradient at each layer's output: each layer amplifies it."""
    signal = [
        (r, r.output_grad_norm / math.sqrt(r.output_numel))
        for r in compared_layers(ev)
        if r.output_grad_norm and r.output_numel and math.isfinite(r.output_grad_norm)
    ]
    return _grows_toward_input(
        ev,
        signal,
        "the gradient flowing backward grows toward the input: at the output "
        "of {head} it is {ratio:.1e}× (RMS) what it is at the output of {tail}",
    )


def _layers(ev: Evidence) -> list[LayerStats]:
    return [r for r in ev.last.rows if r.kind == "layer"]


def _largest(pairs: list[tuple[LayerStats, float]]) -> tuple[LayerStats | None, float]:
    """The row with the largest value (the first of equals); (None, nan) when there is none."""
    return max(pairs, key=lambda x: x[1]) if pairs else (None, math.nan)


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
    )


def _grew_over_steps(ev: Evidence) -> Detection | None:
    """Over --steps: a layer's gradient norm that grew by orders of magnitude."""
    if not ev.multi:
        return None
    grown = []
    for r in _layers(ev):
        a = ev.first_rows.get(r.key)
        if a is not None and a.grad_norm and r.grad_norm and math.isfinite(r.grad_norm):
            grown.append((r, r.grad_norm / a.grad_norm))
    row, g = _largest([(r, g) for r, g in grown if g > ev.thresholds.exploding_growth])
    if row is None:
        return None
    return at_last_step(
        ev,
        row,
        f"gradients explode during training: {label(row.name)}'s "
        f"gradient norm grew {g:.1e}× from step {ev.first.step} to step "
        f"{ev.last.step}",
        g,
    )


CHECKS = (
    _weight_gradients_grow,
    _backward_signal_grows,
    _norm_overflows,
    _huge_gain,
    _grew_over_steps,
)


def detect(ev: Evidence) -> Iterator[Detection]:
    if ev.last.nan is not None:
        return  # after a NaN the norms say nothing
    for check in CHECKS:
        found = check(ev)
        if found is not None:
            yield found
            return


RULE = FindingRule("exploding", Severity.ERROR, {"": FIX}, detect, marks_layer_gradient=True)

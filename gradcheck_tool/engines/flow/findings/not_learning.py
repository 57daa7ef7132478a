"""not_learning: the overfit-one-batch check failed (the loss did not approach zero on one
batch) although the loss and the gradients stayed finite and did not explode; with the
likely reasons, strongest first.

A reason is named only with evidence past its threshold, and ranked by how far past it is
(its `strength`: the measured value over the threshold, or the threshold over the measured
value for "too small"; 1 + the fraction of parameters for unreached layers). Without
any reason there is no finding: a healthy model that needs more steps only gets the overfit
line's advice; nor is there one while the loss still falls fast (it halved over the last
quarter of the steps): that model is learning and needs more steps.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from typing import Callable, NamedTuple

from ....results import LayerStats
from ..samples import label
from ._divergence import (
    HEALTHY_UPDATE,
    before_trouble,
    find_blow_up,
    first_nonfinite,
    growth,
    number,
    update_ratios,
)
from ._rule import Detection, Evidence, FindingRule, Severity, percent
from ._zero_init import without_gradient
from .dead_relu import beyond_chance

FIX = (
    "Act on the first reason: raise the learning rate (or train longer) when updates are "
    "tiny; unfreeze layers meant to train (requires_grad_(True), and pass them to the "
    "optimizer); make the loss use every output it should train; for dead or saturated "
    "units see those findings."
)


class Reason(NamedTuple):
    strength: float  # how far past its threshold (see the module docstring)
    text: str
    evidence: tuple[tuple[str, float], ...]
    layer: str | None = None
    key: str | None = None


def _names(names: list[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _updates_too_small(ev: Evidence) -> Reason | None:
    """Each layer's typical (median) ‖Δw‖/‖w‖ per step; even the largest is tiny."""
    per_layer: dict[str, list[float]] = {}
    names: dict[str, str] = {}
    for i in range(len(ev.samples) - 1):
        for row, how, ratio in update_ratios(ev, i):
            if how != "weights":  # a lower bound proves nothing about being small
                per_layer.setdefault(row.key, []).append(ratio)
                names[row.key] = row.name
    if not per_layer:
        return None
    key, largest = max(
        ((k, statistics.median(v)) for k, v in per_layer.items()), key=lambda kv: kv[1]
    )
    limit = ev.thresholds.not_learning_update
    if not largest < limit:
        return None
    lr = f" at lr {ev.lr:g}" if ev.lr else ""
    suggest = f"; try lr ≈ {ev.lr * HEALTHY_UPDATE / largest:.0e}" if ev.lr and largest else ""
    return Reason(
        limit / largest if largest else math.inf,
        f"learning rate too small: per step no layer's weights move by more than "
        f"{number(largest)} of their norm ({label(names[key])} most; healthy ≈ 1e-3)"
        f"{lr}{suggest}",
        (("update/weight", largest), *((("lr", ev.lr),) if ev.lr else ())),
        names[key],
        key,
    )


def _fraction_reason(
    field: str, limit: Callable[[LayerStats], float], what: str, noun: str
) -> Callable[[Evidence], Reason | None]:
    """The activation rows whose `field` is past the limit its own rule uses for that row."""

    def reason(ev: Evidence) -> Reason | None:
        rows = [
            (r, getattr(r, field) / limit(r))
            for r in ev.last.rows
            if r.kind == "activation" and (getattr(r, field) or 0.0) > limit(r)
        ]
        if not rows:
            return None
        worst, past = max(rows, key=lambda x: x[1])
        fraction = getattr(worst, field)
        return Reason(
            past,
            f"{what}: {percent(fraction)} of the {noun} of {worst.display_name}"
            + (f" (and {len(rows) - 1} more activation(s))" if len(rows) > 1 else ""),
            ((f"{field} {worst.key}", fraction),),
            worst.name,
            worst.key,
        )

    return reason


def _dead(ev: Evidence) -> Reason | None:
    """Dead units as dead_relu counts them: beyond what chance gives a layer of that size."""
    limit = ev.thresholds.dead_fraction
    return _fraction_reason(
        "dead_fraction", lambda r: beyond_chance(limit, r.units), "dead units", "units"
    )(ev)


def _saturated(ev: Evidence) -> Reason | None:
    limit = ev.thresholds.saturated_fraction
    return _fraction_reason("saturated_fraction", lambda r: limit, "saturated units", "outputs")(ev)


def _frozen(ev: Evidence) -> Reason | None:
    """Frozen layers holding most (`not_learning_frozen`) of the parameters."""
    layers = [r for r in ev.last.rows if r.kind == "layer"]
    frozen = [r for r in layers if r.frozen]
    total = sum(r.numel for r in layers)
    if not frozen or not total:
        return None
    share = sum(r.numel for r in frozen) / total
    limit = ev.thresholds.not_learning_frozen
    if share < limit:
        return None
    return Reason(
        share / limit,
        f"frozen layers (requires_grad=False) hold {percent(share)} of the parameters: "
        f"{_names([label(r.name) for r in frozen])}",
        (("frozen share", share),),
        frozen[0].name,
        frozen[0].key,
    )


def _unreached(ev: Evidence) -> Reason | None:
    """Trainable parameters without gradient at every step before anything went wrong: a
    loss that ignores part of the output, or a cut graph. Not those whose gradient is zero by
    design (Note [zero-initialised branches] in _zero_init.py), nor those a step reached."""
    kept = before_trouble(ev)
    last = kept[-1]
    always = set.intersection(
        *({(layer, p) for layer, names, _ in without_gradient(s) for p in names} for s in kept)
    )
    params = [(layer, p) for layer, names, _ in without_gradient(last) for p in names]
    params = [lp for lp in params if lp in always]
    if not params:
        return None
    numel = {r.key: r.numel for r in last.rows if r.kind == "layer"}
    total = sum(r.numel for r in last.rows if r.kind == "layer" and not r.frozen) or 1
    layers = list(dict.fromkeys(layer for layer, _ in params))
    share = min(1.0, sum(numel.get(label(layer), 0) for layer in layers) / total)
    return Reason(
        1.0 + share,
        f"the loss does not reach {_names([p for _, p in params])} (no gradient: a loss "
        "that ignores part of the output, or a cut graph)",
        (("unreached share", share),),
        layers[0],
        label(layers[0]),
    )


def _loss_rose(ev: Evidence) -> Reason | None:
    """The last loss `not_learning_loss_rise` (1.5×) or more above the lowest one."""
    losses = [s.loss for s in ev.samples if s.loss is not None]
    if len(losses) < 2:
        return None
    low, last = min(losses), losses[-1]
    rise, limit = growth(last, low), ev.thresholds.not_learning_loss_rise
    if rise < limit:
        return None
    return Reason(
        rise / limit,
        f"the loss rose ({number(low)} at its lowest → {number(last)}): the learning rate may "
        "be too large",
        (("loss rise", rise), ("lowest loss", low)),
    )


REASONS: tuple[Callable[[Evidence], Reason | None], ...] = (
    _updates_too_small,
    _dead,
    _saturated,
    _frozen,
    _unreached,
    _loss_rose,
)


def _finite_and_calm(ev: Evidence) -> bool:
    """Finite losses and gradients, no gradient grown by orders of magnitude."""
    if first_nonfinite(ev) is not None or find_blow_up(ev) is not None:
        return False
    first = {r.key: r.grad_norm for r in ev.first.rows if r.kind == "layer"}
    for s in ev.samples:
        for r in s.rows:
            g = r.grad_norm
            if r.kind != "layer" or g is None:
                continue
            if not math.isfinite(g):
                return False
            g0 = first.get(r.key)
            if g0 and g / g0 > ev.thresholds.exploding_growth:
                return False
    return True


def _still_falling(ev: Evidence) -> bool:
    """The loss fell to `still_falling` (half) or less over the last quarter of the steps:
    it is learning and needs more steps, whatever else the run shows."""
    losses = [s.loss for s in ev.samples if s.loss is not None]
    k = max(1, len(losses) // 4)  # steps in the last quarter
    if len(losses) <= k or not losses[-1 - k] > 0:
        return False
    return losses[-1] <= ev.thresholds.still_falling * losses[-1 - k]


def detect(ev: Evidence) -> Iterator[Detection]:
    verdict = ev.overfit
    if verdict is None or not verdict.applicable or verdict.reached is not False:
        return
    if not _finite_and_calm(ev) or _still_falling(ev):
        return
    reasons = sorted(
        (r for check in REASONS if (r := check(ev)) is not None),
        key=lambda r: r.strength,
        reverse=True,
    )
    if not reasons:
        return
    first, last = verdict.first_loss, verdict.last_loss
    ranked = "; ".join(f"({i}) {r.text}" for i, r in enumerate(reasons, 1))
    top = reasons[0]
    yield Detection(
        top.layer if top.layer is not None else "(loss)",
        f"the loss went from {number(first)} to {number(last)} in {len(ev.samples)} steps, not "
        f"near zero, with finite gradients. Likely reasons, strongest first: {ranked}",
        key=top.key,
        value=last,
        step=ev.last.step,
        # the threshold is the overfit check's "near zero", which the last loss missed
        evidence=(("last loss", last), *(e for r in reasons for e in r.evidence)),
        threshold=max(ev.thresholds.overfit_absolute, ev.thresholds.overfit_fraction * first),
    )


RULE = FindingRule("not_learning", Severity.WARNING, {"": FIX}, detect)

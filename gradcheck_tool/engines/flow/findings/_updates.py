"""What update_too_large and update_too_small both read: each compared layer's update/weight
ratios ‖Δw‖/‖w‖ over the observed optimizer steps (StepSample.updates)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator

from ..samples import ROOT
from ._rule import Detection, Evidence
from ._zero_init import zero_init_after


def layer_ratios(ev: Evidence) -> dict[str, list[float]]:
    """Row key -> its finite update ratios, oldest first, for the trainable weight matrices
    (not embeddings nor norm layers: their ‖w‖ says little about one step's size)."""
    frozen = {r.key for r in ev.last.rows if r.frozen}
    out: dict[str, list[float]] = {}
    for s in ev.samples:
        for key, ratio in s.updates.items():
            if key in ev.comparable_keys and key not in frozen and math.isfinite(ratio):
                out.setdefault(key, []).append(ratio)
    return out


def _gated(ev: Evidence) -> set[str]:
    """Keys of the layers behind one zero-initialised (or near zero: RMS below
    `exploding_weight_rms`) at the first step: their steps stay tiny until it grows
    (Note [zero-initialised branches] in _zero_init.py)."""
    first, rms = ev.first, ev.thresholds.exploding_weight_rms  # near zero by design
    return {r.key for r in first.rows if r.kind == "layer" and zero_init_after(first, r.name, rms)}


def _streak(ratios: list[float], beyond: Callable[[float], bool]) -> int:
    """The longest run of consecutive steps beyond the limit."""
    best = run = 0
    for r in ratios:
        run = run + 1 if beyond(r) else 0
        best = max(best, run)
    return best


EARLY = "early steps"  # Detection.where of a run of large steps that only counts with damage


def far_from_healthy(
    ev: Evidence, limit: float, beyond: Callable[[float], bool], kind: str
) -> Iterator[Detection]:
    """One detection when some layers' ratios are beyond `limit` at enough of the observed
    steps (at least `update_min_steps`, and `update_steps_fraction` of them): it names the
    layer with the most extreme median, and counts the others.

    Failing that, for large updates, a run of `update_min_steps` consecutive steps beyond the
    limit (a run without warm-up: the first steps do the damage, later smaller ones bring the
    median down) is a detection marked `where=EARLY`: healthy runs at a high Adam lr have such
    runs too and still fit, so it stays a finding only where the findings absent before the
    first update (dead units, vanishing gradients) are its consequences (consequences.py).

    Too small only when most of the judged layers are (the learning rate is the model's), or
    when no layer's median reaches `update_small_everywhere` (1/100 of the healthy rate),
    never for the layers behind a zero-initialised one (zero_init_last); nothing on flow's
    projection loss (it has no minimum: its steps grow without end)."""
    if ev.loss == "projection":
        return  # flow trains its random projection, which has no minimum: no step is healthy
    th = ev.thresholds
    gated = _gated(ev) if kind == "small" else set()
    flagged: list[tuple[float, str, int, int]] = []  # median, key, steps beyond, steps seen
    early: list[tuple[float, str, int, int]] = []  # peak, key, longest run, steps seen
    judged = {key: ratios for key, ratios in layer_ratios(ev).items() if key not in gated}
    for key, ratios in judged.items():
        n_beyond = sum(1 for r in ratios if beyond(r))
        if n_beyond >= th.update_min_steps and n_beyond >= th.update_steps_fraction * len(ratios):
            flagged.append((statistics.median(ratios), key, n_beyond, len(ratios)))
        elif kind == "large" and (run := _streak(ratios, beyond)) >= th.update_min_steps:
            early.append((max(ratios), key, run, len(ratios)))
    if kind == "small" and len(flagged) < th.update_steps_fraction * len(judged):
        # a learning rate is too small for the model, not for one layer: a few layers that
        # barely move while most do (a BERT's key weights at init, whose gradients are tiny
        # while attention is near uniform) are not this finding; unless no layer moves at
        # even 1/100 of the healthy rate
        flagged = []
        medians = {key: statistics.median(ratios) for key, ratios in judged.items() if ratios}
        enough = bool(medians) and min(map(len, judged.values())) >= th.update_min_steps
        if enough and max(medians.values()) < th.update_small_everywhere:
            yield _everywhere(ev, medians, th.update_small_everywhere)
            return
    with_what = f" ({ev.optimizer}, lr {ev.lr:g})" if ev.optimizer and ev.lr is not None else ""
    if flagged:
        median, key, n_beyond, n_seen = (max if kind == "large" else min)(flagged)
        others = len(flagged) - 1
        yield Detection(
            "" if key == ROOT else key,
            f"the optimizer's updates are too {kind}{with_what}: each step changes {key}'s "
            f"weights by {median:.1e} of their norm (median ‖Δw‖/‖w‖; beyond {limit:.0e} at "
            f"{n_beyond} of {n_seen} steps; healthy ≈ 1e-3)" + _others(others),
            key=key,
            value=median,
            step=ev.last.step,
            evidence=(
                ("median update/weight", median),
                ("steps beyond", float(n_beyond)),
                ("steps seen", float(n_seen)),
                ("layers beyond", float(len(flagged))),
            ),
            threshold=limit,
        )
    elif early:
        peak, key, run, n_seen = max(early)
        yield Detection(
            "" if key == ROOT else key,
            f"the optimizer's first updates were too large{with_what}: {run} steps in a row "
            f"changed {key}'s weights by more than {limit:.0e} of their norm (up to {peak:.1e}; "
            "healthy ≈ 1e-3)" + _others(len(early) - 1),
            key=key,
            value=peak,
            step=ev.last.step,
            where=EARLY,
            evidence=(
                ("largest update/weight", peak),
                ("steps in a row", float(run)),
                ("steps seen", float(n_seen)),
                ("layers beyond", float(len(early))),
            ),
            threshold=limit,
        )


def _others(n: int) -> str:
    return f", and {n} other layer{'s' if n > 1 else ''} too" if n else ""


def _everywhere(ev: Evidence, medians: dict[str, float], limit: float) -> Detection:
    """Too small for every layer: even the fastest moves at under 1/100 of the healthy rate."""
    key = max(medians, key=medians.__getitem__)
    fastest = medians[key]
    with_what = f" ({ev.optimizer}, lr {ev.lr:g})" if ev.optimizer and ev.lr is not None else ""
    return Detection(
        "" if key == ROOT else key,
        f"the optimizer's updates are too small{with_what}: no layer moves by more than "
        f"{fastest:.1e} of its norm per step (median ‖Δw‖/‖w‖ of the fastest, {key}; "
        f"healthy ≈ 1e-3), in all {len(medians)} layers",
        key=key,
        value=fastest,
        step=ev.last.step,
        evidence=(
            ("fastest layer's median update/weight", fastest),
            ("layers", float(len(medians))),
        ),
        threshold=limit,
    )

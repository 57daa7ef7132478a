"""What update_too_large and update_too_small both read: each compared layer's update/weight
ratios ‖Δw‖/‖w‖ over the observed optimizer steps (StepSample.updates)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator

from ..samples import ROOT
from ._rule import Detection, Evidence


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


def far_from_healthy(
    ev: Evidence, limit: float, beyond: Callable[[float], bool], kind: str
) -> Iterator[Detection]:
    """One detection when some layers' ratios are beyond `limit` at enough of the observed
    steps (at least `update_min_steps`, and `update_steps_fraction` of them): it names the
    layer with the most extreme median, and counts the others."""
    th = ev.thresholds
    flagged: list[tuple[float, str, int, int]] = []  # median, key, steps beyond, steps seen
    for key, ratios in layer_ratios(ev).items():
        n_beyond = sum(1 for r in ratios if beyond(r))
        if n_beyond >= th.update_min_steps and n_beyond >= th.update_steps_fraction * len(ratios):
            flagged.append((statistics.median(ratios), key, n_beyond, len(ratios)))
    if not flagged:
        return
    median, key, n_beyond, n_seen = (max if kind == "large" else min)(flagged)
    others = len(flagged) - 1
    layer = "" if key == ROOT else key
    with_what = f" ({ev.optimizer}, lr {ev.lr:g})" if ev.optimizer and ev.lr is not None else ""
    yield Detection(
        layer,
        f"the optimizer's updates are too {kind}{with_what}: each step changes {key}'s "
        f"weights by {median:.1e} of their norm (median ‖Δw‖/‖w‖; beyond {limit:.0e} at "
        f"{n_beyond} of {n_seen} steps; healthy ≈ 1e-3)"
        + (f", and {others} other layer{'s' if others > 1 else ''} too" if others else ""),
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

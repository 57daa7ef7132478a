"""What the diverging and not_learning rules and the consequences pass read: when the loss
blew up, how much, and how large each layer's updates were. No torch.

Note [divergence]
A run diverged when its loss grew by orders of magnitude and stayed up, or became non-finite
after growing. Growth is measured from the lowest loss before the peak, as a factor
1 + (peak - low) / |low| (the plain ratio for positive losses; defined for losses that go
negative). Either

- finite: the factor reaches `diverging_growth` (100×), the last loss is still
  `diverging_recovered` (10×) above that low point, and it is not "near zero" by the
  overfit check's measure (a loss that spikes from 1e-4 to 1e-2 while memorising a batch
  has not diverged); or
- non-finite: the loss (or any value of the step) became NaN/Inf at a later step than the
  first, after growing `diverging_nonfinite_growth` (10×), or right after an update as
  large as the weights it changed (‖Δw‖/‖w‖ ≥ `diverging_update`).

A NaN at the first step, or one the loss did not grow into, is not a divergence: it is the
`nan` finding's (log(0), 0/0). Steps without a loss (a Monitor that was not given one) are
skipped; with no loss at all nothing diverges. Everything measured after the lowest loss
before the blow-up is suspect: the consequences pass (findings/consequences.py) reads the
steps up to that low point as "before anything went wrong".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ....results import LayerStats
from ..samples import StepSample
from ._rule import Evidence

HEALTHY_UPDATE = 1e-3  # the rule of thumb: each step moves a weight by ~1e-3 of its size


@dataclass(frozen=True)
class BlowUp:
    """Where and how much the loss blew up (Note [divergence])."""

    low: StepSample  # the lowest loss before the peak: the last step before things went wrong
    low_loss: float
    crossed: StepSample  # the first step past the threshold: the step the finding names
    peak: StepSample  # the highest finite loss after `low`
    peak_loss: float
    growth: float  # peak over low (the factor of Note [divergence])
    threshold: float  # the growth (or, for `by_update`, the ‖Δw‖/‖w‖) it had to reach
    nonfinite: StepSample | None = None  # the step the values became NaN/Inf, if they did
    by_update: bool = False  # non-finite right after a huge update, without loss growth
    update: float | None = None  # for `by_update`: the largest ‖Δw‖/‖w‖ of that update


def number(x: float) -> str:
    """A loss or ratio as messages write it: 3 significant digits, 1.5e+05 when large."""
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.1e}"


def growth(loss: float, low: float) -> float:
    """How many times `loss` is above `low` (Note [divergence]); 1.0 when it is not above."""
    if loss <= low:
        return 1.0
    return 1.0 + (loss - low) / (abs(low) or 1.0)


def first_nonfinite(ev: Evidence) -> int | None:
    """The index of the first sample with a non-finite value (NaN site or loss)."""
    for i, s in enumerate(ev.samples):
        if s.nan is not None or (s.loss is not None and not math.isfinite(s.loss)):
            return i
    return None


def before_trouble(ev: Evidence) -> list[StepSample]:
    """The samples before anything went wrong: before the first non-finite value and after
    no step past a blow-up's low point; at least the first sample."""
    bad = first_nonfinite(ev)
    kept = list(ev.samples[:bad] if bad is not None else ev.samples)
    blow = find_blow_up(ev)
    if blow is not None:
        kept = [s for s in kept if s.step <= blow.low.step]
    return kept or [ev.first]


def find_blow_up(ev: Evidence) -> BlowUp | None:
    """The divergence of Note [divergence], or None."""
    bad = first_nonfinite(ev)
    finite = ev.samples[:bad] if bad is not None else ev.samples
    series = [(i, s, s.loss) for i, s in enumerate(finite) if s.loss is not None]
    if not series:
        return None
    th = ev.thresholds
    # the peak: the loss furthest above the lowest loss before it
    low_at = series[0]
    best = (1.0, series[0], series[0])  # (growth, low, peak)
    lows = []
    for item in series:
        if item[2] < low_at[2]:
            low_at = item
        lows.append(low_at)
        g = growth(item[2], low_at[2])
        if g > best[0]:
            best = (g, low_at, item)
    g, low, peak = best

    def crossing(limit: float) -> StepSample:
        return next(
            s for (_, s, x), lo in zip(series, lows) if lo is low and growth(x, low[2]) >= limit
        )

    if bad is not None and bad > 0 and ev.samples[bad].loss is not None:
        nonfinite = ev.samples[bad]
        if g >= th.diverging_nonfinite_growth:
            limit = th.diverging_nonfinite_growth
            return BlowUp(low[1], low[2], crossing(limit), peak[1], peak[2], g, limit, nonfinite)
        ratios = [r for _, _, r in update_ratios(ev, bad - 1)]
        if ratios and max(ratios) >= th.diverging_update:
            # no loss growth to speak of: the last finite step is the low point
            last = series[-1]
            return BlowUp(
                last[1],
                last[2],
                nonfinite,
                last[1],
                last[2],
                growth(last[2], last[2]),
                th.diverging_update,
                nonfinite,
                by_update=True,
                update=max(ratios),
            )
        return None
    if bad is not None or g < th.diverging_growth:
        return None
    end = series[-1][2]
    if growth(end, low[2]) < th.diverging_recovered:
        return None  # it came back down: a spike, not a divergence
    start = series[0][2]
    if start > 0 and end <= max(th.overfit_absolute, th.overfit_fraction * start):
        return None  # still "near zero" by the overfit check's measure
    limit = th.diverging_growth
    return BlowUp(low[1], low[2], crossing(limit), peak[1], peak[2], g, limit)


# --- update sizes ------------------------------------------------------------------------


def _rows(sample: StepSample) -> dict[str, LayerStats]:
    return {r.key: r for r in sample.rows if r.kind == "layer"}


def update_ratios(ev: Evidence, i: int) -> list[tuple[LayerStats, str, float]]:
    """Each trainable layer's ‖Δw‖/‖w‖ for the update applied after sample `i`, in forward
    order, with how it is known: "measured" (`StepSample.updates`), "sgd" (lr·‖g‖/‖w‖: plain
    SGD's update exactly, without momentum), "adam" (lr·√n/‖w‖: Adam moves each entry by
    about lr at most), "weights" (|‖w'‖ - ‖w‖|/‖w‖ from the next step's weight norm: a lower
    bound). The largest of the estimates; layers without a weight norm are left out."""
    sample = ev.samples[i]
    measured = sample.updates or None  # empty: no optimizer step measured after this one
    after = _rows(ev.samples[i + 1]) if i + 1 < len(ev.samples) else {}
    opt = (ev.optimizer or "").lower()
    out: list[tuple[LayerStats, str, float]] = []
    for r in sample.rows:
        if r.kind != "layer" or r.frozen:
            continue
        if measured is not None:
            if r.key in measured and measured[r.key] is not None:
                out.append((r, "measured", measured[r.key]))
            continue
        w = r.weight_norm
        if not w or not math.isfinite(w):
            continue
        estimates: list[tuple[str, float]] = []
        nxt = after.get(r.key)
        if nxt is not None and nxt.weight_norm is not None:
            w1 = nxt.weight_norm
            estimates.append(("weights", abs(w1 - w) / w if math.isfinite(w1) else math.inf))
        if ev.lr and opt == "sgd" and r.grad_norm is not None and math.isfinite(r.grad_norm):
            estimates.append(("sgd", ev.lr * r.grad_norm / w))
        elif ev.lr and opt.startswith("adam") and r.numel:
            estimates.append(("adam", ev.lr * math.sqrt(r.numel) / w))
        if estimates:
            how, value = max(estimates, key=lambda e: e[1])
            out.append((r, how, value))
    return out


@dataclass(frozen=True)
class LayerUpdate:
    """One layer's update after one step."""

    sample: StepSample
    row: LayerStats
    how: str
    ratio: float
    huge: bool  # past `update_blowup`; else the largest update as the loss began to rise


def first_large_update(ev: Evidence, blow: BlowUp) -> LayerUpdate | None:
    """The layer whose update/weight ratio blew up first: the first update (up to the peak)
    in which a layer passed `update_blowup`, the largest of that update; failing that, the
    largest of the update that started the rise (after the low point)."""
    index = {id(s): i for i, s in enumerate(ev.samples)}
    end = index[id(blow.nonfinite or blow.peak)]
    for i in range(end):
        ratios = update_ratios(ev, i)
        big = [x for x in ratios if x[2] >= ev.thresholds.update_blowup]
        if big:
            row, how, ratio = max(big, key=lambda x: x[2])
            return LayerUpdate(ev.samples[i], row, how, ratio, True)
    ratios = update_ratios(ev, index[id(blow.low)])
    if not ratios:
        return None
    row, how, ratio = max(ratios, key=lambda x: x[2])
    return LayerUpdate(blow.low, row, how, ratio, False)

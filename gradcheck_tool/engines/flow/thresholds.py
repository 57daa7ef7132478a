"""When a measurement becomes a finding: the thresholds every finding rule reads. No torch."""

from __future__ import annotations

from dataclasses import dataclass

# Within 1% of the output range of an asymptote, sigmoid and tanh pass at most ~4% of their
# peak derivative: sigmoid' = s(1-s) ≤ 0.0099 at s=0.99 (peak 0.25); tanh' = 1-y² ≤ 0.0396
# at |y|=0.98 (peak 1).
SATURATION_MARGIN = 0.01


@dataclass(frozen=True)
class FlowThresholds:
    """When a measurement becomes a finding. Ratios compare RMS gradients (norm/√numel),
    so layers of different sizes compare fairly."""

    vanishing_ratio: float = 1e-3  # earliest layers' RMS gradient / latest layers'
    exploding_ratio: float = 1e3  # the same ratio, the other way: growing toward the input
    # a layer's gradient norm over the norm of the loss's gradient at the model output: how
    # much the network amplifies the loss signal (healthy nets: 1 to ~1e3)
    exploding_gain: float = 1e6
    exploding_growth: float = 1e3  # a layer's gradient norm grew this much over --steps
    dead_fraction: float = 0.5  # the tutorial: above 50% dead is "dying ReLUs"
    saturated_fraction: float = 0.5
    saturation_margin: float = SATURATION_MARGIN
    overfit_fraction: float = 0.01  # "near zero": last loss ≤ 1% of the first ...
    overfit_absolute: float = 1e-3  # ... or ≤ 1e-3
    # Training-loop bugs seen through the optimizer's steps (optim_watch.py):
    # grad_not_zeroed: at least this fraction of the checked steps added to the previous
    # step's gradient (a loop that never zeroes: all of them; one that zeroes every k: (k-1)/k)
    grad_not_zeroed_fraction: float = 0.5
    # not_updated: a zero lr or an unchanged parameter at this many observed steps (a
    # parameter in no param group: at the first); one step could be a warm-up's lr 0
    not_updated_steps: int = 2
    # update_too_large / _small: ‖Δw‖/‖w‖ of a weight matrix beyond these at least
    # update_min_steps times and at update_steps_fraction of the observed steps. From
    # benchmarks/update_ratios.py (6 models × SGD 0.01/0.1/momentum, Adam 1e-4/1e-3, AdamW):
    # healthy per-layer medians 3.5e-5 to 5.7e-2 (single steps up to 0.11; Adam's first step
    # is lr/RMS(w), ~0.1 for a 4096-wide layer at 1e-3); SGD lr 10: the largest layer median
    # 0.33 to 45; SGD 1e-6 and Adam 1e-7: the smallest 1.3e-9 to 4.6e-7. Both limits sit
    # ≥ 3× outside the healthy medians.
    update_too_large: float = 0.2
    update_too_small: float = 1e-6
    update_min_steps: int = 3
    update_steps_fraction: float = 0.5

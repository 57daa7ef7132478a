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
    # calibrated vanishing/exploding (#12): benchmarks/flow_calibration.py on 17 healthy and
    # 9 broken models, its output in benchmarks/results/flow_calibration.txt; in brackets the
    # healthy worst / the broken least of that criterion there. Layers normalised next and
    # near-zero weights are left out (Note [scale-free layers] in findings/_layers.py).
    # SGD on a real loss: lr·‖g‖/‖w‖, one step's size against the layer's [7.8e-2 / 42]; in
    # the script's 12-step runs every first step ≥ 1.0 blew up and none ≤ 0.42 did (healthy
    # models at lr 0.1: ≤ 0.16): 0.65 is the geometric middle of 0.42 and 1.0
    exploding_update: float = 0.65
    # Adam, an unknown optimizer or the projection loss: ‖g‖/(‖w‖·‖∂loss/∂output‖) [16 /
    # 6.9e3] ... or ‖g‖/‖w‖ on a real loss where the loss's gradient is unknown [7.8 / 4.2e3]
    exploding_relative: float = 4e2
    exploding_grad_weight: float = 2e2
    exploding_weight_rms: float = 1e-4  # weights below this RMS are near zero by design
    trend_steadiness: float = 0.5  # |net change| / total change of log RMS along a role
    # vanishing_ratio (1e-3) and exploding_ratio (1e3) above judge steady trends along a role:
    # first/last RMS weight gradient [1.0e-2 / 2.1e-6]; growth, also of the backward signal
    # [1.0e2 / 8.6e3]
    dead_fraction: float = 0.5  # the tutorial: above 50% dead is "dying ReLUs"
    saturated_fraction: float = 0.5
    saturation_margin: float = SATURATION_MARGIN
    overfit_fraction: float = 0.01  # "near zero": last loss ≤ 1% of the first ...
    overfit_absolute: float = 1e-3  # ... or ≤ 1e-3
    # Root cause first (diverging, not_learning; Note [divergence] in findings/_divergence.py).
    # A loss that grew 100× above its lowest value (two orders of magnitude; healthy runs that
    # rise briefly stay within a few ×) and still sits 10× above it at the last step ...
    diverging_growth: float = 1e2
    diverging_recovered: float = 10.0
    # ... or that became non-finite after growing 10× (or after an update as large as the
    # weights it changed: ‖Δw‖/‖w‖ ≥ 1, i.e. ~1000× the healthy ~1e-3)
    diverging_nonfinite_growth: float = 10.0
    diverging_update: float = 1.0
    # the layer "whose update blew up first": the first whose ‖Δw‖/‖w‖ passed 0.1 (100× the
    # ~1e-3 rule of thumb)
    update_blowup: float = 0.1
    # not_learning: updates this small per step (10× below ~1e-3) cannot fit a batch in a
    # few dozen steps
    not_learning_update: float = 1e-4
    # ... frozen layers are a reason only when they hold most of the parameters (a frozen
    # pretrained embedding, a head-only fine-tune: meant, and the rest still learns) ...
    not_learning_frozen: float = 0.5
    # ... a rising loss only when it ends 1.5× above its lowest value (dropout's noise moves
    # a loss a few percent either way)
    not_learning_loss_rise: float = 1.5
    # ... and a loss that still halves over the last quarter of the steps is learning, only
    # not done yet: no not_learning finding
    still_falling: float = 0.5
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
    # ... for most layers (a learning rate is the model's), or every layer's median below
    # this: no layer moves at 1/100 of the healthy rate (healthy runs: the fastest layer's
    # median 4.6e-4 at least; Adam at 1e-7: at most 1.3e-6, a wide MLP's fastest layer)
    update_small_everywhere: float = 1e-5
    update_min_steps: int = 3
    update_steps_fraction: float = 0.5

"""One measured step on the host, as the finding rules read it: its rows, the first
non-finite value, the parameters without gradient. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ...results import LayerStats

ROOT = "(model)"  # how the model itself is named where named_modules() says ""
# why a parameter is in StepSample.no_grad when backward reached it with zeros
ZERO_GRADIENT = "gradient exactly zero on this batch"


def label(name: str) -> str:
    """A module's name as the user reads it: the model itself is "(model)"."""
    return name or ROOT


@dataclass
class NanSite:
    """Where the first non-finite value of a step appeared, and how to say it."""

    where: str  # "forward" | "backward" | "loss" | "inputs"
    layer: str
    message: str


class UpdateStatus(str, Enum):
    """What the optimizer step after a step did to a parameter that had a nonzero gradient."""

    UPDATED = "updated"
    NOT_IN_OPTIMIZER = "not_in_optimizer"  # in no param group of the optimizers that stepped
    LR_ZERO = "lr_zero"  # its param group's learning rate is 0
    GRAD_GONE = "grad_gone"  # its .grad was None when the optimizer stepped
    UNCHANGED = "unchanged"  # stepped with a gradient, yet the weights did not move
    # did not move, but lr·max|g| was below the resolution of the weights' dtype at max|w|
    # (an SGD step would round away): not a sign that the step failed
    BELOW_RESOLUTION = "below_resolution"


@dataclass
class StepSample:
    """What one step measured, read back and named."""

    step: int
    loss: float | None
    rows: list[LayerStats]
    nan: NanSite | None
    no_grad: list[tuple[str, list[str], str]] = field(default_factory=list)  # layer, params, why
    loss_grad: float | None = None  # norm of the loss's gradient at the model output
    # The optimizer step after this step, where one was observed (optim_watch.py):
    updates: dict[str, float] = field(default_factory=dict)  # row key -> ‖Δw‖/‖w‖
    # parameter -> what the step did to it (and its param group), for parameters with a
    # nonzero gradient at this step
    param_updates: dict[str, tuple[UpdateStatus, int | None]] = field(default_factory=dict)
    # The optimizer step before this step (Monitor): how many parameters' .grad were checked
    # at this backward, and those still holding that step's gradient (never zeroed)
    zeroing_checked: int = 0
    stale_grads: list[str] = field(default_factory=list)
    # whether an optimizer stepped after this step (Monitor; None where not observed): a step
    # with non-finite gradients that none applied was skipped, as GradScaler does on overflow
    stepped: bool | None = None

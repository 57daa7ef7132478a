"""One measured step on the host, as the finding rules read it: its rows, the first
non-finite value, the parameters without gradient. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class StepSample:
    """What one step measured, read back and named."""

    step: int
    loss: float | None
    rows: list[LayerStats]
    nan: NanSite | None
    no_grad: list[tuple[str, list[str], str]] = field(default_factory=list)  # layer, params, why
    loss_grad: float | None = None  # norm of the loss's gradient at the model output

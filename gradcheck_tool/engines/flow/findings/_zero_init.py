"""Zero gradients by design: what no_grad, not_learning and update_too_small all exempt.
No torch.

Note [zero-initialised branches]: a layer whose weights are all zero at init (the last
BatchNorm of a residual branch under timm's and torchvision's `zero_init_last`, a
zero-initialised head) passes no gradient to the layers before it in its branch, so theirs
is exactly zero at the first step and tiny for the first steps after (its weights grow by
lr·‖g‖ a step; ConvNeXt's layer scale, 1e-6 at init, acts alike). That is by design, not a
cut graph nor a learning rate too small: the layer itself gets a gradient, and the gradient
flows as it grows."""

from __future__ import annotations

import math

from ..samples import ZERO_GRADIENT, StepSample


def zero_init_after(sample: StepSample, layer: str, rms: float = 0.0) -> bool:
    """A trainable layer after `layer` (in forward order, or a module containing it) whose
    weights are all zero in `sample` (or of RMS at most `rms`: ConvNeXt's layer scale starts
    at 1e-6) gets a gradient (Note [zero-initialised branches])."""
    rows = [r for r in sample.rows if r.kind == "layer"]
    order = next((r.order for r in rows if r.name == layer), None)
    return order is not None and any(
        (r.order > order or _contains(r.name, layer))
        and r.weight_norm is not None
        and r.weight_norm <= rms * math.sqrt(r.numel)
        and r.grad_norm
        and not r.frozen
        for r in rows
    )


def _contains(parent: str, layer: str) -> bool:
    """`parent` is a module above `layer`: its own parameters (ConvNeXt's block-level layer
    scale) act on what `layer` computes, after it, though the parent is ordered first."""
    return parent != layer and (parent == "" or layer.startswith(parent + "."))


def without_gradient(sample: StepSample) -> list[tuple[str, list[str], str]]:
    """`sample.no_grad` (layer, its parameters, why) less the gradients exactly zero by
    design (Note [zero-initialised branches])."""
    return [
        (layer, params, why)
        for layer, params, why in sample.no_grad
        if not (why == ZERO_GRADIENT and zero_init_after(sample, layer))
    ]

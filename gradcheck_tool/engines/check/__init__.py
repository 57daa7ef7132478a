"""The check engine: analytic gradients from autograd against central differences.

    numeric_i = (f(θ + h·e_i) − f(θ − h·e_i)) / 2h
    rel_error = ‖a − n‖ / (‖a‖ + ‖n‖ + tiny)

`tiny` is the finite-difference resolution, so gradients too small for finite differences
to see are not reported as bugs (see `numerics`). Kinks (ReLU, abs, max, clamp at their
corners) are recognised from the one-sided differences. Pure: never prints, never exits.

    engine      run_check: the steps of a check, in order
    config      CheckOptions, Interrupted
    analytic    autograd's gradients (backward or jvp), evidence computed on demand
    sampling    which coordinates, the random direction, --budget
    evaluate    the loss at perturbed points: vmap over copies, or serially
    linear_path the nn.Linear forward-hook shortcut the evaluator takes where it may
    rows        the perturbed points of one tensor as rows of a batch
    batching    memory budget, rows per call, chunks
    judge       one tensor's verdict, note, sweep and diagnosis
    numerics    compare(), classify_sweep(): pure tensor arithmetic
    hints       the kind of mistake behind a failing gradient
"""

from .config import CheckOptions, Interrupted
from .engine import run_check
from .evaluate import forward_error

__all__ = ["CheckOptions", "Interrupted", "forward_error", "run_check"]

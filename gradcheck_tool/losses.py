"""The scalar(s) a check differentiates: the user's `loss_fn`, or a seeded random projection
of every floating output.

Each loss returns its terms and a *scale*: the size of the numbers that moved in this
evaluation, which sets the rounding noise of the difference f(θ + h) − f(θ − h) (Note
[rounding noise of a finite difference]).

Note [rounding noise of a finite difference]
    f(θ ± h·e_i) is computed in floating point, so the numeric derivative carries an error
    of about ε·S/h, where S is the size of the numbers whose rounding does not cancel
    between the two evaluations. Outputs that do not depend on θ_i come out bitwise the same
    in both, and contribute nothing — if the loss does not sum them first: a projection
    Σ R·y rounds the sum at the size of Σ|R·y| however little of it moved. So the projection
    differences each output against the reference output first, Σ R·(y − y₀): unmoved
    elements are exactly 0, and the sum rounds at the size of what moved. Its scale counts
    |R|·|y| only where y differs from y₀ at all, so a tensor's resolution is set by the
    outputs it moves, not by large outputs elsewhere. (Under vmap, outputs that don't depend
    on the batched tensor are not batched, and come out bitwise as in the reference; outputs
    that do may round differently, and count as moved: never less noise than there is.)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch

from ._guest import call_user
from ._tree import floating_leaves
from .errors import UserCodeError

TOTAL = "total"


class ProjectionLoss:
    """loss = Σ_k ⟨R_k, out_k − ref_k⟩ with fixed seeded Gaussian R_k, one per floating
    output that autograd can differentiate, and ref the output of the first evaluation.

    Not `.sum()`: a sum hides a backward that ignores the upstream gradient (the upstream
    gradient is all ones) and gives zero gradient through softmax. Subtracting ref changes
    no gradient (it is a constant) and keeps the rounding noise at the size of what moved
    (Note [rounding noise of a finite difference]).
    """

    def __init__(
        self,
        reference_output: Any,
        seed: int,
        dtype: torch.dtype,
        *,
        differenced: bool = True,
        skip_nondifferentiable: bool = True,
    ) -> None:
        leaves = list(floating_leaves(reference_output))
        if not leaves:
            raise UserCodeError(
                f"the output has no floating-point tensor to differentiate "
                f"(got {describe_value(reference_output)})",
                hint="Return a tensor (or a tuple/dict of tensors), or define "
                "loss_fn(output, *inputs) returning a scalar tensor.",
            )
        gen = torch.Generator().manual_seed(seed + 7919)
        self.paths = [p for p, _ in leaves]
        # outputs autograd marks non-differentiable (they don't require grad while others
        # do, e.g. the mean and rstd native_layer_norm returns) are left out, as gradcheck
        # does; the first evaluation runs with grad enabled, so requires_grad tells
        grads = [t.requires_grad for _, t in leaves]
        self.used = [g or not any(grads) or not skip_nondifferentiable for g in grads]
        self.left_out = tuple(p for p, used in zip(self.paths, self.used) if not used)
        # complex outputs get complex projections: Re⟨R, t⟩ sees both real and imaginary parts
        self.projections = [
            torch.randn(
                t.shape,
                generator=gen,
                dtype=torch.complex128 if t.is_complex() else torch.float64,
            ).to(device=t.device, dtype=t.dtype if t.is_complex() else dtype)
            for _, t in leaves
        ]
        self.references = [t.detach() if differenced else None for _, t in leaves]
        self.names = ("loss",)

    def __call__(self, output: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss as a 1-vector, the scale of what moved)."""
        leaves = [t for _, t in floating_leaves(output)]
        if len(leaves) != len(self.projections):
            raise UserCodeError(
                "the output structure changed between evaluations "
                f"({len(self.projections)} floating tensors, then {len(leaves)})"
            )
        loss, scale = [], []
        for t, r, ref, used in zip(leaves, self.projections, self.references, self.used):
            if not used:
                continue
            diff = t if ref is None else t - ref
            prod = (diff * r.conj()).real if t.is_complex() else diff * r
            loss.append(prod.sum())
            # detached: the scale is a measurement, and must not connect a tensor to the
            # loss's graph (autograd would then give zeros, not None, for an unused tensor)
            size = r.abs() * t.detach().abs()
            scale.append((size if ref is None else size * (diff.detach() != 0)).sum())
        return sum(loss).reshape(1), sum(scale)

    def magnitude(self, output: Any) -> float:
        """Σ|R·out|: the size of the numbers summed, were nothing differenced."""
        leaves = [t for _, t in floating_leaves(output)]
        return float(
            sum(
                float((r.abs() * t.detach().abs()).sum())
                for t, r, used in zip(leaves, self.projections, self.used)
                if used
            )
        )


def call_loss(
    loss_fn: Callable[..., Any], output: Any, args: tuple, kwargs: dict, folder: Path | None = None
) -> Any:
    """loss_fn(output, *inputs, **keyword_inputs); its errors are named as loss_fn's."""
    return call_user(
        loss_fn,
        output,
        *args,
        what="loss_fn",
        folder=folder,
        hint="gradtool calls loss_fn(output, *inputs, **keyword_inputs).",
        **kwargs,
    )


class UserLoss:
    """The user's loss_fn(output, *inputs), as a vector of its named scalar terms; its scale
    is the largest term (the numbers it sums inside are out of sight)."""

    def __init__(self, loss_fn: Callable[..., Any], reference: Any) -> None:
        self.loss_fn = loss_fn
        self.term_keys = tuple(loss_terms(reference).keys())
        # With several terms the sum comes first, named TOTAL; each term is checked on its
        # own too (the tutorial: check with and without regularization separately).
        self.names = (TOTAL, *self.term_keys) if len(self.term_keys) > 1 else self.term_keys

    def __call__(self, output: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stack(call_loss(self.loss_fn, output, args, kwargs))

    def stack(self, value: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """loss_fn's value as the terms vector (the sum first when there are several), and
        its scale."""
        terms = loss_terms(value)
        if tuple(terms) != self.term_keys:
            raise UserCodeError("loss_fn returned different terms between evaluations")
        stacked = torch.stack([t.reshape(()) for t in terms.values()])
        if len(self.term_keys) > 1:
            stacked = torch.cat([stacked.sum().reshape(1), stacked])
        return stacked, stacked.detach().abs().max()


def loss_terms(value: Any) -> dict[str, torch.Tensor]:
    """A scalar tensor -> {"loss": t}; a dict of named scalar tensors is kept as is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return {"loss": value}
    if isinstance(value, Mapping) and value:
        bad = [
            k
            for k, v in value.items()
            if not (isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point())
        ]
        if not bad:
            return {str(k): v for k, v in value.items()}
        raise UserCodeError(
            f"loss_fn returned a dict whose terms {bad} are not scalar floating tensors"
        )
    raise UserCodeError(
        f"loss_fn must return a scalar tensor or a dict of named scalar tensors; "
        f"got {describe_value(value)}"
    )


def describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"

"""The nn.Linear shortcut: rows of a stock nn.Linear's weight or bias evaluated through a
forward hook on the layer instead of perturbed copies of the tensor (Note [the nn.Linear
hook] in `hooked_rows`). The evaluator asks `linear_delta` once per tensor whether the hook
may be used, then `hooked_rows` for its rows; where either says no, it uses the copies."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ...checkables import Checkable
from ...prepare import CheckProblem
from .batching import chunk_size, in_chunks
from .rows import Rows, random_direction


class LinearDelta:
    """Forward hook for one nn.Linear: output + what perturbing its weight or bias changes.
    F.linear(x, W + s·e_ij) = F.linear(x, W) + s·x_j·e_i (and + s·e_i for the bias): the flat
    index `k` and step `s` are batched under vmap; `dense` replaces e_k by a whole direction."""

    def __init__(self, layer: torch.nn.Linear, attr: str) -> None:
        self.layer = layer
        self.attr = attr
        self.k: torch.Tensor | None = None
        self.step: torch.Tensor | None = None
        self.dense: torch.Tensor | None = None

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        handle = self.layer.register_forward_hook(self, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            self.k = self.step = self.dense = None

    def run(
        self,
        k: torch.Tensor | None,
        step: torch.Tensor,
        terms: Callable[..., torch.Tensor],
        base: Any,
    ) -> torch.Tensor:
        """The loss terms with the layer's tensor moved by `step` at flat index `k` (along
        `dense` when that is set)."""
        self.k, self.step = k, step
        return terms(base)

    def __call__(self, _layer: Any, args: tuple, kwargs: dict, output: torch.Tensor) -> Any:
        x = args[0] if args else kwargs["input"]
        out_features, in_features = self.layer.out_features, self.layer.in_features
        if self.dense is not None:
            change = (
                torch.nn.functional.linear(x, self.dense) if self.attr == "weight" else self.dense
            )
            return output + self.step * change
        unit = self.k // in_features if self.attr == "weight" else self.k
        e_i = (torch.arange(out_features, device=output.device) == unit).to(output.dtype)
        if self.attr == "bias":
            return output + self.step * e_i
        e_j = (torch.arange(in_features, device=x.device) == self.k % in_features).to(x.dtype)
        # (x·e_j).sum, not x @ e_j: the matmul leaves vmap's batch dimension inside, and
        # every later layer then runs as a bmm over copies of its weight (3x slower)
        x_j = (x * e_j).sum(-1, keepdim=True)
        return torch.addcmul(output, self.step * x_j, e_i)


def linear_delta(
    problem: CheckProblem,
    c: Checkable,
    base: dict[str, torch.Tensor],
    f0: torch.Tensor,
    *,
    seed: int,
    needs_grad: bool,
) -> LinearDelta | None:
    """The hook for `c` if it is the weight or bias of an nn.Linear (the class itself,
    not a subclass, its forward not replaced), registered once, with no hooks of its own,
    in a float64 check; and if the hook gives the same loss as a perturbed copy, along a
    random direction and at one coordinate, with steps large enough that any use of the
    tensor the hook doesn't see (the weight passed to F.linear elsewhere, a layer called
    around its hooks or through a fast path) shows far above rounding."""
    module = getattr(problem, "module", None)
    if module is None or c.kind != "parameter" or needs_grad:
        return None
    # float32 rounding (of the values, or inside the forward) would hide a missed use
    if c.value.dtype != torch.float64 or problem.precision != torch.float64:
        return None
    owner_name, _, attr = c.slot[1].rpartition(".")
    try:
        layer = module.get_submodule(owner_name)
    except AttributeError:
        return None
    if type(layer) is not torch.nn.Linear or attr not in ("weight", "bias"):
        return None
    if layer._forward_hooks or layer._forward_pre_hooks or "forward" in vars(layer):
        return None
    param = getattr(layer, attr)
    uses = sum(p is param for _, p in module.named_parameters(remove_duplicate=False))
    if uses != 1:
        return None
    delta = LinearDelta(layer, attr)
    flat = c.value.reshape(-1)
    step = 0.1 * (1.0 + float(flat.abs().max()))  # exact either way: only rounding differs
    d = random_direction(c, seed + 3)
    k = int(flat.abs().argmax())
    device = c.value.device
    try:
        with delta.attached():
            delta.dense = d
            along_d = delta.run(
                None,
                torch.tensor(step, dtype=flat.dtype, device=device),
                problem.terms,
                base,
            )
            delta.dense = None
            at_k = delta.run(
                torch.tensor(k, device=device),
                torch.tensor(step, dtype=flat.dtype, device=device),
                problem.terms,
                base,
            )
        moved = flat.clone()
        moved[k] += step
        copies = (
            problem.terms({**base, c.name: c.value + step * d}),
            problem.terms({**base, c.name: moved.view_as(c.value)}),
        )
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit):
        return None
    # the loss terms only (a row ends with the scale of what moved, which rounding sets)
    f0 = f0[:-1].to(copies[0])
    size = max(float(f0.abs().max()), problem.magnitude or 0.0)
    rounding = 1e3 * torch.finfo(flat.dtype).eps * (1.0 + size)
    for hooked, copied in zip((along_d[:-1], at_k[:-1]), (copies[0][:-1], copies[1][:-1])):
        moved_by = float((copied - f0).abs().max())
        apart = float((hooked - copied).abs().max())
        if not math.isfinite(apart + moved_by) or apart > rounding + 1e-7 * moved_by:
            return None  # (a step into NaN/Inf proves nothing either)
    return delta


def hooked_rows(
    delta: LinearDelta,
    rows: Rows,
    terms: Callable[..., torch.Tensor],
    base: dict[str, torch.Tensor],
    *,
    activation_bytes: int,
    cap: int,
    copies: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor | None:
    """Note [the nn.Linear hook]: the rows of a stock nn.Linear's weight or bias without
    copies of the tensor: the layer runs once on θ and a forward hook adds what θ ± h·e_i
    changes in its output (x_j·(±h) in output unit i), vmapped over i. Linear in the weight,
    so the same function up to rounding, minus the copies and the batched matmul that
    dominate a wide layer's cost. Used only after the hook gave the same loss as a copy (see
    `linear_delta`). The ±h·d rows are dense, so they go through `copies` (vmap over
    perturbed copies). None if the hooked forward fails: the copies will do."""
    coords, steps = rows.coordinate_rows()
    batched = torch.func.vmap(lambda k, step: delta.run(k, step, terms, base), randomness="same")
    try:
        with delta.attached():
            out = in_chunks(
                coords.numel(),
                chunk_size(coords, activation_bytes, cap),
                lambda start, stop: batched(coords[start:stop], steps[start:stop]),
            )
        if rows.count > coords.numel():  # ±h·d: dense, so with copies
            dense = copies(rows.materialize(coords.numel(), rows.count))
            out = torch.cat([out, dense])
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit):
        return None
    return out

"""One step's statistics as one device vector: a named layout of its segments, shared by the
code that packs the vector (`Recorder.collect`) and the code that reads it back (`rows`).

What a step measures stays on the device while the model trains; it is read back in one
transfer (`read_back`), for any number of steps at once. The vector is the segments of
`STEP_SEGMENTS`, floating ones first, then the integer counts (stacked apart: stacking mixed
dtypes is slow); `StepLayout` records how many numbers each segment has this step, so that
`unpack` gives every segment back by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch

if TYPE_CHECKING:
    from .recorder import ActCall, FwdEvent


class Reduction(str, Enum):
    """How the vectors of several processes combine, segment by segment (distributed.py).

    Note [reducing a step across ranks]: in a distributed job (DDP, FSDP) every rank packs
    its step as usual; `distributed.reduce_across_ranks` then combines the ranks' vectors
    with one `all_reduce` per kind of reduction on one packed vector (SUM, then MAX: a MIN is
    a MAX of the negated numbers), after one small all_reduce of the vectors' sizes and a
    fingerprint of their layout (a rank whose forward took another path would otherwise hang
    the job, or mix numbers about different things); the Monitor starts that check at the
    step and waits for it at the next recorded step (Note [deferring the layout check] in
    monitor.py). Squared norms of sharded tensors add
    (SUM); a replicated tensor (a DDP parameter, its gradient after DDP's all-reduce) is
    counted once, from the rank that owns it (`per_parameter`: the others add 0). A
    gradient's extremes take MIN/MAX; a finite probe adds (SUM), because a sum is non-finite
    iff one of its terms is (MAX over a NaN is not defined: the extremes carry a NaN flag
    through the SUM). The loss is the mean of the ranks' losses (MEAN), which is the loss DDP
    and FSDP optimise: they average gradients. The gradient reaching a layer's output is
    each rank's own examples' gradient of its own loss, so the job's is 1/W of it
    (AVERAGED_SQ: Σ/W²). Activation counts cannot be combined as counts (a unit dead on one
    rank may fire on another): a distributed recorder keeps per-unit masks (UNIT_MASKS,
    MAX: a unit that fired on any rank fired on the global batch) and saturation as counts
    with their totals (SATURATION_COUNTS, SUM); the single-process counts declare none.
    """

    SUM = "sum"
    MEAN = "mean"  # SUM / W
    MIN = "min"
    MAX = "max"
    NORM = "norm"  # a norm: the root of the SUM of its squares
    MIN_MAX = "min_max"  # (min, max) pairs
    AVERAGED_SQ = "averaged_sq"  # SUM / W²


@dataclass(frozen=True)
class Segment:
    """A named run of numbers in a step's vector."""

    name: str
    reduction: Reduction | None  # None: cannot be combined across processes as measured
    integer: bool = False  # counts, stacked after the floating segments
    # one number per parameter (the item's `parameter_indices` say which): a replicated
    # parameter's number is counted once across ranks, a sharded one's from every rank
    per_parameter: bool = False
    vectors: bool = False  # entries are 1-D tensors (concatenated), not 0-d ones


LOSS = Segment("loss", Reduction.MEAN)  # 0 or 1 number: the Monitor does not see the loss
WEIGHT_SQ = Segment("weight_sq", Reduction.SUM, per_parameter=True)  # per parameter: Σ w²
# per parameter with a gradient: Σ g²
GRAD_SQ = Segment("grad_sq", Reduction.SUM, per_parameter=True)
GRAD_MIN = Segment("grad_min", Reduction.MIN)  # ... its smallest entry
GRAD_MAX = Segment("grad_max", Reduction.MAX)  # ... its largest entry
# a distributed recorder's gradient segments hold every parameter (0, +inf, -inf where this
# rank has no gradient: FSDP1 leaves .grad None where its shard holds none of a parameter),
# and here per parameter 1 where this rank has a gradient: combined, whether any rank had
GRAD_PRESENT = Segment("grad_present", Reduction.MAX)
FORWARD_PROBES = Segment("forward_probes", Reduction.SUM)  # finite iff the tensor was
BACKWARD_PROBES = Segment("backward_probes", Reduction.SUM)  # the same, for gradients
BACKWARD_SQ = Segment("backward_sq", Reduction.AVERAGED_SQ)  # Σ g² at each layer's output
ACTIVATION_COUNTS = Segment("activation_counts", None, integer=True)  # alive/inactive/saturated
# a distributed recorder's activation statistics instead (Note [reducing a step across
# ranks]): per unit 1 when it fired ("alive") or was ever ≥ 0 ("inactive"), and per
# saturation field (saturated count, total count)
UNIT_MASKS = Segment("unit_masks", Reduction.MAX, integer=True, vectors=True)
SATURATION_COUNTS = Segment("saturation_counts", Reduction.SUM, integer=True)

STEP_SEGMENTS: tuple[Segment, ...] = (
    LOSS,
    WEIGHT_SQ,
    GRAD_SQ,
    GRAD_MIN,
    GRAD_MAX,
    GRAD_PRESENT,
    FORWARD_PROBES,
    BACKWARD_PROBES,
    BACKWARD_SQ,
    UNIT_MASKS,
    SATURATION_COUNTS,
    ACTIVATION_COUNTS,
)


# What the optimizer watch (optim_watch.py) measures around an optimizer step, read back in
# the same transfer as the steps: per measured parameter ‖Δw‖ (a norm, as torch's foreach
# norm gives it: across ranks it combines as squares) and its extremes after the step
# (max |w|: whether an update was representable in its dtype), and per parameter whose .grad
# looked unzeroed at the next backward, Σ g² of that stale gradient.
UPDATE_NORM = Segment("update_norm", Reduction.NORM, per_parameter=True)
# per measured parameter: its smallest and largest entry after the step (two numbers each)
WEIGHT_EXTREMES = Segment("weight_extremes", Reduction.MIN_MAX)
STALE_SQ = Segment("stale_sq", Reduction.SUM, per_parameter=True)
OPTIMIZER_SEGMENTS: tuple[Segment, ...] = (UPDATE_NORM, WEIGHT_EXTREMES, STALE_SQ)


class StepLayout(NamedTuple):
    """The segments of one packed step, in the order of its numbers, and how many numbers
    each has this step. (A tuple: the Monitor keeps one per recorded step, so it is small.)"""

    segments: tuple[Segment, ...]
    lengths: tuple[int, ...]

    @property
    def size(self) -> int:
        return sum(self.lengths)

    def unpack(self, values: Sequence[float]) -> dict[str, list[float]]:
        """The step's numbers (as read back) -> each segment's numbers, by name."""
        if len(values) != self.size:
            raise ValueError(f"a step of this layout has {self.size} numbers, not {len(values)}")
        out: dict[str, list[float]] = {}
        start = 0
        for segment, n in zip(self.segments, self.lengths):
            out[segment.name] = list(values[start : start + n])
            start += n
        return out


def _packing_order(segments: Sequence[Segment]) -> tuple[Segment, ...]:
    """Floating segments first, then the integer ones, each in the order given."""
    return tuple(s for s in segments if not s.integer) + tuple(s for s in segments if s.integer)


_STEP_ORDER = _packing_order(STEP_SEGMENTS)
_STEP_NAMES = frozenset(s.name for s in STEP_SEGMENTS)


def pack(
    parts: Mapping[str, Sequence[torch.Tensor]],
    segments: Sequence[Segment] = STEP_SEGMENTS,
) -> tuple[StepLayout, list[torch.Tensor]]:
    """Named groups of 0-d tensors (1-D ones for a `vectors` segment) -> the layout and the
    vector, as one 1-D tensor for the floating segments and one for the integer ones
    (concatenated when read back).

    A segment missing from `parts` is empty; a name that is not a segment is an error.
    """
    standard = segments is STEP_SEGMENTS  # every step: what could be, is computed once
    ordered = _STEP_ORDER if standard else _packing_order(segments)
    names = _STEP_NAMES if standard else frozenset(s.name for s in segments)
    if not names.issuperset(parts):
        raise KeyError(f"not a step segment: {', '.join(sorted(set(parts) - names))}")
    lengths = (
        sum(t.numel() for t in parts.get(s.name, ())) if s.vectors else len(parts.get(s.name, ()))
        for s in ordered
    )
    layout = StepLayout(ordered, tuple(lengths))
    floats = [t for s in ordered if not s.integer for t in parts.get(s.name, ())]
    integer = [s for s in ordered if s.integer and parts.get(s.name)]
    if any(s.vectors for s in integer):  # a distributed recorder's unit masks among them
        pieces = [
            piece
            for s in integer
            for piece in (parts[s.name] if s.vectors else stack_groups(list(parts[s.name])))
        ]
        return layout, [*stack_groups(floats), torch.cat(pieces)]
    counts = [t for s in integer for t in parts[s.name]]
    return layout, stack_groups(floats, counts)


def stack_groups(*groups: list[torch.Tensor]) -> list[torch.Tensor]:
    """Groups of 0-d tensors -> one 1-D tensor per group (one op each), in order."""
    parts = []
    for scalars in groups:
        if scalars:
            try:
                parts.append(torch.stack(scalars))
            except RuntimeError:  # a model spread over several devices
                device = scalars[0].device
                parts.append(torch.stack([s.to(device) for s in scalars]))
    return parts


def _host_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass
class PendingStep:
    """One step's numbers as one device vector (then, once read back, a host list), and what
    the host needs to say what each number is about."""

    step: int
    layout: StepLayout
    parts: list[torch.Tensor]
    grads_present: list[bool] | None
    acts: list[ActCall]
    fwd: list[FwdEvent]
    bwd_roles: list[list[tuple]]
    bwd: list[int]
    bwd_norm_at: list[int]
    bwd_numel: list[int]
    layer_order: dict[int, int]
    layer_calls: dict[int, int]
    host: list[float] | None = None  # once read back: the numbers, in the layout's order
    # a distributed recorder's layout: activations as UNIT_MASKS/SATURATION_COUNTS, every
    # parameter in the gradient segments (`grads_present` all True) with GRAD_PRESENT flags
    distributed: bool = False
    reduced: bool = False  # combined across ranks (distributed.reduce_across_ranks)
    combining: Any = None  # that combination while in flight: wait() before reading

    def gradients_present(self) -> list[bool] | None:
        """Per parameter, whether it got a gradient (None: no backward), once read back;
        in a distributed step, on any rank."""
        if not self.distributed or self.grads_present is None:
            return self.grads_present
        return [f > 0 for f in self.values()[GRAD_PRESENT.name]]

    def parameter_indices(self, segment: str) -> Sequence[int]:
        """Which parameter each number of a `per_parameter` segment is about."""
        if segment == WEIGHT_SQ.name:
            return range(self.layout.lengths[self.layout.segments.index(WEIGHT_SQ)])
        return [i for i, has in enumerate(self.grads_present or ()) if has]

    def structure(self) -> tuple:
        """What the numbers are about, for comparing layouts across ranks."""
        return (
            self.step,
            self.layout.lengths,
            tuple(self.grads_present or ()),
            tuple((a.base_key, a.units, tuple(a.fields)) for a in self.acts),
            tuple(self.fwd),
            tuple(tuple(r) for r in self.bwd_roles),
            tuple(self.bwd),
        )

    def values(self) -> dict[str, list[float]]:
        """Each segment's numbers, by name (after `read_back`)."""
        if self.host is None:
            raise RuntimeError("a step's numbers are named only after read_back()")
        return self.layout.unpack(self.host)


class DeviceNumbers(Protocol):
    """Numbers kept on the device until read back: a step, or an optimizer step's record."""

    layout: StepLayout
    parts: list[torch.Tensor]
    host: list[float] | None
    reduced: bool
    combining: Any

    def parameter_indices(self, segment: str) -> Sequence[int]: ...

    def structure(self) -> tuple: ...


def read_back(pending: Sequence[DeviceNumbers]) -> None:
    """One device→host transfer for any number of pending steps (or optimizer records);
    fills `host`."""
    todo = [p for p in pending if p.host is None]
    for p in todo:
        if p.combining is not None:  # combined across ranks: its collectives finish first
            p.combining.wait()
    parts = [part for p in todo for part in p.parts]
    flat: list[float] = []
    if parts:
        device = parts[0].device
        dtype = _host_dtype(device)
        flat = torch.cat([part.to(device=device, dtype=dtype) for part in parts]).tolist()
    start = 0
    for p in todo:
        n = p.layout.size
        p.host, p.parts = flat[start : start + n], []
        start += n

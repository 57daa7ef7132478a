"""The per-step vector: named segments packed into one device vector and read back by name."""

from __future__ import annotations

import pytest
import torch

from gradcheck_tool.engines.flow.step import (
    ACTIVATION_COUNTS,
    STEP_SEGMENTS,
    PendingStep,
    Segment,
    StepLayout,
    pack,
    read_back,
)


def scalars(*values: float, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=dtype) for v in values]


def pending(layout: StepLayout, parts: list[torch.Tensor], step: int = 1) -> PendingStep:
    return PendingStep(step, layout, parts, None, [], [], [], [], [], [], {}, {})


def test_pack_then_unpack_gives_every_segment_back_by_name() -> None:
    parts = {
        "loss": scalars(2.5),
        "weight_sq": scalars(1.0, 4.0, 9.0),
        "grad_min": scalars(-0.5, -0.25),
        "backward_sq": [],  # measured nothing this step
        "activation_counts": scalars(3, 7, dtype=torch.int64),
    }
    layout, vector = pack(parts)
    flat = torch.cat([v.double() for v in vector]).tolist()
    values = layout.unpack(flat)
    assert values["loss"] == [2.5]
    assert values["weight_sq"] == [1.0, 4.0, 9.0]
    assert values["grad_min"] == [-0.5, -0.25]
    assert values["activation_counts"] == [3.0, 7.0]
    # every segment is present, the ones not packed empty
    assert set(values) == {s.name for s in STEP_SEGMENTS}
    assert values["backward_sq"] == [] and values["grad_sq"] == [] and values["grad_max"] == []
    assert layout.size == 8 == len(flat)


def test_floats_and_counts_are_stacked_apart_counts_last() -> None:
    layout, vector = pack(
        {"loss": scalars(1.0), "activation_counts": scalars(5, dtype=torch.int64)}
    )
    assert [v.dtype for v in vector] == [torch.float32, torch.int64]
    assert (layout.segments[-1], layout.lengths[-1]) == (ACTIVATION_COUNTS, 1)
    # an integer segment declared before floating ones still goes after them
    counts, a, b = Segment("counts", None, integer=True), Segment("a", None), Segment("b", None)
    layout, vector = pack(
        {"counts": scalars(1, 2, dtype=torch.int64), "a": scalars(0.5), "b": scalars(0.25, 0.75)},
        segments=(counts, a, b),
    )
    assert [s.name for s in layout.segments] == ["a", "b", "counts"]
    flat = torch.cat([v.double() for v in vector]).tolist()
    assert layout.unpack(flat) == {"a": [0.5], "b": [0.25, 0.75], "counts": [1.0, 2.0]}


def test_an_empty_step_packs_to_nothing() -> None:
    layout, vector = pack({})
    assert vector == [] and layout.size == 0
    assert all(v == [] for v in layout.unpack([]).values())


def test_unknown_segment_and_wrong_length_are_errors() -> None:
    with pytest.raises(KeyError, match="not a step segment: lost"):
        pack({"lost": scalars(1.0)})
    layout, _ = pack({"loss": scalars(1.0)})
    with pytest.raises(ValueError, match="has 1 numbers, not 2"):
        layout.unpack([1.0, 2.0])


def test_read_back_of_several_steps_gives_each_its_own_segments() -> None:
    first = pack({"loss": scalars(1.0), "grad_sq": scalars(4.0, 16.0)})
    second = pack({"weight_sq": scalars(9.0), "activation_counts": scalars(2, dtype=torch.int64)})
    steps = [pending(*first, step=1), pending(*second, step=2)]
    with pytest.raises(RuntimeError, match="after read_back"):
        steps[0].values()
    read_back(steps)  # one transfer for both
    assert steps[0].values()["loss"] == [1.0] and steps[0].values()["grad_sq"] == [4.0, 16.0]
    assert steps[0].values()["weight_sq"] == []
    assert steps[1].values()["weight_sq"] == [9.0] and steps[1].values()["loss"] == []
    assert steps[1].values()["activation_counts"] == [2.0]
    assert all(p.parts == [] for p in steps)  # the device tensors are released
    read_back(steps)  # already read: nothing changes
    assert steps[1].values()["weight_sq"] == [9.0]

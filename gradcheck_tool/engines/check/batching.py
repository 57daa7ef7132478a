"""Fitting batched evaluation into memory: the budget, the rows per call, the activation
memory one forward makes, and running rows in chunks (halved after a GPU runs out)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..._tree import floating_leaves
from ...prepare import CheckProblem

MEMORY_BUDGET = 256 * 2**20  # bytes of perturbed copies per batched (vmap) call


def _memory_budget(device: torch.device) -> int:
    """Bytes one batched call may use: MEMORY_BUDGET on the CPU; on a GPU a quarter of
    what is free, between that and 2 GiB."""
    if device.type != "cuda":
        return MEMORY_BUDGET
    free, _total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached
    return int(min(max(free // 4, MEMORY_BUDGET), 8 * MEMORY_BUDGET))


def chunk_size(like: torch.Tensor, per_row: int, cap: int) -> int:
    """Rows per batched call: as many as the memory budget holds, at most `cap`."""
    return int(max(1, min(cap, _memory_budget(like.device) // max(per_row, 1))))


def in_chunks(count: int, chunk: int, run: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """run(start, stop) over [0, count) in chunks, concatenated; on a GPU that runs out of
    memory the chunk is halved and the same rows tried again (down to one row). The rows
    are written into one tensor as they come: small results kept between the chunks'
    large temporaries would fragment the heap (RSS grew by GBs on wide layers)."""
    out: torch.Tensor | None = None
    start = 0
    while start < count:
        stop = min(start + chunk, count)
        try:
            part = run(start, stop)
        except torch.cuda.OutOfMemoryError:
            if chunk == 1:
                raise
            torch.cuda.empty_cache()
            chunk = max(1, chunk // 2)
            continue
        if out is None:
            out = part.new_empty((count, *part.shape[1:]))
        out[start:stop] = part
        del part
        start = stop
    if out is None:
        raise ValueError("no rows to evaluate")
    return out


@contextlib.contextmanager
def activation_bytes(problem: CheckProblem) -> Iterator[list[int]]:
    """Bytes of the outputs of every submodule during one forward (twice that, for what
    happens inside modules): roughly the activation memory a batched copy needs. Hooks go
    on gradtool's private copy and come off at the end. (A TorchDispatchMode would count
    every op, but entering one imports seconds' worth of torch internals.)"""
    total = [0]
    module = getattr(problem, "module", None)

    def count(_module: Any, _inputs: Any, output: Any) -> None:
        for _, t in floating_leaves(output):
            total[0] += 2 * t.numel() * t.element_size()

    handles = [m.register_forward_hook(count) for m in module.modules()] if module else []
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()
        if not handles:  # a Function or a plain function: its inputs and output, a few times
            out = problem.reference_output
            sizes = [t.numel() * t.element_size() for _, t in floating_leaves(out)]
            sizes += [
                c.value.numel() * c.value.element_size()
                for c in problem.checkables
                if c.kind == "input"
            ]
            total[0] = 4 * sum(sizes)

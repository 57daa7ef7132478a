"""Where to look: every coordinate or a seeded sample of them, the random direction, the
loss measured there, and --budget spent on more coordinates."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import torch

from ...checkables import Checkable
from ...prepare import CheckProblem
from .config import CheckOptions
from .evaluate import Evaluator, synced
from .rows import random_direction, random_directions

FULL_THRESHOLD = 256  # tensors up to this many elements are checked at every coordinate
TINY_MODEL = 4096  # ... and every tensor of a target with at most this many in all,
SMALL_MODEL = 20_000  # ... or at most this many,
FULL_CHECK_SECONDS = 10.0  # ... when such a full check should take about this long at most

# Note [directions]
# A larger model's default check costs a fixed number of forwards per tensor, whatever its
# size: the loss at θ ± h·d_j along DEFAULT_DIRECTIONS (options.py) seeded Gaussian
# directions, each moving every entry by about h, against autograd's a·d_j. A wrong
# gradient a + e shows in every entry it touches at once: e·d_j is as large as ‖e‖ up to a
# random factor, so a mismatch that a sample of coordinates misses (a few wrong entries of
# a million) is seen, and two independent directions make missing it by chance unlikely
# (both |e·d_j| small). A tensor whose directions all agree to the tolerance, resolved
# above rounding noise, passes; any other (a mismatch, a kink crossed, a gradient too small
# to resolve, zero, NaN) is measured again at a sample of coordinates and judged as before,
# with the direction that disagreed most: coordinates localise and name the mistake, the
# direction keeps what it saw.


def is_small_model(problem: CheckProblem, forward_seconds: float) -> bool:
    """Every coordinate of a small model, when that is quick: ~2·numel forwards, which vmap
    runs several times faster than one by one."""
    total = sum(c.value.numel() for c in problem.checkables)
    return total <= TINY_MODEL or (
        total <= SMALL_MODEL and 2 * total * forward_seconds / 4 <= FULL_CHECK_SECONDS
    )


def choose_coordinates(
    c: Checkable,
    grads: list[dict[str, torch.Tensor | None]],
    options: CheckOptions,
    small_model: bool,
    every_below: int = FULL_THRESHOLD,
) -> torch.Tensor:
    """All coordinates of small tensors (up to `every_below`); else a seeded stratified
    sample plus the largest analytic entries (a wrong gradient is most visible where it is
    large)."""
    n = c.value.numel()
    if options.full or small_model or n <= max(every_below, options.samples):
        return torch.arange(n)
    k = max(1, options.samples)
    gen = torch.Generator().manual_seed(options.seed * 1_000_003 + zlib.crc32(c.name.encode()))
    chosen: list[int] = []
    present = [per[c.name] for per in grads[:1] if per.get(c.name) is not None]
    n_top = min(k // 4, 4)
    if present and n_top:
        chosen.extend(torch.topk(present[0].abs().reshape(-1).cpu(), n_top).indices.tolist())
    edges = torch.linspace(0, n, k - len(chosen) + 1).long().tolist()
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            chosen.append(lo + int(torch.randint(hi - lo, (1,), generator=gen)))
    return torch.tensor(sorted(set(chosen)), dtype=torch.long)


@dataclass
class Measured:
    """The loss at θ ± h·e_i for the checked coordinates of one tensor (and ± h·d)."""

    coords: torch.Tensor
    plus: torch.Tensor
    minus: torch.Tensor
    direction: tuple | None
    seconds: float
    # (D (k, *shape), loss at θ + h·D_j (k, T), at θ − h·D_j): directions alone, no coordinates
    directions: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def measure(
    evaluator: Evaluator,
    c: Checkable,
    coords: torch.Tensor,
    h: float,
    seed: int,
    direction: torch.Tensor | None = None,
) -> Measured:
    """The loss at the coordinates, and along a random unit direction (`direction`, or a
    seeded one) when they are a sample."""
    started = time.perf_counter()
    d = None
    if coords.numel() < c.value.numel():
        d = random_direction(c, seed) if direction is None else direction
    at = evaluator.evaluate(c, coords, h, d)
    direction = None if d is None else (d, at.direction_plus, at.direction_minus)
    synced(at.plus)
    return Measured(coords, at.plus, at.minus, direction, time.perf_counter() - started)


def measure_directions(evaluator: Evaluator, c: Checkable, h: float, seed: int, k: int) -> Measured:
    """The loss along k seeded Gaussian directions (Note [directions]), and no coordinate."""
    started = time.perf_counter()
    d = random_directions(c, seed, k)
    none = torch.zeros(0, dtype=torch.long)
    at = evaluator.evaluate(c, none, h, d)
    synced(at.directions_plus)
    directions = (d, at.directions_plus, at.directions_minus)
    seconds = time.perf_counter() - started
    return Measured(none, at.plus, at.minus, None, seconds, directions)


def spend_budget(
    evaluator: Evaluator,
    problem: CheckProblem,
    measured: dict[str, Measured],
    options: CheckOptions,
    started: float,
) -> None:
    """--budget: while time is left, add seeded coordinates to the sampled tensors, round
    by round (each round at most doubles a tensor's sample)."""
    sampled = [c for c in problem.checkables if measured[c.name].coords.numel() < c.value.numel()]
    gen = torch.Generator().manual_seed(options.seed + 31)
    while sampled:
        for c in list(sampled):
            got = measured[c.name]
            per_row = got.seconds / max(2 * got.coords.numel(), 1)
            left = options.budget - (time.perf_counter() - started)
            n = c.value.numel()
            extra = min(got.coords.numel(), n - got.coords.numel(), int(left / per_row / 2))
            if extra <= 0:
                sampled.remove(c)
                continue
            fresh = torch.randint(n, (4 * extra,), generator=gen)
            fresh = fresh[~torch.isin(fresh, got.coords)].unique()[:extra]
            if fresh.numel() == 0:
                sampled.remove(c)
                continue
            more = measure(evaluator, c, fresh, options.eps, options.seed)
            measured[c.name] = Measured(
                torch.cat([got.coords, fresh]),
                torch.cat([got.plus, more.plus]),
                torch.cat([got.minus, more.minus]),
                got.direction,
                got.seconds + more.seconds,
            )
            if measured[c.name].coords.numel() >= n:
                sampled.remove(c)

"""The points one tensor is evaluated at: θ ± h·e_i for each checked coordinate, and θ ± h·d
along seeded random directions d (a unit one beside sampled coordinates; Gaussian ones,
which move every entry by about h, when the directions are the check)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from ...checkables import Checkable


def random_direction(c: Checkable, seed: int) -> torch.Tensor:
    """A seeded random unit direction in the tensor's space."""
    gen = torch.Generator().manual_seed(seed + zlib.crc32(c.name.encode()) + 1)
    d = torch.randn(c.value.shape, generator=gen, dtype=torch.float64)
    return (d / d.norm()).to(device=c.value.device, dtype=c.value.dtype)


def random_directions(c: Checkable, seed: int, k: int) -> torch.Tensor:
    """k seeded directions with standard normal entries, shape (k, *c.shape): θ ± h·d moves
    every entry by about h, and a·d is about as large as ‖a‖ (Note [directions])."""
    gen = torch.Generator().manual_seed(seed + zlib.crc32(c.name.encode()) + 7)
    d = torch.randn((k, *c.value.shape), generator=gen, dtype=torch.float64)
    return d.to(device=c.value.device, dtype=c.value.dtype)


@dataclass
class Evaluations:
    plus: torch.Tensor  # (m, T): loss terms at θ + h·e_i
    minus: torch.Tensor  # (m, T)
    directions_plus: torch.Tensor | None  # (K, T): at θ + h·d_j for each direction
    directions_minus: torch.Tensor | None

    @property
    def direction_plus(self) -> torch.Tensor | None:
        """(T,): at θ + h·d for the first (or only) direction."""
        return None if self.directions_plus is None else self.directions_plus[0]

    @property
    def direction_minus(self) -> torch.Tensor | None:
        return None if self.directions_minus is None else self.directions_minus[0]


class Rows:
    """The perturbed points of one tensor as rows: +h·e_i for each coordinate, then −h·e_i,
    then +h·d_j for each direction, then −h·d_j. `direction` is one direction (the tensor's
    shape) or several (k, *shape)."""

    def __init__(
        self,
        c: Checkable,
        coords: torch.Tensor,
        h: float,
        direction: torch.Tensor | None,
    ) -> None:
        self.checkable = c
        self.flat = c.value.reshape(-1)
        self.coords = coords.to(self.flat.device)
        self.h = h
        self.directions = None
        if direction is not None:
            several = direction.dim() == c.value.dim() + 1
            self.directions = direction.reshape(-1 if several else 1, self.flat.numel())
            self.directions = self.directions.to(self.flat)
        self.k = 0 if self.directions is None else self.directions.shape[0]
        self.m = coords.numel()
        self.count = 2 * self.m + 2 * self.k
        self.row_bytes = self.flat.numel() * self.flat.element_size()
        self.reuse = True  # False once the target is seen writing into the values it is given
        self._buffer: torch.Tensor | None = None
        self._dirty: tuple[torch.Tensor, torch.Tensor, list[int]] | None = None

    def materialize(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as a (stop − start, *shape) tensor of perturbed values. The
        memory is reused from call to call, and only the entries the last call perturbed are
        put back (refilling every copy costs about as much as the forwards themselves): a
        result is valid until the next call."""
        n = stop - start
        if self._buffer is None or self._buffer.shape[0] < n:
            self._buffer = torch.empty(
                (n, self.flat.numel()), dtype=self.flat.dtype, device=self.flat.device
            )
            self._buffer.copy_(self.flat.expand(n, -1))
        elif self.reuse and self._dirty is not None:
            local, idx, full = self._dirty
            self._buffer[local, idx] = self.flat[idx]
            for r in full:
                self._buffer[r] = self.flat
        else:
            self._buffer[:n].copy_(self.flat.expand(n, -1))
        batch = self._buffer[:n]
        rows = torch.arange(start, max(start, min(stop, 2 * self.m)), device=self.flat.device)
        idx = self.coords[rows % self.m]
        if rows.numel():
            steps = torch.full(rows.shape, self.h, dtype=self.flat.dtype, device=rows.device)
            steps[rows >= self.m] = -self.h
            batch[rows - start, idx] = self.flat[idx] + steps
        full = []
        for r in range(max(start, 2 * self.m), stop):
            j = r - 2 * self.m
            step = self.h if j < self.k else -self.h
            batch[r - start] = self.flat + step * self.directions[j % self.k]
            full.append(r - start)
        self._dirty = (rows - start, idx, full)
        return batch.view(n, *self.checkable.value.shape)

    def forget(self) -> None:
        """The buffer may hold anything: the next call refills the rows it returns."""
        self._dirty = None

    def coordinate_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat index, step) of the 2m coordinate rows: +h for each, then −h."""
        steps = torch.full((2 * self.m,), self.h, dtype=self.flat.dtype, device=self.flat.device)
        steps[self.m :] = -self.h
        return self.coords.repeat(2), steps

    def split(self, out: torch.Tensor) -> Evaluations:
        m, k = self.m, self.k
        if not k:
            return Evaluations(out[:m], out[m : 2 * m], None, None)
        return Evaluations(out[:m], out[m : 2 * m], out[2 * m : 2 * m + k], out[2 * m + k :])

"""The loss terms at perturbed points: batched with vmap over perturbed copies where the
model allows, through the nn.Linear hook where that applies, serially otherwise."""

from __future__ import annotations

import re
from typing import Any

import torch

from ..._guest import describe_exception
from ...checkables import Checkable
from ...errors import UserCodeError
from ...prepare import CheckProblem
from ...stopping import raise_if_stopped
from .batching import chunk_size, in_chunks
from .config import CheckOptions
from .linear_path import LinearDelta, hooked_rows, linear_delta
from .rows import Evaluations, Rows

MAX_BATCH = 512  # rows per batched call over copies (the hook path, 4x: it makes no copies)
MODEL_WIDE = 3  # tensors vmap fails for, none passing, before it is not tried again
# A few rows of a model whose forward takes this long run one at a time: vmap's batching
# rules (BatchNorm's above all) and its probe cost more than they save (timm resnet18:
# a 4-row vmapped call took 7 plain forwards)
FEW_ROWS, SLOW_FORWARD = 8, 0.005


class Evaluator:
    """Loss terms at θ ± h·e_i: batched with vmap where the model allows, serially otherwise."""

    def __init__(
        self,
        problem: CheckProblem,
        options: CheckOptions,
        *,
        needs_grad: bool = False,
        base: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.problem = problem
        self.options = options
        self.needs_grad = needs_grad
        self.fallback_reason: str | None = None  # why nothing is batched
        self.serial_reasons: dict[str, str] = {}  # why one tensor is not (vmap fails for it)
        if not options.batched:
            self.fallback_reason = "batching turned off (--serial)"
        elif needs_grad:
            self.fallback_reason = "second-order terms are evaluated one at a time"
        self.batched_used = False
        self.serial_used = False
        self.base = base or {c.name: c.value for c in problem.checkables}
        self.f0: torch.Tensor | None = None  # loss terms at θ, set before evaluate()
        self._probed: set[str] = set()  # tensors vmap was shown to handle
        self._linear: dict[str, LinearDelta | None] = {}  # see _linear_rows
        self.activation_bytes = 0  # bytes one forward allocates, set with f0
        self.forward_seconds = 0.0  # one plain forward, set with f0

    @property
    def mode(self) -> str:
        """ "batched" (vmap), "serial", or "mixed" when vmap ran only some tensors."""
        if self.batched_used and self.serial_used:
            return "mixed"
        return "batched" if self.batched_used else "serial"

    def grad_mode(self) -> Any:
        return torch.enable_grad() if self.needs_grad else torch.no_grad()

    def can_batch(self, c: Checkable) -> bool:
        """Whether vmap runs the target over copies of `c` and reproduces f(θ) exactly
        enough. Decided per tensor (e.g. an in-place residual add fails under vmap only when
        a tensor of the branch it adds is batched); once MODEL_WIDE tensors failed and none
        passed, vmap is not tried again."""
        if self.fallback_reason is not None or c.name in self.serial_reasons:
            return False
        if c.name in self._probed:
            return True
        with self.grad_mode():
            try:
                probe = self._vmapped(c, c.value.unsqueeze(0))[0]
            except KeyboardInterrupt:
                raise
            except (Exception, SystemExit) as exc:
                self._serial_for(c, _vmap_failure(exc))
                return False
        # the loss terms (not the scale that ends the row), within rounding of the numbers
        # the loss sums (the projection differences outputs that vmap may round apart)
        f0, probe = self.f0[:-1], probe[:-1]
        size = max(float(f0.abs().max()), self.problem.magnitude or 0.0)
        tol = 1e3 * torch.finfo(self.problem.precision).eps * (1.0 + size)
        if not torch.allclose(probe, f0.to(probe), rtol=0.0, atol=tol):
            # e.g. dropout inside attention draws its mask differently under vmap
            self._serial_for(c, "vmap changes the model's result (random draws or state differ)")
            return False
        self._probed.add(c.name)
        return True

    def _serial_for(self, c: Checkable, reason: str) -> None:
        self.serial_reasons[c.name] = reason
        if not self._probed and len(self.serial_reasons) >= MODEL_WIDE:
            self.fallback_reason = reason  # the model, not a tensor: stop probing

    def serial_reason(self, name: str) -> str | None:
        """Why the points of tensor `name` were evaluated one at a time (None: batched)."""
        return self.fallback_reason or self.serial_reasons.get(name)

    def serial_summary(self) -> str | None:
        """Why evaluations ran one point at a time: for every tensor, or for which."""
        if self.fallback_reason is not None or not self.serial_reasons:
            return self.fallback_reason
        names = list(self.serial_reasons)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        reason = next(iter(self.serial_reasons.values()))
        return f"{reason} — for {shown}"

    def evaluate(
        self, c: Checkable, coords: torch.Tensor, h: float, direction: torch.Tensor | None = None
    ) -> Evaluations:
        """Loss terms at θ ± h·e_i for each coordinate (and at θ ± h·d for a direction).
        A stopped run starts none, and keeps none the stop came during: a forward that
        caught the Stop may have returned anything (Note [stopping a run] in stopping.py)."""
        raise_if_stopped()
        rows = Rows(c, coords, h, direction)
        few = rows.count <= FEW_ROWS and self.forward_seconds >= SLOW_FORWARD
        with self.grad_mode():
            out = None
            if not few and self.can_batch(c):
                out = self._linear_rows(rows)
                if out is None:
                    out = self._batched(rows)
                if out is not None:
                    self.batched_used = True
            if out is None:
                self.serial_used = True
                out = self._serial(rows)
        raise_if_stopped()
        return rows.split(out)

    def _vmapped(self, c: Checkable, batch: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(
            lambda v: self.problem.terms({**self.base, c.name: v}), randomness="same"
        )(batch)

    def _linear_rows(self, rows: Rows) -> torch.Tensor | None:
        """The rows through the nn.Linear hook (Note [the nn.Linear hook]) where the probe
        allowed it for this tensor; None where it doesn't apply or failed once, and the
        copies are used instead."""
        c = rows.checkable
        if rows.m == 0:  # a direction alone: two copies
            return None
        if c.name not in self._linear:
            self._linear[c.name] = linear_delta(
                self.problem,
                c,
                self.base,
                self.f0,
                seed=self.options.seed,
                needs_grad=self.needs_grad,
            )
        delta = self._linear[c.name]
        if delta is None:
            return None
        out = hooked_rows(
            delta,
            rows,
            self.problem.terms,
            self.base,
            activation_bytes=self.activation_bytes,
            cap=4 * MAX_BATCH,
            copies=lambda part: self._vmapped(c, part),
        )
        if out is None:
            self._linear[c.name] = None  # the copies will do
        return out

    def _batched(self, rows: Rows) -> torch.Tensor | None:
        """vmap over perturbed copies of one tensor, in chunks that fit the memory budget
        (the copies and the activations each copy makes); None (and a reason) if a chunk
        fails, e.g. for lack of memory."""
        chunk = chunk_size(rows.flat, rows.row_bytes + self.activation_bytes, MAX_BATCH)

        def run(start: int, stop: int) -> torch.Tensor:
            part = rows.materialize(start, stop)
            version = part._version
            try:
                out = self._vmapped(rows.checkable, part)
            except BaseException:
                rows.forget()  # a retry (smaller chunk after an OOM) refills every copy
                raise
            if part._version != version:
                # the target wrote into the values it was given: refill every copy from now on
                rows.reuse = False
                rows.forget()
            return out

        try:
            return in_chunks(rows.count, chunk, run)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:
            self._serial_for(rows.checkable, _vmap_failure(exc))
            return None

    def _serial(self, rows: Rows) -> torch.Tensor:
        c = rows.checkable
        rows.reuse = False  # a fresh copy per forward costs nothing next to the forward
        out = []
        for r in range(rows.count):
            raise_if_stopped()
            value = rows.materialize(r, r + 1)[0]
            try:
                out.append(self.problem.terms({**self.base, c.name: value}).detach())
            except (UserCodeError, KeyboardInterrupt):
                raise
            except (Exception, SystemExit) as exc:
                raise forward_error(exc, f" at a perturbed value of {c.name}") from exc
        return torch.stack(out)


def _vmap_failure(exc: Exception) -> str:
    """Why vmap could not run the target, in one line."""
    text = str(exc).strip()
    if "setup_context" in text:
        return (
            "vmap needs an autograd.Function to define setup_context (and vmap or "
            "generate_vmap_rule); this one does not"
        )
    first = text.splitlines()[0] if text else ""
    first = first if len(first) <= 120 else first[:117] + "..."
    return f"vmap could not run the model ({type(exc).__name__}: {first})"


_DTYPE_CLASH = re.compile(r"dtype|scalar type|cast", re.IGNORECASE)
_FLOAT64 = re.compile(r"double|float64", re.IGNORECASE)
# torch's names (Long, torch.int64, long int); "gotLong" occurs, so no left boundary for those
_INTEGER = re.compile(
    r"(?:Long|Int|Short|Byte|Char|Bool)(?![a-z])|\b(?:u?int(?:8|16|32|64)?|long|short|bool)\b"
)


def forward_error(exc: BaseException, where: str = "") -> UserCodeError:
    """The user's forward raised: their words, their line, and a hint for the usual cause."""
    text = describe_exception(exc, None)
    return UserCodeError(f"the forward raised {text}{where}", hint=_dtype_hint(str(exc)))


def _dtype_hint(message: str) -> str | None:
    """What is true of a dtype clash with the float64 values gradtool checks in, read from
    the error's own words (without the file name, which may contain 'int')."""
    if not (_DTYPE_CLASH.search(message) and _FLOAT64.search(message)):
        return None
    if "indices" in message:  # e.g. an embedding given floating "ids"
        return (
            "this needs integer indices but got a float64 tensor: gradtool converts floating "
            "inputs to the check dtype and perturbs them; pass indices as integer tensors "
            "(torch.long, or --input-dtype int64)."
        )
    if _INTEGER.search(message):
        # the same clash fails in float32 too: float constants are not the cause
        return (
            "an integer tensor meets a floating one here, in any dtype: gradtool passes "
            "integer inputs to the forward as they are (never converted, never perturbed); "
            "give floating inputs where the model computes with them, or convert in the "
            "forward (x.to(weight.dtype))."
        )
    return (
        "gradtool checks in float64: create constants with the input's dtype "
        "(x.new_tensor, dtype=x.dtype), or run with --dtype float32."
    )


def synced(t: torch.Tensor) -> torch.Tensor:
    """`t`, once the GPU has computed it: CUDA calls return before the work is done, and
    the engine times its forwards (full check or sample, --budget)."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)
    return t

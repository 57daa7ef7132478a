"""`--apply-checkpoint`: the advice applied to a fresh copy, measured again, and verified.

Note [verifying a checkpointed copy]
    Checkpointing must not change a gradient, and two things can make it do so: a block
    whose forward is not a pure function of its inputs and parameters (it draws randomness
    the RNG state does not capture, or has a side effect, so the recomputation differs), and
    a recomputation that never happens (a check that bypassed the checkpoint would verify
    the plain model). So the checkpointed copy is judged twice: its autograd gradients
    against the plain copy's, fresh copies both, step k against step k for two seeded steps
    (a side effect of the forward runs twice per checkpointed step: the second step shows
    it), and by gradtool's own check (on another fresh copy), whose
    analytic pass runs the backward with the checked values substituted
    (prepare.Problem.substituted): the recomputation sees them.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointError
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from ...errors import GradtoolError, OptionError
from ...prepare import copy_of_model
from ...results import CheckpointResult
from .candidates import predicted_saving

GRAD_TOLERANCE = 1e-4  # relative to the gradient's largest entry: rounding, not a change
TRAINING_STEPS = 2  # plain and checkpointed gradients compared over this many fresh steps
DISAGREEMENT = 0.20  # predicted and measured savings further apart than this: a warning


class CheckpointedForward:
    """A block's forward through torch.utils.checkpoint (non-reentrant; the RNG state is
    preserved, so dropout draws the same mask when recomputed). Set on gradtool's copy as
    the instance's `forward`; holds the module itself, so a deep copy of the model (the
    check's float64 copy) gets a forward of its own copy."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        plain = type(self.module).forward
        return torch_checkpoint(
            plain, self.module, *args, use_reentrant=False, preserve_rng_state=True, **kwargs
        )


RANGE = re.compile(r"^(?:(?P<parent>.+)\.)?(?P<first>\d+)-(?P<last>\d+)$")


def resolve_blocks(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The modules that `names` wrap: each a submodule's name, or a range of a stack's layers
    ("encoder.layers.0-11": each of encoder.layers.0 ... 11); none may contain another."""
    from .candidates import stacks

    known = [n for n, _ in model.named_modules() if n]
    present = set(known)
    unknown, modules = [], []
    for name in names:
        if name in present:
            modules.append(name)
            continue
        match = RANGE.match(name)
        if match is None:
            unknown.append(name)
            continue
        prefix = match["parent"] + "." if match["parent"] else ""
        first, last = int(match["first"]), int(match["last"])
        layers = [f"{prefix}{i}" for i in range(first, last + 1)]
        if first >= last or any(layer not in present for layer in layers):
            unknown.append(name)
            continue
        modules.extend(layers)
    if unknown:
        shown = ", ".join(known[:20]) + (f", … ({len(known)} modules)" if len(known) > 20 else "")
        ranges = list(stacks(model))
        hint = f"Choose among: {shown}"
        if ranges:
            hint = f"Choose a stack of layers ({', '.join(ranges[:5])}) or among: {shown}"
        raise OptionError(
            "checkpoint", f"names no module of the model: {', '.join(unknown)}", hint=hint
        )
    for a in modules:
        for b in modules:
            if a != b and a.startswith(b + "."):
                raise OptionError(
                    "checkpoint", f"names {a!r} inside {b!r}", hint="Name blocks that don't nest."
                )
    if len(set(modules)) < len(modules):
        twice = sorted({m for m in modules if modules.count(m) > 1})
        raise OptionError(
            "checkpoint", f"names {', '.join(twice)} twice", hint="Name each block once."
        )
    return modules


def wrap_blocks(model: nn.Module, blocks: Sequence[str]) -> None:
    """Checkpoint each block of gradtool's copy (never the user's model)."""
    named = dict(model.named_modules())
    for name in blocks:
        module = named[name]
        if "forward" in vars(module):
            raise GradtoolError(
                f"cannot checkpoint {name}: its forward is set on the instance",
                hint="Choose another block with --checkpoint.",
            )
        module.forward = CheckpointedForward(module)


def gradients(session: Any) -> dict[str, torch.Tensor]:
    session.step()
    return {
        n: p.grad.detach().clone()
        for n, p in session.model.named_parameters()
        if p.grad is not None
    }


def compare_gradients(plain: dict, checkpointed: dict) -> tuple[float, list[str]]:
    """The largest relative difference, and the parameters beyond GRAD_TOLERANCE."""
    worst, differ = 0.0, []
    for name in sorted(set(plain) | set(checkpointed)):
        a, b = plain.get(name), checkpointed.get(name)
        if a is None or b is None:
            differ.append(name)
            worst = float("inf")
            continue
        scale = float(a.abs().max()) or 1.0
        rel = float((a - b).abs().max()) / scale
        worst = max(worst, rel)
        if not rel <= GRAD_TOLERANCE:
            differ.append(name)
    return worst, differ


def apply_and_verify(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    *,
    blocks: Sequence[str],
    wrapped: Sequence[str],
    loss_fn: Callable | None,
    device: torch.device | None,
    seed: int,
    before: tuple,
    module_rows: Callable,
    folder: Path | None = None,
    target: str = "TARGET",
) -> tuple[CheckpointResult, list[str]]:
    """Checkpoint `wrapped` (the modules `blocks` name) on a fresh copy, measure it as the
    plain one was, and verify its gradients (Note [verifying a checkpointed copy])."""
    from . import STEPS_TIMED, Session

    rec_before, held_before, peak_before, step_ms_before = before
    warnings: list[str] = []
    session = Session(model, args, kwargs, loss_fn=loss_fn, device=device, seed=seed, folder=folder)
    wrap_blocks(session.model, wrapped)
    predicted = predicted_saving(rec_before, wrapped)
    plain = Session(model, args, kwargs, loss_fn=loss_fn, device=device, seed=seed, folder=folder)
    plain.step()  # warm-up
    try:
        session.step()  # warm-up, as the plain copy had
        _, peak_after = session.peak_step(steps=1)
        rec_after, held_by, _ = session.held_step()
        # the step before and after: plain and checkpointed steps taken in turn, so that a
        # busy machine slows both alike; each the median of STEPS_TIMED
        times: list[tuple[float, float]] = [
            (plain.step(), session.step()) for _ in range(STEPS_TIMED)
        ]
        step_ms_before = statistics.median(t[0] for t in times)
        step_ms_after = statistics.median(t[1] for t in times)
    except CheckpointError as exc:  # the recomputation made other tensors than the forward
        first = str(exc).strip().splitlines()[0]
        return CheckpointResult(
            blocks=tuple(blocks),
            predicted_saving_bytes=predicted,
            measured_saving_bytes=0,
            held_before=held_before,
            held_after=held_before,
            peak_before=peak_before,
            peak_after=None,
            step_ms_before=step_ms_before,
            step_ms_after=0.0,
            check_passed=False,
            check_summary=f"the recomputation differs from the forward ({first})",
            wrapped=tuple(wrapped),
        ), warnings
    held_after = sum(held_by.values())
    measured = held_before - held_after
    if predicted and abs(measured - predicted) > DISAGREEMENT * abs(predicted):
        warnings.append(
            f"checkpointing saved {measured} bytes, {predicted} predicted: more than "
            f"{DISAGREEMENT:.0%} apart"
        )

    try:
        grad_worst, differ = _same_steps(
            lambda: Session(
                model, args, kwargs, loss_fn=loss_fn, device=device, seed=seed, folder=folder
            ),
            wrapped,
        )
    except GradtoolError:
        raise
    except Exception as exc:  # torch.utils.checkpoint's own complaint about a recomputation
        grad_worst, differ = float("inf"), [f"the recomputation failed: {exc}"]
    began = time.perf_counter()
    # a fresh copy with the blocks wrapped: the stepped one may hold what a deep copy can't
    # take (an activation kept on the module: `self.last_attn = a`)
    fresh = copy_of_model(model)
    wrap_blocks(fresh, wrapped)
    report = _check(fresh, args, kwargs, loss_fn, seed, device, "checkpointed copy")
    failed = [r.name for r in report.failures]
    shared: list[str] = []
    if failed:  # does the plain model fail the same way? then checkpointing is not why
        plain_report = _check(
            copy_of_model(model), args, kwargs, loss_fn, seed, device, "plain copy", wrt=failed
        )
        shared = [r.name for r in plain_report.failures if r.name in failed]
    check_seconds = time.perf_counter() - began
    own = [n for n in failed if n not in shared]
    unresolved = len(report.inconclusive)
    check_worst = max((r.rel_error for r in report.results), default=None)
    counts = f"{len(report.results) - len(failed) - unresolved} pass"
    if unresolved:  # finite differences could not resolve them: neither verified nor refuted
        counts += f", {unresolved} inconclusive"
    if failed and not own and not differ:  # every failure is the plain model's own
        parts = [
            f"checkpointing changed no gradient: gradtool check {counts}, {len(failed)} fail "
            "(the same without checkpointing)"
        ]
    else:
        parts = [f"gradtool check {counts}, {len(failed)} fail"]
    if own:
        parts.append("failing: " + _few(own))
    if shared:
        parts.append(
            "also fails without checkpointing: " + _few(shared) + f": a question for "
            f"`gradtool check {target}`, not for checkpointing"
        )
    if differ:
        parts.append("gradients differ from the plain copy's: " + _few(differ))
    else:
        parts.append(f"grads = plain copy's (max diff {grad_worst:.0e})")
    result = CheckpointResult(
        blocks=tuple(blocks),
        predicted_saving_bytes=predicted,
        measured_saving_bytes=measured,
        held_before=held_before,
        held_after=held_after,
        peak_before=peak_before,
        peak_after=peak_after,
        step_ms_before=step_ms_before,
        step_ms_after=step_ms_after,
        check_passed=not own and not differ and not report.interrupted,
        check_summary="; ".join(parts),
        check_worst_error=check_worst,
        grad_difference=grad_worst,
        modules=tuple(module_rows(session.model, rec_after, held_by)),
        wrapped=tuple(wrapped),
        check_seconds=check_seconds,
        fails_without_checkpoint=tuple(shared),
    )
    return result, warnings


def _same_steps(new_session: Callable[[], Any], wrapped: Sequence[str]) -> tuple[float, list]:
    """Fresh plain and checkpointed copies, TRAINING_STEPS steps each, compared step by
    step: the k-th step of one against the k-th of the other, so that a block whose forward
    changes the model's state (run twice per step when checkpointed) shows in a later step."""
    plain, checkpointed = new_session(), new_session()
    wrap_blocks(checkpointed.model, wrapped)
    worst, differ = 0.0, []
    for _ in range(TRAINING_STEPS):
        w, d = compare_gradients(gradients(plain), gradients(checkpointed))
        worst = max(worst, w)
        differ.extend(n for n in d if n not in differ)
    return worst, differ


def _few(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + ("…" if len(names) > 5 else "")


def _check(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    loss_fn: Callable | None,
    seed: int,
    device: torch.device | None,
    name: str,
    wrt: Sequence[str] = (),
) -> Any:
    from ...api import check

    return check(
        model,
        args,
        kwargs=kwargs,
        loss_fn=loss_fn,
        seed=seed,
        device=device,
        wrt=wrt,
        name=name,
        found_by="gradtool memory --apply-checkpoint",
    )

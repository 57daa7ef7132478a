"""flow(): one look at the gradient flow, or a few training steps, on a deep copy of the model
(its own dtype and device); the user's model, train mode and RNG state are left as found."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ..._guest import RngState, describe_exception, init_cuda, preserved_state
from ..._tree import first_tensor, floating_leaves, map_tensors
from ..._version import __version__
from ...errors import GradtoolError, InputError, UserCodeError
from ...locations import locate_findings
from ...losses import ProjectionLoss, UserLoss, call_loss
from ...options import Optimizer, at_least, choice, positive
from ...prepare import (
    home_device,
    normalize_inputs,
    parse_device,
    training_copy,
)
from ...results import FlowReport, LayerStats
from ...stopping import Interrupted, caught, raise_if_stopped, shielded
from .distributed import RankContext, detect_ranks, reduce_across_ranks, unwrapped
from .findings import detect_findings
from .layer_rows import history, parameter_grad_max, resolve_step
from .model_map import ModelMap, comparable_keys, model_dtype_device
from .optim_watch import OptimizerWatch, apply_record
from .overfit import overfit_verdict
from .recorder import Recorder
from .samples import StepSample, label
from .step import read_back
from .thresholds import FlowThresholds

if TYPE_CHECKING:
    from .distributed_flow import Shard

# flow may run where check can't (no float64 on MPS): on the model's own dtype and device
ALLOWED_DEVICES = ("cpu", "cuda", "mps")
DEFAULT_LR = {Optimizer.SGD: 1e-2, Optimizer.ADAM: 1e-3}


def flow(
    model: nn.Module,
    inputs: Any,
    *,
    loss_fn: Callable[..., Any] | None = None,
    steps: int = 1,
    lr: float | None = None,
    optimizer: str | Optimizer = "sgd",
    seed: int = 0,
    thresholds: FlowThresholds | None = None,
    functional: bool = True,
    name: str | None = None,
    found_by: str = "passed to flow()",
) -> FlowReport:
    """Gradient flow of `model` on one batch: per-layer norms, dead/saturated activations,
    the first NaN, and findings with fixes.

    `inputs` is a tensor, a tuple/list (positional) or a dict (keyword arguments). Without
    `loss_fn(output, *inputs)` the loss is a seeded random projection of the output. With
    `steps` > 1 a copy trains that many steps on the batch (`optimizer` "sgd" | "adam").
    The model, its train mode and the RNG state are left as they were.

    Ctrl-C (or `stopping.Stop`: the timeout, SIGTERM) after a step was measured raises
    `Interrupted` carrying the partial report (the steps measured, findings from them,
    `interrupted` the reason); before that, the KeyboardInterrupt propagates.
    """
    args, kwargs = normalize_inputs(inputs)
    return run_flow(
        model,
        args,
        kwargs,
        loss_fn=loss_fn,
        steps=steps,
        lr=lr,
        optimizer=optimizer,
        seed=seed,
        thresholds=thresholds,
        functional=functional,
        target=name or type(model).__name__,
        found_by=found_by,
    )


def run_flow(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    *,
    loss_fn: Callable[..., Any] | None = None,
    steps: int = 1,
    lr: float | None = None,
    optimizer: str | Optimizer = "sgd",
    seed: int = 0,
    thresholds: FlowThresholds | None = None,
    functional: bool = True,
    target: str = "model",
    found_by: str = "",
    folder: Path | None = None,
    device: str | torch.device | None = None,
    shard: Shard | None = None,
) -> FlowReport:
    """flow() on inputs already split into (args, kwargs); the CLI's entry point.

    `device` moves the copy and the inputs (default: where the model already lives).
    `shard` (`flow --nproc`, distributed_flow.py): the inputs are this process's rows of a
    batch split across processes under DDP; the projection loss is the whole batch's,
    restricted to these rows, and the report gives the whole batch's size (Note [a batch
    split across processes]).
    Interrupted as flow() is."""
    optimizer, lr = _checked_options(model, steps, optimizer, lr)
    th = thresholds or FlowThresholds()
    started = time.perf_counter()
    move_model = device is not None
    # without a device, the inputs go where the model lives (as `check` does), e.g. a model
    # built on the GPU with example inputs (or --input-shape tensors) made on the CPU
    device = parse_device(device, ALLOWED_DEVICES) if move_model else home_device(model)
    # initialized before the RNG state is captured, so that CUDA's is seeded and restored
    init_cuda(device)

    with preserved_state():
        RngState.seeded(seed).restore()
        torch.set_grad_enabled(True)
        work, args, kwargs = training_copy(model, args, kwargs, device, move_model=move_model)
        model_dtype, model_device = model_dtype_device(work)
        samples, warnings, comparable, interrupted = _train_and_measure(
            work,
            args,
            kwargs,
            loss_fn=loss_fn,
            steps=steps,
            lr=lr,
            optimizer=optimizer,
            seed=seed,
            th=th,
            functional=functional,
            folder=folder,
            shard=shard,
        )

    first = first_tensor((args, kwargs))
    batch = int(first.shape[0]) if first is not None and first.dim() >= 1 else None
    if shard is not None:
        batch = shard.total
    loss_kind = "loss_fn" if loss_fn is not None else "projection"
    overfit = overfit_verdict(samples, loss_kind, th, steps, cut_short=interrupted is not None)
    if len(samples) < steps and interrupted is None:
        warnings.append(f"stopped after step {len(samples)} of {steps}: non-finite values")
    if loss_kind == "projection" and len(samples) > 1:
        warnings.append(_projection_trained(samples))
    report = FlowReport(
        target=target,
        version=__version__,
        layers=_last_rows(samples),
        findings=locate_findings(
            detect_findings(
                samples,
                th,
                batch,
                comparable,
                optimizer=optimizer,
                lr=lr,
                overfit=overfit,
                loss=loss_kind,
            ),
            unwrapped(model),  # the layers' names are the wrapped module's (DDP: `module.`)
            loss_fn,
        ),
        found_by=found_by,
        source="flow",
        dtype=model_dtype,
        device=str(model_device),
        mode="train",
        batch_size=batch,
        loss=loss_kind,
        steps=len(samples),
        steps_requested=steps,
        optimizer=optimizer if steps > 1 else None,
        lr=lr if steps > 1 else None,
        history=history(samples) if steps > 1 else (),
        overfit=overfit,
        warnings=tuple(warnings),
        seconds=time.perf_counter() - started,
        interrupted=interrupted,
    )
    if interrupted is not None:
        raise Interrupted(report)
    return report


def _projection_trained(samples: list[StepSample]) -> str:
    """What training on the projection does: it has no minimum, so its loss falls without
    end and the gradients and weights grow with it (the findings judge its first step)."""

    def total(sample: StepSample) -> float:
        return math.sqrt(sum((r.grad_norm or 0.0) ** 2 for r in sample.rows if r.kind == "layer"))

    first = total(samples[0])
    largest = max((t for t in map(total, samples) if math.isfinite(t)), default=0.0)
    grew = first > 0 and largest >= 2 * first
    growth = f" (the gradient norm grew ×{largest / first:.3g} here)" if grew else ""
    return (
        "--steps without loss_fn trains a random projection of the output, which has no "
        f"minimum: its loss falls without end and gradients and weights grow with it{growth}; "
        "the steps after the first say little about your model: define loss_fn(output, "
        "*inputs) for a real --steps run"
    )


def _last_rows(samples: list[StepSample]) -> tuple[LayerStats, ...]:
    """The last step's rows, each with the update/weight ratio of the last optimizer step
    measured (the one that made the last step's weights: nothing steps after the last)."""
    last = samples[-1].rows
    if len(samples) < 2:
        return tuple(last)
    before = {r.key: r.update_ratio for r in samples[-2].rows}
    return tuple(
        dataclasses.replace(r, update_ratio=before[r.key])
        if r.update_ratio is None and before.get(r.key) is not None
        else r
        for r in last
    )


def _checked_options(
    model: Any, steps: Any, optimizer: str | Optimizer, lr: float | None
) -> tuple[str, float]:
    """The model is a module, `steps` a positive integer; the optimizer's name and the
    learning rate (its default when None), validated."""
    if not isinstance(model, nn.Module):
        what = f"the class {model.__name__}" if isinstance(model, type) else type(model).__name__
        raise InputError(
            f"gradtool flow needs an nn.Module (layers to measure); got {what}",
            hint="For a function or autograd.Function, `gradtool check` verifies its gradients.",
        )
    at_least("steps", steps, 1)
    chosen = choice(Optimizer, "optimizer", optimizer)
    lr = DEFAULT_LR[chosen] if lr is None else positive("lr", lr)
    return chosen.value, lr


def _train_and_measure(
    work: nn.Module,
    args: tuple,
    kwargs: dict,
    *,
    loss_fn: Callable[..., Any] | None,
    steps: int,
    lr: float,
    optimizer: str,
    seed: int,
    th: FlowThresholds,
    functional: bool,
    folder: Path | None,
    shard: Shard | None = None,
) -> tuple[list[StepSample], list[str], set[str], str | None]:
    """Measure `steps` steps on the copy, stepping the optimizer between them; stops at the
    first step with a non-finite value. Ctrl-C (or a Stop) after a step was measured keeps
    the steps measured, and the reason is returned last; before that it propagates."""
    mm = ModelMap(work)
    # under DDP in several processes (flow --nproc): each step combined across them
    ranks, note = detect_ranks(work, mm.params)
    recorder = Recorder(mm, functional=functional, ranks=ranks)
    recorder.saturation_margin = th.saturation_margin
    trainable = [p for p in mm.params if p.requires_grad]
    opt = None
    if steps > 1 and trainable:
        opt = (
            torch.optim.SGD(trainable, lr=lr)
            if optimizer == "sgd"
            else torch.optim.Adam(trainable, lr=lr)
        )
    step_loss = StepLoss(loss_fn, seed, folder, shard)
    samples: list[StepSample] = []
    warnings: list[str] = [note] if note is not None else []
    # the update of each step, through the same optimizer hooks as the Monitor's (p.grad is
    # set to None before every step here: no zeroing to check)
    watch = OptimizerWatch(mm)
    grad_max: dict[int, list[float | None]] = {}  # per step: max |g| per parameter
    interrupted: str | None = None
    stepping: int | None = None  # the step whose optimizer step is under way
    try:
        if opt is not None:
            watch.attach()
        for step in range(1, steps + 1):
            raise_if_stopped()  # a forward that swallowed a Stop starts no more steps
            for p in mm.params:
                p.grad = None
            step_args, step_kwargs = map_tensors(lambda t: t.detach().clone(), (args, kwargs))
            output = _recorded_forward(recorder, work, step_args, step_kwargs, folder)
            loss = step_loss(output, step_args, step_kwargs)
            if loss.requires_grad:
                try:
                    loss.backward()
                except Exception as exc:
                    raise UserCodeError(
                        f"backward raised {describe_exception(exc, folder)}"
                    ) from exc
            recorder.measure_grads([p.grad for p in mm.params])
            pending = recorder.collect(step, loss)
            if ranks is not None:
                _combine_across_ranks([pending], ranks)
            read_back([pending])  # the one host transfer of this step
            sample = resolve_step(pending, mm)
            grad_max[step] = parameter_grad_max(pending, len(mm.params))
            raise_if_stopped()  # stopped during the step: its forward may have caught the Stop
            samples.append(sample)
            if sample.nan is not None:
                break  # after a NaN every later step only repeats it
            if opt is not None and step < steps:
                stepping = step
                watch.arm(step)
                opt.step()
                stepping = None
    except KeyboardInterrupt as exc:
        if not samples:
            raise
        interrupted = caught(exc)
        if stepping is not None:  # an optimizer step cut in half: its update is not measured
            watch.records.pop(stepping, None)
    finally:
        with shielded():
            watch.close()
            recorder.close()
            for p in mm.params:
                p.grad = None
    if ranks is not None:
        _combine_across_ranks(watch.unread(include_armed=True), ranks)
    read_back(watch.unread(include_armed=True))  # one transfer for every step's update
    samples = [
        apply_record(s, watch.records.get(s.step), mm, grad_max.get(s.step)) for s in samples
    ]
    if not any(p.requires_grad for p in mm.params) and mm.params:
        warnings.append("every parameter is frozen (requires_grad=False)")
    warnings.extend(recorder.errors)
    warnings.extend(watch.errors)
    return samples, warnings, comparable_keys(mm), interrupted


def _combine_across_ranks(items: list[Any], ranks: RankContext) -> None:
    """A step's numbers (or the optimizer's records) combined across the processes (Note
    [reducing a step across ranks]); every process calls it at the same point, and all of
    them stop together when the numbers cannot be combined."""
    if not reduce_across_ranks(items, ranks):
        raise UserCodeError(
            "the processes' forwards took different paths on their parts of the batch (other "
            "layers or activations ran), so their statistics cannot be combined",
            hint="Run without --nproc: a forward whose path depends on the data is measured "
            "on the whole batch in one process.",
        )


def _recorded_forward(
    recorder: Recorder, work: nn.Module, args: tuple, kwargs: dict, folder: Path | None
) -> Any:
    """One forward of the copy with the recorder's hooks on; they are off again after it."""
    recorder.begin()
    recorder.attach()
    try:
        recorder.enter_root(args, kwargs)
        return work(*args, **kwargs)
    except GradtoolError:
        raise
    except Exception as exc:
        failed_in = recorder.state.failed_in
        where = f" in {label(failed_in)}" if failed_in is not None else ""
        raise UserCodeError(
            f"the model's forward raised{where}: {describe_exception(exc, folder)}"
        ) from exc
    finally:
        recorder.exit_mode()
        recorder.detach_modules()
        recorder.end_forward()


class StepLoss:
    """The scalar loss of a step: the user's `loss_fn(output, *inputs)` (its terms summed), or
    a seeded random projection of the output, made at the first step."""

    def __init__(
        self,
        loss_fn: Callable[..., Any] | None,
        seed: int,
        folder: Path | None,
        shard: Shard | None = None,
    ):
        self.loss_fn = loss_fn
        self.shard = shard
        self.seed = seed
        self.folder = folder
        self.user: UserLoss | None = None
        self.projection: ProjectionLoss | None = None

    def __call__(self, output: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        if self.loss_fn is not None:
            value = call_loss(self.loss_fn, output, args, kwargs, self.folder)
            if self.user is None:
                self.user = UserLoss(self.loss_fn, value)
            terms, _ = self.user.stack(value)
            return terms[0]  # the sum of the terms (or the only one)
        if self.projection is None:
            leaves = [t for _, t in floating_leaves(output)]
            dtype = leaves[0].dtype if leaves else torch.float32
            # the loss flow reports is the plain projection of the output, every output in it
            reference = output if self.shard is None else self.shard.whole_batch(output)
            self.projection = ProjectionLoss(
                reference, self.seed, dtype, differenced=False, skip_nondifferentiable=False
            )
            if self.shard is not None:  # this process's rows of the whole batch's projection
                self.projection.projections = self.shard.own_rows(self.projection.projections)
        loss, _ = self.projection(output, args, kwargs)
        return loss.reshape(())

"""`gradtool flow FILE --nproc N`: flow() under DistributedDataParallel in N local processes,
each on its part of the example batch, with the report of one process on the whole batch.

The parent (`run_flow_nproc`) loads the target, checks the options and that the batch, the
outputs and the loss split across processes (Note [a batch split across processes]), writes
the job into a private temporary folder and runs

    python -m torch.distributed.run --standalone --nproc-per-node N \\
        -m gradcheck_tool.engines.flow.nproc_worker FOLDER

(gloo on the CPU, NCCL with `--device cuda`). Each process (`worker_main`) loads the file the
same way, takes its rows of every batched input, wraps the model in DDP and runs `run_flow`
on it (its deep copy, one step or `--steps` of the optimizer); the Recorder combines each
step's statistics across the processes. Rank 0 pickles its `FlowReport` into the folder —
gradtool's own dataclasses, in a folder only this user can write, read back with an unpickler
that accepts nothing else — and every rank writes how it ended (`rank<R>.json`): a user's
exception becomes an exit-2 message naming the rank, a rank that hangs is bounded by the
collectives' timeout, and Ctrl-C (or SIGTERM, or `--timeout`) stops every process.

Note [a batch split across processes]: the batch size B is dim 0 of the first tensor input;
every tensor input whose dim 0 is B is cut into N equal consecutive parts (process r gets
rows r·B/N … (r+1)·B/N), every other input goes whole to each process. DDP averages the
processes' gradients, so they are the whole batch's when each process's loss is the whole
batch's loss restricted to its rows, times the factor that makes the mean of the N losses
the whole batch's: 1 for a loss that is a mean over the examples, N for a sum, N for flow's
projection (the whole batch's projection, its rows for this process: `Shard.own_rows`).
The parent (on a copy of the model, no grad) checks that dim 0 is the batch: some floating
output has it as dim 0 (every one without loss_fn, which the projection cuts), and the
outputs of a forward on each part are those rows of the whole batch's output (in eval mode
when train mode differs: BatchNorm and dropout differ there by design). An input cut along
the sequence (an RNN with `batch_first=False`) or a forward that mixes the examples is
refused, where it would otherwise pass for a batch whose parts' losses each equal the whole
one. It then calls loss_fn on the whole output and on each part of it, term by term, to tell
a mean from a sum; a term that is neither is refused. Every process, the parent and one
process build the model and the inputs with the global RNGs seeded from --seed
(`runner.load_seeded`), so an unseeded file gives each the same weights. What still differs
from one process: a train-mode BatchNorm normalizes each part with its own statistics (said
in the report), and dropout draws its own masks in each process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch

from ..._guest import RngState, call_user, describe_exception, preserved_state
from ..._tree import first_tensor, floating_leaves, leaves_with_paths, map_tensors
from ...errors import GradtoolError, InputError, OptionError, UserCodeError
from ...results import FlowReport

WORKER_MODULE = "gradcheck_tool.engines.flow.nproc_worker"
REPORT_FILE = "report.pickle"
JOB_FILE = "job.json"
# how long a process waits for the others in a collective (or to start) before it gives up
DEFAULT_COLLECTIVE_TIMEOUT = 300.0
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
# relative tolerance when telling a mean over the examples from a sum (float32 losses)
LOSS_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Shard:
    """Process `rank`'s rows of a batch of `total` examples split into `processes` equal
    parts (Note [a batch split across processes])."""

    rank: int
    processes: int
    total: int

    @property
    def start(self) -> int:
        return self.rank * (self.total // self.processes)

    @property
    def stop(self) -> int:
        return self.start + self.total // self.processes

    def rows_of(self, value: Any) -> Any:
        """The structure with each batched tensor (dim 0 = the batch) cut to these rows."""
        return map_tensors(
            lambda t: t[self.start : self.stop] if batched(t, self.total) else t, value
        )

    def whole_batch(self, output: Any) -> list[torch.Tensor]:
        """Stand-ins for the whole batch's floating outputs (shapes, dtypes, requires_grad:
        what the projection is drawn from), in the order of `floating_leaves(output)`."""
        stand_ins = []
        for path, t in floating_leaves(output):
            if t.dim() == 0 or t.shape[0] != self.stop - self.start:
                raise RuntimeError(f"{path} of shape {tuple(t.shape)} is not this process's rows")
            whole = torch.empty((self.total, *t.shape[1:]), dtype=t.dtype, device=t.device)
            stand_ins.append(whole.requires_grad_(t.requires_grad))
        return stand_ins

    def own_rows(self, projections: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """This process's rows of the whole batch's projections, times N: the mean of the N
        processes' losses (what DDP's averaged gradient differentiates) is the whole one."""
        return [p[self.start : self.stop] * self.processes for p in projections]


def batched(t: Any, total: int) -> bool:
    """Whether an input or output tensor is split with the batch: its dim 0 is the batch."""
    return isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == total


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the parent decided before any process starts."""

    total: int
    backend: str
    steps: int
    lr: float
    optimizer: str
    seed: int
    loss_scales: dict[str, float]
    warnings: tuple[str, ...]


# --- the parent ------------------------------------------------------------------------------


def run_flow_nproc(
    target: str,
    options: Mapping[str, Any],
    nproc: int,
    *,
    collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT,
) -> FlowReport:
    """`gradtool flow TARGET --nproc N`: the report of flow() run under DDP in `nproc` local
    processes, the example batch split across them; equal to the one-process report on the
    same batch (apart from `seconds` and `processes`).

    `options` are keyed as the runner's flow options (steps, lr, optimizer, seed, device,
    input_shape, input_dtype, weights, fail_on). Raises GradtoolError for what the user
    caused (exit 2: the batch does not split, a rank's exception, a rank that hangs longer
    than `collective_timeout` seconds in a collective), RuntimeError for an internal failure,
    KeyboardInterrupt (after stopping every process) when interrupted."""
    from ...loading import scope_for
    from .findings import finding_kinds, parse_fail_on

    started = time.perf_counter()
    o = dict(options)
    nproc = _checked_nproc(nproc)
    fail_on = o.get("fail_on") or ()
    fatal = parse_fail_on(fail_on if isinstance(fail_on, str) else ",".join(fail_on))
    with scope_for(target):  # the user's folder importable while their code runs
        plan = _plan(target, o, nproc)
    job = {
        "target": target,
        "weights": o.get("weights"),
        "input_shape": list(o.get("input_shape") or ()) or None,
        "input_dtype": o.get("input_dtype", "float32"),
        "collective_timeout": float(collective_timeout),
        **dataclasses.asdict(plan),
    }
    with tempfile.TemporaryDirectory(prefix="gradtool-nproc-") as name:
        folder = Path(name)
        (folder / JOB_FILE).write_text(json.dumps(job))
        returncode = _launch(folder, nproc, plan.backend)
        report = _collect(folder, nproc, returncode, collective_timeout)
    return dataclasses.replace(
        report,
        processes=nproc,
        warnings=report.warnings + plan.warnings,
        fail_on=tuple(k for k in finding_kinds() if k in fatal),
        seconds=time.perf_counter() - started,
    )


def _checked_nproc(nproc: Any) -> int:
    from ...options import at_least

    nproc = at_least("nproc", nproc, 1)
    if not torch.distributed.is_available():
        raise OptionError("nproc", "needs torch.distributed, which this build of torch lacks")
    return nproc


def _plan(target: str, o: dict[str, Any], nproc: int) -> _Plan:
    """Load the target once here: the options, the device, and that the batch, the outputs
    and the loss split across `nproc` processes (Note [a batch split across processes])."""
    from ...options import at_least, valid_seed
    from ...prepare import copy_of_model, home_device, parse_device
    from ...runner import load_seeded
    from .train import _checked_options

    seed = valid_seed(o.get("seed", 0))
    loaded, args, kwargs = load_seeded(target, o, seed)  # as every process will
    model = loaded.obj
    optimizer, lr = _checked_options(
        model, o.get("steps", 1), o.get("optimizer", "sgd"), o.get("lr")
    )
    steps = at_least("steps", o.get("steps", 1), 1)
    device = o.get("device")
    where = parse_device(device, ("cpu", "cuda", "mps")) if device else home_device(model)
    kind = where.type if where is not None else "cpu"
    if kind not in BACKENDS:
        raise OptionError(
            "device",
            f"{kind} has no torch.distributed backend: --nproc runs on cpu (gloo) or cuda (nccl)",
        )
    if kind == "cuda" and torch.cuda.device_count() < nproc:
        raise OptionError(
            "nproc",
            f"{nproc} processes on cuda need {nproc} GPUs (one each); this machine has "
            f"{torch.cuda.device_count()}",
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError(
            "--nproc runs the model in DistributedDataParallel, which needs a parameter that "
            "requires grad; every parameter of this model is frozen",
            hint="Run without --nproc.",
        )
    first = first_tensor((args, kwargs))
    if first is None or first.dim() == 0:
        raise InputError(
            "--nproc splits the batch (dim 0 of the inputs) across processes, but the inputs "
            "have no tensor with a batch dimension"
        )
    batch = _Batch(
        int(first.shape[0]),
        _input_name(model, args, kwargs),
        tuple(first.shape),
        loaded.example_inputs is not None,
    )
    total = batch.total
    if total % nproc or total < nproc:
        problem, hint = _uneven(nproc, batch)
        raise OptionError("nproc", problem, hint=hint)
    folder = loaded.path.resolve().parent
    home = home_device(model)
    if home is not None:  # as run_flow does: the inputs go where the model lives
        args, kwargs = map_tensors(lambda t: t.to(home), (args, kwargs))
    with preserved_state():
        RngState.seeded(seed).restore()
        work = copy_of_model(model).train()
        with torch.no_grad():
            output = call_user(work, *args, what="the model's forward", folder=folder, **kwargs)
            split_warnings = _check_outputs_split(
                work, output, args, kwargs, batch, nproc, seed, folder, loaded.loss_fn is None
            )
    if loaded.loss_fn is None:
        scales: dict[str, float] = {}
        loss_warnings: tuple[str, ...] = ()
    else:
        scales, loss_warnings = _loss_scales(
            loaded.loss_fn, output, args, kwargs, total, nproc, folder
        )
    norms = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _BATCHNORM)})
    warnings = split_warnings + loss_warnings
    if norms:
        warnings += (
            f"--nproc {nproc}: each process's {'/'.join(norms)} normalizes its "
            f"{total // nproc} examples with their own statistics (as DDP training does "
            "without SyncBatchNorm), so this report is not the one-process report on the "
            f"{total} examples",
        )
    return _Plan(
        total=total,
        backend=BACKENDS[kind],
        steps=steps,
        lr=lr,
        optimizer=optimizer,
        seed=seed,
        loss_scales=scales,
        warnings=warnings,
    )


@dataclasses.dataclass(frozen=True)
class _Batch:
    """The batch --nproc splits: dim 0 of the first tensor input, named for messages."""

    total: int
    name: str  # the input it is dim 0 of: `x`, `batch['ids']`
    shape: tuple[int, ...]
    from_file: bool  # the inputs come from example_inputs() (else --input-shape)

    def said(self) -> str:
        return f"{self.total} examples by dim 0 of {self.name} (shape {self.shape})"


BATCH_FIRST_HINT = (
    "Put the batch first: batch_first=True for an RNN or Transformer, and inputs whose dim 0 "
    "is the batch (example_inputs() or --input-shape); or run without --nproc."
)
SEQUENCE_FIRST = (
    "an RNN or Transformer with batch_first=False takes (sequence, batch, features), and "
    "cutting dim 0 would split the sequence across the processes, not the examples"
)
NOT_THE_BATCH = "so dim 0 of {name} is probably not the batch: " + SEQUENCE_FIRST


def _input_name(model: torch.nn.Module, args: tuple, kwargs: dict) -> str:
    """The first tensor input as the forward's signature names it (`x`, `batch['ids']`)."""
    import inspect
    import re

    path = next(
        (p for p, t in leaves_with_paths((args, kwargs), writable=True) if _is_tensor(t)), ""
    )
    found = re.match(r"\[([01])\]\[([^\]]+)\](.*)", path)
    if found is None:
        return "the first input"
    where, key, rest = found.groups()
    if where == "1":  # a keyword input
        return f"{key.strip(chr(39) + chr(34))}{rest}"
    index = int(key)
    try:
        params = [
            p
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        return f"{params[index].name}{rest}"
    except (TypeError, ValueError, IndexError):
        return f"input {index}{rest}"


def _uneven(nproc: int, batch: _Batch) -> tuple[str, str]:
    """The problem and the hint when `nproc` does not divide the batch: the process counts
    that do, and how to give a batch that `nproc` divides."""
    total = batch.total
    fits = [n for n in range(2, total + 1) if total % n == 0]
    shown = fits[:8]
    counts = (
        " or ".join(filter(None, (", ".join(map(str, shown[:-1])), str(shown[-1]))))
        if shown
        else ""
    )
    where = "in example_inputs()" if batch.from_file else "with --input-shape (its first number)"
    multiple = nproc * max(1, math.ceil(total / nproc))
    problem = (
        f"{nproc} cannot split the batch of {total} examples into equal parts (dim 0 of "
        f"{batch.name}, shape {batch.shape})"
    )
    change = f"give a batch that is a multiple of {nproc} (e.g. {multiple}) {where}"
    hint = (
        f"Use --nproc {counts} ({'they divide' if len(shown) > 1 else 'it divides'} {total}), "
        f"or {change}."
        if shown
        else f"A batch of {total} cannot be split: {change}."
    )
    return problem, hint


def _check_outputs_split(
    work: torch.nn.Module,
    output: Any,
    args: tuple,
    kwargs: dict,
    batch: _Batch,
    nproc: int,
    seed: int,
    folder: Path,
    projected: bool,
) -> tuple[str, ...]:
    """That cutting the inputs along dim 0 cuts the examples: some output has the batch as
    dim 0 (every floating output, without loss_fn: flow projects each), and the model's
    outputs on the N parts put together are its output on the whole batch (`work`, a copy
    in train mode, no grad; Note [a batch split across processes]). Returns warnings; raises
    InputError when the split is not consistent."""
    total = batch.total
    leaves = list(floating_leaves(output))
    rows = [(path, t) for path, t in leaves if batched(t, total)]
    start = f"--nproc {nproc} cuts every input along dim 0, taken as the batch: {batch.said()}"
    unbatched = [(path, t) for path, t in leaves if not batched(t, total)]
    if not rows and unbatched and not all(t.dim() == 0 for _, t in unbatched):
        path, t = next((p, t) for p, t in unbatched if t.dim() > 0)
        hint = BATCH_FIRST_HINT
        if projected:
            hint += (
                " If dim 0 is the batch and the model pools over it, define "
                "loss_fn(output, *inputs) in the file: without it flow's loss projects every "
                "output, each process its own rows."
            )
        pooled = (
            "without loss_fn flow's loss projects every output, each process its own rows"
            if projected
            else "which processes that each see their own examples cannot do"
        )
        raise InputError(
            f"{start}. But no output of the model has them as dim 0 ({path} has shape "
            f"{tuple(t.shape)}): either dim 0 of {batch.name} is not the batch "
            f"({SEQUENCE_FIRST}), or the model pools over the batch, and {pooled}",
            hint=hint,
        )
    if projected and unbatched:
        path, t = unbatched[0]
        raise InputError(
            f"{start}. But {path} (shape {tuple(t.shape)}) is not batched along dim 0; "
            "without loss_fn flow's loss projects every output of the model, each process "
            "its own rows",
            hint="Define loss_fn(output, *inputs) in the file, or run without --nproc.",
        )
    if not rows:  # only scalars (a loss the model computes itself)
        return (
            f"--nproc {nproc}: every output of the model is a scalar, so gradtool could not "
            f"check that dim 0 of {batch.name} is the batch",
        )
    mismatch = _parts_mismatch(work, rows, args, kwargs, batch, nproc, seed, folder)
    if mismatch is not None:
        # train-mode BatchNorm and dropout differ between the parts and the whole by design:
        # the same comparison in eval mode, where each example is computed on its own
        work.eval()
        RngState.seeded(seed).restore()
        whole = call_user(work, *args, what="the model's forward", folder=folder, **kwargs)
        again = [(path, t) for path, t in floating_leaves(whole) if batched(t, total)]
        if [p for p, _ in again] == [p for p, _ in rows]:
            if _parts_mismatch(work, again, args, kwargs, batch, nproc, seed, folder) is None:
                # the split is the batch's, but training differs: say so in the report
                # (BatchNorm has its own, more precise, warning)
                if any(isinstance(m, _BATCHNORM) for m in work.modules()):
                    return ()
                return (
                    f"--nproc {nproc}: the model's train-mode forward on a process's "
                    f"{total // nproc} examples differs from its rows of the whole batch's "
                    "(dropout draws its own masks in each process, or a layer mixes the "
                    "examples), so this report is not the one-process report on the "
                    f"{total} examples",
                )
        raise InputError(f"{start}. But {mismatch}", hint=BATCH_FIRST_HINT)
    return ()


_BATCHNORM = torch.nn.modules.batchnorm._BatchNorm


def _parts_mismatch(
    work: torch.nn.Module,
    rows: list[tuple[str, torch.Tensor]],
    args: tuple,
    kwargs: dict,
    batch: _Batch,
    nproc: int,
    seed: int,
    folder: Path,
) -> str | None:
    """How the model's outputs on the N parts fail to put together to `rows` (the whole
    batch's batched outputs), or None when they do."""
    size = batch.total // nproc
    got: dict[str, list[torch.Tensor]] = {path: [] for path, _ in rows}
    shards = [Shard(rank, nproc, batch.total) for rank in range(nproc)]
    for shard in shards:
        part_args, part_kwargs = shard.rows_of((args, kwargs))
        RngState.seeded(seed).restore()
        part = f"process {shard.rank}'s part (rows {shard.start}:{shard.stop} of {batch.name})"
        out = call_user(
            work, *part_args, what=f"the model's forward on {part}", folder=folder, **part_kwargs
        )
        leaves = dict(floating_leaves(out))
        for path, whole in rows:
            t = leaves.get(path)
            want = (size, *whole.shape[1:])
            if t is None or tuple(t.shape) != want:
                shape = "none" if t is None else f"shape {tuple(t.shape)}"
                return (
                    f"the model's {path} on {part} has {shape}, not its {size} rows of the "
                    f"whole batch's {path} (shape {tuple(whole.shape)}), "
                    + NOT_THE_BATCH.format(name=batch.name)
                )
            got[path].append(t)
    for path, whole in rows:
        for shard, t in zip(shards, got[path]):
            mine = whole[shard.start : shard.stop]
            if not _same_values(t, mine):
                diff = float((t.detach().cpu() - mine.detach().cpu()).abs().nan_to_num().max())
                return (
                    f"the model's {path} on process {shard.rank}'s part (rows "
                    f"{shard.start}:{shard.stop} of {batch.name}) is not those rows of its "
                    f"{path} on the whole batch (they differ by up to {diff:.3g}): the rows "
                    f"along dim 0 are not computed each on its own. Either dim 0 of "
                    f"{batch.name} is not the batch ({SEQUENCE_FIRST}), or the forward mixes "
                    "the examples, which processes that each see their own cannot do"
                )
    return None


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding of another batch size (NaN where NaN, Inf where Inf)."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if not (a.is_complex() or b.is_complex()):
        a, b = a.double(), b.double()
    finite = b[torch.isfinite(b)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return torch.allclose(a, b, rtol=1e-3, atol=1e-3 * scale + 1e-12, equal_nan=True)


def _loss_scales(
    loss_fn: Callable[..., Any],
    output: Any,
    args: tuple,
    kwargs: dict,
    total: int,
    nproc: int,
    folder: Path,
) -> tuple[dict[str, float], tuple[str, ...]]:
    """Per term of loss_fn, the factor of each process's value: 1 for a mean over the
    examples, N for a sum (Note [a batch split across processes]); a term that is neither,
    or a loss_fn that fails on a part of the batch, is refused."""
    from ...losses import call_loss, loss_terms

    with torch.no_grad():
        whole = _float_terms(loss_terms(call_loss(loss_fn, output, args, kwargs, folder)))
        reachable = sum(1 for _, t in leaves_with_paths(output, writable=True) if _is_tensor(t))
        if reachable < sum(1 for _, t in leaves_with_paths(output) if _is_tensor(t)):
            # an output gradtool cannot rebuild with fewer rows (a dataclass, a ModelOutput)
            return {}, (
                f"--nproc {nproc}: could not check that loss_fn is a mean over the examples "
                "(the output could not be cut into parts); a loss that sums over them "
                "gives gradients 1/N of the one-process ones",
            )
        parts = []
        for rank in range(nproc):
            shard = Shard(rank, nproc, total)
            part_out, (part_args, part_kwargs) = (
                shard.rows_of(output),
                shard.rows_of((args, kwargs)),
            )
            try:
                value = loss_fn(part_out, *part_args, **part_kwargs)
                parts.append(_float_terms(loss_terms(value)))
            except Exception as exc:
                raise InputError(
                    f"--nproc {nproc}: loss_fn raised on the rows {shard.start}:{shard.stop} of "
                    f"the batch, which process {rank} gets: {describe_exception(exc, folder)}",
                    hint=f"--nproc cuts every input whose dim 0 is the batch size ({total}) "
                    "into equal parts; the targets loss_fn compares with must be cut the same "
                    "way (dim 0 = the batch).",
                ) from None
    scales: dict[str, float] = {}
    for name, value in whole.items():
        values = [p.get(name, math.nan) for p in parts]
        mean, summed = sum(values) / nproc, sum(values)
        if _close(mean, value):
            scales[name] = 1.0
        elif _close(summed, value):
            scales[name] = float(nproc)
        else:
            term = "loss_fn" if len(whole) == 1 else f"loss_fn's term {name!r}"
            raise InputError(
                f"--nproc {nproc}: {term} is neither a mean nor a sum over the examples: "
                f"{value:.6g} on the whole batch, {mean:.6g} as the mean of its {nproc} parts' "
                f"values and {summed:.6g} as their sum, so the processes' losses cannot add "
                "up to the one-process loss",
                hint="Return a dict of named terms (each a mean or a sum over the examples, "
                "e.g. {'data': ..., 'weight_decay': ...}), or run without --nproc.",
            )
    return scales, ()


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _float_terms(terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(t.detach().double()) for name, t in terms.items()}


def _close(a: float, b: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= LOSS_RTOL * max(abs(a), abs(b))


def _launch(folder: Path, nproc: int, backend: str) -> int:
    """Run the N processes through torch.distributed.run and wait for them; on Ctrl-C (or
    any exception) every process it started is stopped before the exception goes on."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--monitor-interval=0.1",
        f"--log-dir={folder / 'torchrun'}",  # else it leaves a torchelastic_* folder in /tmp
        "-m",
        WORKER_MODULE,
        str(folder),
    ]
    env = dict(os.environ)
    # the processes import this gradtool, wherever it was imported from (a checkout too)
    root = Path(__file__).resolve().parents[3]
    if root.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    if "OMP_NUM_THREADS" not in env:  # torchrun would set 1 (and say so)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    with open(folder / "launcher.log", "wb") as log:
        launcher = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # its own session: a terminal's Ctrl-C reaches this process, which stops them
            start_new_session=True,
        )
        try:
            return launcher.wait()
        except BaseException:
            _stop(launcher, folder, nproc)
            raise
        finally:
            _kill_workers(folder, nproc)  # whatever outlived the launcher


def _stop(launcher: subprocess.Popen, folder: Path, nproc: int) -> None:
    """SIGTERM to the launcher (it stops its workers), SIGKILL after a grace period."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(launcher.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            launcher.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    _kill_workers(folder, nproc)


def _kill_workers(folder: Path, nproc: int) -> None:
    """SIGKILL each worker (by the pid it wrote) still running this job."""
    for rank in range(nproc):
        pid = (_outcome(folder, rank) or {}).get("pid")
        if isinstance(pid, int) and _runs_job(pid, folder):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _runs_job(pid: int, folder: Path) -> bool:
    """Whether process `pid` is alive and one of this job's workers (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        if not Path("/proc/self").exists():  # no procfs: alive is enough
            try:
                os.kill(pid, 0)
                return True
            except OSError:
                return False
        return False
    return str(folder).encode() in cmdline


def _outcome(folder: Path, rank: int) -> dict[str, Any] | None:
    try:
        return json.loads((folder / f"rank{rank}.json").read_text())
    except (OSError, ValueError):
        return None


def _collect(folder: Path, nproc: int, returncode: int, timeout: float) -> FlowReport:
    """Rank 0's report, or the error that stopped the run: a rank's user error first (the
    lowest rank), then a rank that stopped responding, then anything else."""
    outcomes = [_outcome(folder, rank) or {} for rank in range(nproc)]
    of = f" of {nproc}"
    for rank, out in enumerate(outcomes):
        if out.get("status") == "user":
            raise UserCodeError(f"rank {rank}{of}: {out['message']}", hint=out.get("hint"))
    waited = [rank for rank, out in enumerate(outcomes) if out.get("status") == "timeout"]
    if waited:
        hung = [r for r, out in enumerate(outcomes) if out.get("status") in (None, "started")]
        who = (
            f"rank {', '.join(map(str, hung))}{of} stopped responding"
            if hung
            else f"a rank{of} stopped responding"
        )
        raise UserCodeError(
            f"{who}: rank {waited[0]} waited {timeout:g} s for it in a collective "
            "(DDP's broadcast or gradient all-reduce)",
            hint="A process that hangs or runs code the others do not (input(), a "
            "rank-dependent branch, a deadlock) holds every process; the wait is the "
            "collective timeout.",
        )
    for rank, out in enumerate(outcomes):
        if out.get("status") == "internal":
            raise RuntimeError(f"rank {rank}{of}: {out['message']}")
    if outcomes[0].get("status") != "ok" or not (folder / REPORT_FILE).exists():
        # a rank ended without a word (killed: out of memory, a signal) or never started
        silent = [r for r, out in enumerate(outcomes) if out.get("status") in (None, "started")]
        which = f"; rank {', '.join(map(str, silent))}{of} ended without a result" if silent else ""
        log = _tail(folder / "launcher.log")
        raise RuntimeError(
            f"torch.distributed.run ended with exit code {returncode} and no report from "
            f"rank 0{which}{':' + chr(10) + log if log else ''}"
        )
    with open(folder / REPORT_FILE, "rb") as f:
        report = _ReportUnpickler(f).load()
    if not isinstance(report, FlowReport):
        raise RuntimeError(f"rank 0 wrote a {type(report).__name__}, not a FlowReport")
    return report


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _ReportUnpickler(pickle.Unpickler):
    """Rebuilds gradtool's own result dataclasses and nothing else."""

    ALLOWED_BUILTINS = frozenset({"tuple", "list", "dict", "set", "frozenset", "float", "int"})

    def find_class(self, module: str, name: str) -> Any:
        if module == "gradcheck_tool.results" or (
            module == "builtins" and name in self.ALLOWED_BUILTINS
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a flow report holds no {module}.{name}")


# --- each process ----------------------------------------------------------------------------


def worker_main(argv: Sequence[str]) -> int:
    """One process of `torch.distributed.run` (nproc_worker.py): run its part, write how it
    ended; rank 0 writes the report. The exit code makes torchrun stop the others at once.
    How it ended is written before the process group is torn down (which may abort the
    process when a collective is still pending after an error)."""
    import torch.distributed as dist

    folder = Path(argv[0])
    rank = int(os.environ["RANK"])
    _write_outcome(folder, rank, {"status": "started", "pid": os.getpid()})
    try:
        job = json.loads((folder / JOB_FILE).read_text())
        report = _run_rank(job, rank, int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
        if rank == 0:
            partial = folder / (REPORT_FILE + ".part")
            with open(partial, "wb") as f:
                pickle.dump(report, f, protocol=pickle.HIGHEST_PROTOCOL)
            partial.rename(folder / REPORT_FILE)
        outcome, code = {"status": "ok"}, 0
    except Exception as exc:
        outcome = _ended_by(exc)
        code = 2 if outcome["status"] == "user" else 3
    _write_outcome(folder, rank, {**outcome, "pid": os.getpid()})
    if dist.is_initialized():
        dist.destroy_process_group()
    return code


def _ended_by(exc: Exception) -> dict[str, Any]:
    """How a rank's run ended with `exc`: a collective that failed (another rank stopped
    responding, or ended: "timeout" / "collective") comes before a user error that wraps it
    (run_flow names a failed backward as the user's), then the user's error, then ours."""
    failed = _collective_failure(exc)
    if failed is not None:
        text = str(failed).lower()
        status = "timeout" if "timed out" in text or "timeout" in text else "collective"
        return {"status": status, "message": f"{type(failed).__name__}: {failed}"}
    if isinstance(exc, GradtoolError):
        return {"status": "user", "message": exc.message, "hint": exc.hint}
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"status": "internal", "message": f"{type(exc).__name__}: {exc}\n{text}"}


# what gloo's and NCCL's errors say when a peer ended or stopped responding
_COLLECTIVE_WORDS = ("gloo", "nccl", "connection closed", "pair closure", "timed out", "timeout")


def _collective_failure(exc: BaseException) -> BaseException | None:
    """The torch.distributed error in `exc`'s chain of causes, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if isinstance(current, torch.distributed.DistError) or (
            isinstance(current, RuntimeError) and any(w in text for w in _COLLECTIVE_WORDS)
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def _write_outcome(folder: Path, rank: int, outcome: dict[str, Any]) -> None:
    partial = folder / f"rank{rank}.json.part"
    partial.write_text(json.dumps(outcome))
    partial.rename(folder / f"rank{rank}.json")


def _run_rank(job: dict[str, Any], rank: int, world: int, local_rank: int) -> FlowReport:
    """Load the target as the parent did, take this rank's rows, run flow on the model in
    DDP (worker_main tears the process group down)."""
    import torch.distributed as dist

    from ...loading import scope_for
    from ...runner import load_seeded
    from .train import run_flow

    cuda = job["backend"] == "nccl"
    device = torch.device("cuda", local_rank) if cuda else None
    if device is not None:
        torch.cuda.set_device(device)
    dist.init_process_group(job["backend"], timeout=timedelta(seconds=job["collective_timeout"]))
    with scope_for(job["target"]):
        # the same weights and inputs as the parent's and one process's (DDP would make the
        # weights rank 0's anyway; the parent checked the split on these)
        loaded, args, kwargs = load_seeded(job["target"], job, job["seed"])
        shard = Shard(rank, world, job["total"])
        args, kwargs = shard.rows_of((args, kwargs))
        model = loaded.obj
        if device is not None:
            model.to(device)
        # unused parameters keep .grad None, as in one process (and do not stall DDP)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if cuda else None, find_unused_parameters=True
        )
        return run_flow(
            model,
            args,
            kwargs,
            loss_fn=_scaled_loss(loaded.loss_fn, job["loss_scales"]),
            steps=job["steps"],
            lr=job["lr"],
            optimizer=job["optimizer"],
            seed=job["seed"],
            device=device,
            target=loaded.spec,
            found_by=loaded.found_by,
            folder=loaded.path.resolve().parent,
            shard=shard,
        )


def _scaled_loss(
    loss_fn: Callable[..., Any] | None, scales: Mapping[str, float]
) -> Callable[..., Any] | None:
    """loss_fn with each term times its factor (Note [a batch split across processes])."""
    if loss_fn is None or all(s == 1 for s in scales.values()):
        return loss_fn

    def scaled(output: Any, *args: Any, **kwargs: Any) -> Any:
        value = loss_fn(output, *args, **kwargs)
        if isinstance(value, Mapping):
            return {k: v * scales.get(str(k), 1.0) for k, v in value.items()}
        return value * scales.get("loss", 1.0)

    return scaled

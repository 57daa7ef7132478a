"""A Monitor's recorded steps as scalars: `Monitor(model, tensorboard=DIR or SummaryWriter)`.

Note [scalars of a recorded step]: a Monitor reads its steps back when its report is made
(`report()`, `flow_report()`, `print_report()`, the end of the `with` block), and a step's
update ratio only once the optimizer step after it has been read back too. So a step's numbers
are written by the first report that has the step, its update ratios by the first that has
the optimizer step after it, each at the step's own number (a dashboard orders them by step,
not by when they arrived); the number of findings is written with the newest step of each
report that has something new. A loop that wants its curves while it trains asks
for a report where it logs (the Lightning and Hugging Face callbacks do, at their trainer's
logging steps). In a distributed job only rank 0 writes; every rank keeps the same count of
steps written, so that every rank asks for the last report at the end or none does.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, Callable

from ..errors import OptionError
from ..results import FlowReport
from .scalars import AFTER_STEP, IN_STEP, ScalarSink, findings_scalars, step_scalars


def is_rank_zero() -> bool:
    """Rank 0 of an initialised process group, or no process group at all."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class SummaryWriterSink:
    """torch.utils.tensorboard's SummaryWriter: made for a folder (and closed by us), or the
    user's own (flushed, never closed)."""

    def __init__(self, target: Any) -> None:
        self._dir = None if hasattr(target, "add_scalar") else os.fspath(target)
        self._writer = None if self._dir is not None else target

    def write_step(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is None:  # made at the first write: no empty event file on idle ranks
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self._dir)
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, global_step=step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is None:
            return
        if self._dir is None:
            self._writer.flush()  # the user's writer: theirs to close
        else:
            self._writer.close()
            self._writer = None


def sink_for(target: Any) -> ScalarSink:
    """A folder or a SummaryWriter (anything with `add_scalar`), or one of our sinks."""
    if hasattr(target, "write_step"):
        return target
    if hasattr(target, "add_scalar"):
        return SummaryWriterSink(target)
    if isinstance(target, (str, os.PathLike)):
        try:
            import tensorboard  # noqa: F401  (SummaryWriter needs it)
        except ImportError:
            raise OptionError(
                "tensorboard",
                "needs the tensorboard package",
                hint="pip install 'gradtool[tensorboard]' (or pip install tensorboard)",
            ) from None
        if os.path.exists(target) and not os.path.isdir(target):
            raise OptionError("tensorboard", f"{os.fspath(target)}: is a file, not a folder")
        return SummaryWriterSink(target)
    raise OptionError(
        "tensorboard",
        f"must be a folder or a SummaryWriter, not {type(target).__name__}",
    )


class StepScalars:
    """What a Monitor hands its recorded steps to (Note [scalars of a recorded step]):
    `on_report` after each report, `finish` when the Monitor's `with` block ends. An error
    here is a warning, never the training loop's exception."""

    def __init__(self, sinks: Sequence[ScalarSink]) -> None:
        self.sinks = list(sinks)
        self._started: set[int] = set()  # samples whose in-step numbers are written
        self._complete: set[int] = set()  # samples whose update ratios are written too
        self._seen = 0  # samples the last report had
        self._waiting = False  # the last report had a sample waiting for its optimizer step
        self._failed = False

    @classmethod
    def to(cls, target: Any) -> StepScalars:
        """From `Monitor(tensorboard=)`: a folder, a SummaryWriter, or a list of them."""
        targets = target if isinstance(target, (list, tuple)) else [target]
        return cls([sink_for(t) for t in targets])

    def on_report(self, samples: Sequence[Any], waiting: Sequence[int], report: FlowReport) -> None:
        """Write what `samples` measured that is not written yet: a new step's numbers at
        once, its update ratios once its optimizer step is read back (`waiting`: not yet)."""
        self._seen, self._waiting = len(samples), bool(waiting)
        if self._failed:
            return
        pending = set(waiting)
        writes: list[tuple[int, set[str]]] = []  # (sample, groups) in step order
        for k in range(len(samples)):
            groups = set()
            if k not in self._started:
                groups |= IN_STEP
            if k not in pending and k not in self._complete:
                groups |= AFTER_STEP
            if groups:
                writes.append((k, groups))
        self._started.update(range(len(samples)))
        self._complete.update(k for k in range(len(samples)) if k not in pending)
        if not writes or not is_rank_zero():
            return
        try:
            for k, groups in writes:
                scalars = step_scalars(samples[k].rows, groups)
                if k == len(samples) - 1:  # the findings, with the newest step
                    scalars.update(findings_scalars(report))
                if scalars:
                    for sink in self.sinks:
                        sink.write_step(samples[k].step, scalars)
            for sink in self.sinks:
                if hasattr(sink, "flush"):
                    sink.flush()
        except Exception as exc:  # a dashboard's failure must not stop training
            self._failed = True
            warnings.warn(
                f"gradtool: writing scalars failed, none more will be written: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )

    def finish(self, steps_recorded: int, report: Callable[[], Any], failed: bool) -> None:
        """The Monitor's `with` block ended: the steps not written yet are written (one last
        report; skipped when the block ended with an exception inside a process group,
        whose other ranks may not report), then a folder's writer is closed."""
        try:
            unwritten = steps_recorded > self._seen or self._waiting
            if unwritten and not self._failed and not (failed and not _single_process()):
                report()
        except Exception as exc:
            warnings.warn(
                f"gradtool: the last scalars could not be written: {type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
        finally:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as exc:  # pragma: no cover - defensive
                    warnings.warn(f"gradtool: closing {sink!r} failed: {exc}", stacklevel=2)


def _single_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())

"""A Monitor whose steps are a trainer's training batches, for trainers whose training step
need not call the model it is given (Lightning's `training_step` often calls `self.encoder`
and `self.decoder`, never the LightningModule itself).

Note [a step begins at the first call]: the trainer's batch-start hook arms a one-shot global
module forward pre-hook; the first call of any module of the model with grad enabled begins
the step there (the model itself entered by hand, as Monitor does at its own call). Inside
an optimizer's closure (Lightning's automatic optimization runs `training_step` inside
`optimizer.step(closure)`), the step thus begins inside the optimizer step, as the Monitor's
optimizer watch expects of a closure. The forward ends where the model's own call returns,
or else at the trainer's before-backward hook, or at the batch's end. Calls of the model
itself count no steps here: one batch is one step, however often it calls the model.

A closure passed to an optimizer step that comes after the batch's forward does not run the
forward (Lightning's manual optimization passes a do-nothing closure to `optimizer.step`):
that step is watched as a plain step after the recorded forward, not as a closure step whose
forward runs inside it (which the watch would wait for, and never measure)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

from ..engines.flow.monitor import Monitor


class BatchMonitor(Monitor):
    """Monitor with a step per training batch (Note [a step begins at the first call])."""

    def __init__(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self._first_call: Any = None  # the armed one-shot hook's handle
        self._batch_called = False  # this batch has called a module of the model already

    def __enter__(self) -> BatchMonitor:
        super().__enter__()
        # the optimizer watch's pre-step hook goes through _pre_step_in_batch (re-registered)
        watch = self._watch
        watch.close()
        watch._pre_step = partial(_pre_step_in_batch, self, watch._pre_step)
        watch.attach()
        return self

    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        return  # the model's own calls count no steps: batches do

    def begin_batch(self) -> None:
        """A training batch begins: its first call of a module of the model begins the step."""
        self._disarm()
        self._batch_called = False
        self._first_call = register_module_forward_pre_hook(self._on_first_call)

    def _on_first_call(self, module: nn.Module, args: tuple) -> None:
        if self._mm is None or id(module) not in self._mm.info or not torch.is_grad_enabled():
            return  # another model's module, or a call under no_grad
        self._disarm()
        self._batch_called = True
        root = self.model
        Monitor._on_model_call(self, root, args if module is root else (), {})
        if module is not root and self._in_forward:
            # the recorder's own hooks, registered just now, miss this call: enter it by hand
            self._recorder._pre_hook(module, args)

    def end_forward(self) -> None:
        """The forward is over (before the backward): stop watching module calls."""
        self._disarm()
        if self._in_forward:
            self._on_model_return(True)

    def _disarm(self) -> None:
        if self._first_call is not None:
            self._first_call.remove()
            self._first_call = None

    def __exit__(self, *exc: Any) -> None:
        self._disarm()
        super().__exit__(*exc)


def _pre_step_in_batch(
    mon: BatchMonitor, pre_step: Any, opt: torch.optim.Optimizer, args: tuple, kwargs: dict
) -> None:
    """The watch's pre-step hook; a closure step after the batch's forward is a plain step."""
    if mon._batch_called:
        args = args[:1]  # (the optimizer; its step's closure left out)
        kwargs = {k: v for k, v in kwargs.items() if k != "closure"}
    pre_step(opt, args, kwargs)

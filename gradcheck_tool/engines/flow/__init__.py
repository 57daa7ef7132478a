"""gradtool flow: per-layer gradient flow, dead and saturated activations, the first NaN.

The engine never prints. While one forward runs it registers a global module forward
pre-hook and forward hook (they ignore modules outside the model), pre-hooks on the autograd
nodes that made each module's output (they see the backward; never full backward hooks,
which break on in-place ops), and a TorchFunctionMode that sees functional activations
(`torch.relu`, `F.gelu`, ...) and attributes them to the module whose forward made them.
Every handle lives in a side table and is removed in `finally`; nothing is set on the
user's modules or parameters. What is measured stays on the device: one vector per step,
read back in one transfer.

`flow()` works on a deep copy of the model (its own dtype and device); `Monitor` watches
the user's own model inside their training loop and leaves it as it found it.

The modules, in the order a step goes through them:

| module | job |
|---|---|
| `activations` | the activation registry (`ActivationSpec`): by module type, by function |
| `model_map` | the model, statically: layers, parameters, which modules need the mode |
| `recorder` | the hooks; what one step gathers (`StepState`) |
| `tensor_stats` | the hooks' arithmetic: squared norms, extremes, finite probes |
| `step` | the step's numbers as one device vector: named segments (`StepLayout`) |
| `layer_rows`, `nan_site` | numbers read back -> rows, the first non-finite value, history |
| `findings/` | the registry of finding rules, one file per kind |
| `train`, `overfit` | `flow()` / `run_flow()`: `--steps` on a copy, the overfit verdict |
| `monitor` | `Monitor`, for the user's own loop |
"""

from __future__ import annotations

import importlib
from typing import Any

# loaded on first use (PEP 562): the findings registry and the thresholds need no torch, and
# the report formats read them without importing the engine
_LAZY = {
    "ACTIVATIONS": "activations",
    "ActivationSpec": "activations",
    "activation_for_function": "activations",
    "activation_for_module": "activations",
    "FINDING_KINDS": "findings",
    "RULES": "findings",
    "FindingRule": "findings",
    "Severity": "findings",
    "Monitor": "monitor",
    "FlowThresholds": "thresholds",
    "Interrupted": "train",
    "flow": "train",
    "run_flow": "train",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | {"findings"})

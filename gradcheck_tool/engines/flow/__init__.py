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
| `rows`, `nan_site` | numbers read back -> rows, the first non-finite value, history |
| `findings/` | the registry of finding rules, one file per kind |
| `train`, `overfit` | `flow()` / `run_flow()`: `--steps` on a copy, the overfit verdict |
| `monitor` | `Monitor`, for the user's own loop |
"""

from .activations import (
    ACTIVATIONS,
    ActivationSpec,
    activation_for_function,
    activation_for_module,
)
from .findings import FINDING_KINDS, RULES, FindingRule, Severity
from .monitor import Monitor
from .thresholds import FlowThresholds
from .train import flow, run_flow

__all__ = [
    "ACTIVATIONS",
    "FINDING_KINDS",
    "RULES",
    "ActivationSpec",
    "FindingRule",
    "FlowThresholds",
    "Monitor",
    "Severity",
    "activation_for_function",
    "activation_for_module",
    "flow",
    "run_flow",
]

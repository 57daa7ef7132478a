"""gradtool: is my gradient right, and why isn't my model learning?

`check`, `flow` and `Monitor` are loaded on first use (PEP 562): importing the package, or
running `gradtool --version`, does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time, loaded on first use
    from .api import check
    from .engines.flow import Monitor, flow
    from .errors import GradtoolError
    from .results import CheckReport, FlowReport, TensorResult

# public name -> the module that defines it
_LAZY = {
    "check": "gradcheck_tool.api",
    "flow": "gradcheck_tool.engines.flow",
    "Monitor": "gradcheck_tool.engines.flow",
    "CheckReport": "gradcheck_tool.results",
    "FlowReport": "gradcheck_tool.results",
    "TensorResult": "gradcheck_tool.results",
    "GradtoolError": "gradcheck_tool.errors",
}

__all__ = [
    "CheckReport",
    "FlowReport",
    "GradtoolError",
    "Monitor",
    "TensorResult",
    "__version__",
    "check",
    "flow",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    # every name that module provides, at once: later lookups skip this function
    globals().update(
        {n: getattr(module, n) for n, where in _LAZY.items() if where == module.__name__}
    )
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(__all__)

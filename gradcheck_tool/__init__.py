"""gradtool: is my gradient right, and why isn't my model learning?"""

__version__ = "0.1.0"

from .api import check  # noqa: E402
from .errors import GradtoolError  # noqa: E402
from .flow import Monitor, flow  # noqa: E402
from .results import CheckReport, FlowReport, TensorResult  # noqa: E402

__all__ = [
    "__version__",
    "check",
    "flow",
    "Monitor",
    "CheckReport",
    "FlowReport",
    "TensorResult",
    "GradtoolError",
]

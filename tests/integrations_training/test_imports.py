"""The integrations are optional: importing gradtool, Monitor or the integrations package
imports no trainer library, nor TensorBoard."""

from __future__ import annotations

import subprocess
import sys

from trainer_support import REPO_ROOT


def test_importing_gradtool_imports_no_trainer_library():
    code = (
        "import sys, gradcheck_tool, gradcheck_tool.integrations\n"
        "from gradcheck_tool import Monitor\n"
        "from gradcheck_tool.integrations import scalars, tensorboard, _training\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'transformers', 'tensorboard', 'accelerate')]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

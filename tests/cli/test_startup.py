"""Start-up: --version and --help answer without importing torch; the package root loads its API
lazily.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import (
    REPO,
)

STARTUP_PROBE = """
import runpy, sys
sys.argv = ['gradtool', *sys.argv[1:]]
try:
    runpy.run_module('gradcheck_tool', run_name='__main__')
except SystemExit as exc:
    code = exc.code
print('torch imported' if 'torch' in sys.modules else 'no torch', code)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        ["check", "--help"],
        ["flow", "--help"],
        ["memory", "--help"],
        ["graph", "--help"],
    ],
)
def test_version_and_help_do_not_import_torch(args):
    proc = subprocess.run(
        [sys.executable, "-c", STARTUP_PROBE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert proc.stdout.strip().splitlines()[-1] == "no torch 0", proc.stdout + proc.stderr
    assert "gradtool" in proc.stdout


def test_the_package_root_loads_its_api_lazily():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, gradcheck_tool as g; print('torch' in sys.modules, g.__version__);"
            "from gradcheck_tool import check, flow, Monitor;"
            "import gradcheck_tool.engines.flow.monitor;"
            "print('torch' in sys.modules, callable(g.flow), g.flow is flow, g.check is check)",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    first, second = proc.stdout.strip().splitlines()
    assert first == "False 0.1.0"
    assert second == "True True True True", proc.stderr

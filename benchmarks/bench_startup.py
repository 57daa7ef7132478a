"""Benchmark: how long `gradtool --version` and `--help` take, beside `import torch`.

    python benchmarks/bench_startup.py [--repeat 7]

Each command is a fresh process, run --repeat times interleaved; the median wall time is
printed, and whether the process imported torch. Goal (issue #9): the help and version
commands don't import torch, so they cost a Python start-up, not torch's ~2 s import.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys

from bench_check import run

PY = sys.executable
# runs the CLI as `gradtool ARGS` would, then says whether torch was imported
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['gradtool', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('gradcheck_tool', run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    "sys.stderr.write('torch imported\\n' if 'torch' in sys.modules else 'no torch\\n')\n"
)
COMMANDS = {
    "python -c pass": [PY, "-c", "pass"],
    "python -c 'import torch'": [PY, "-c", "import torch"],
    "gradtool --version": [PY, "-m", "gradcheck_tool", "--version"],
    "gradtool --help": [PY, "-m", "gradcheck_tool", "--help"],
    "gradtool check --help": [PY, "-m", "gradcheck_tool", "check", "--help"],
    "gradtool flow --help": [PY, "-m", "gradcheck_tool", "flow", "--help"],
}


def imports_torch(args: list[str]) -> str:
    if "gradcheck_tool" not in args:
        return ""
    cli_args = args[args.index("gradcheck_tool") + 1 :]
    probe = subprocess.run([PY, "-c", PROBE, *cli_args], capture_output=True, text=True)
    return probe.stderr.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per command (median)")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; Python "
        f"{platform.python_version()}; median of {args.repeat} fresh processes"
    )
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, cmd in COMMANDS.items():
            walls[name].append(run(cmd, timeout=120)[0])
    print(f"{'command':28} {'time':>8}  torch")
    for name, cmd in COMMANDS.items():
        print(f"{name:28} {statistics.median(walls[name]):>6.2f} s  {imports_torch(cmd)}")


if __name__ == "__main__":
    main()

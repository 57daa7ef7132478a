"""Benchmark: gradtool check against torch.autograd.gradcheck, whole process against whole
process, on the MLPs of issue #5. Prints a table with wall time and peak memory (max RSS).

    python benchmarks/bench_check.py            # everything (gradcheck --full on 136k is slow)
    python benchmarks/bench_check.py --quick    # skip the 136k full-mode pair
    python benchmarks/bench_check.py --timeout 600
    python benchmarks/bench_check.py --only mlp_136k

Each run is a fresh `python` process (imports included, as a user would run it); each pair
is run --repeat times, interleaved, and the median is reported. Goals (issue #5): 35k MLP
full check ≥ 5× faster than gradcheck(fast_mode=False); the 5.3M MLP checked per tensor in
≤ 15 s and ≤ 3× gradcheck(fast_mode=True); peak memory under 2 GB for both.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
PY = sys.executable


def run(cmd: list[str], timeout: float) -> tuple[float, float, int | None]:
    """(wall seconds, peak RSS in MB, exit code or None on timeout) of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"}
    )
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            wall = time.perf_counter() - started
            return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)
        if time.perf_counter() > deadline:
            proc.kill()
            _, _, usage = os.wait4(proc.pid, 0)
            return timeout, usage.ru_maxrss / 1024, None
        time.sleep(0.02)


def gradtool_cmd(model: str, *flags: str) -> list[str]:
    return [PY, "-m", "gradcheck_tool", "check", str(MODELS / f"{model}.py"), *flags]


def gradcheck_cmd(model: str, fast: bool) -> list[str]:
    cmd = [PY, str(HERE / "gradcheck_reference.py"), str(MODELS / f"{model}.py")]
    return cmd + (["--fast"] if fast else [])


def fmt(wall: float, code: int | None) -> str:
    return f">{wall:.0f} s (timed out)" if code is None else f"{wall:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 136k full-mode pair")
    parser.add_argument("--repeat", type=int, default=1, help="runs per command (median)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    parser.add_argument(
        "--only", default="", help="comma-separated models to run, e.g. mlp_136k (default: all)"
    )
    args = parser.parse_args()
    only = {m for m in args.only.split(",") if m}

    pairs = [
        (
            m,
            "gradtool check --full",
            gradtool_cmd(m, "--full"),
            "gradcheck(fast_mode=False)",
            gradcheck_cmd(m, fast=False),
        )
        for m in ("mlp_1k6", "mlp_9k5", "mlp_35k", "mlp_136k")
        if not (args.quick and m == "mlp_136k")
    ]
    pairs.append(
        (
            "mlp_big",
            "gradtool check",
            gradtool_cmd("mlp_big"),
            "gradcheck(fast_mode=True)",
            gradcheck_cmd("mlp_big", fast=True),
        )
    )
    if only:
        pairs = [p for p in pairs if p[0] in only]

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    header = (
        f"{'model':10} {'params':>9}  {'gradtool':22} {'time':>10} {'peak MB':>8}   "
        f"{'torch.autograd':28} {'time':>16} {'peak MB':>8}  {'speed-up':>8}"
    )
    print(header)
    print("-" * len(header))
    params = {
        "mlp_1k6": 1633,
        "mlp_9k5": 9473,
        "mlp_35k": 35329,
        "mlp_136k": 136193,
        "mlp_big": 5252618,
    }
    for model, ours_name, ours, theirs_name, theirs in pairs:
        ours_runs, theirs_runs = [], []
        for _ in range(args.repeat):
            ours_runs.append(run(ours, args.timeout))
            theirs_runs.append(run(theirs, args.timeout))
        o_wall = statistics.median(r[0] for r in ours_runs)
        t_wall = statistics.median(r[0] for r in theirs_runs)
        o_mem = max(r[1] for r in ours_runs)
        t_mem = max(r[1] for r in theirs_runs)
        o_code, t_code = ours_runs[-1][2], theirs_runs[-1][2]
        speed = f"{t_wall / o_wall:.1f}×" + ("+" if t_code is None else "")
        print(
            f"{model:10} {params[model]:>9,}  {ours_name:22} {fmt(o_wall, o_code):>10} "
            f"{o_mem:>8.0f}   {theirs_name:28} {fmt(t_wall, t_code):>16} {t_mem:>8.0f}  "
            f"{speed:>8}",
            flush=True,
        )
        if o_code not in (0,):
            print(f"  note: gradtool exited {o_code}")
        if t_code not in (0,):
            print(f"  note: gradcheck exited {t_code}")


if __name__ == "__main__":
    main()

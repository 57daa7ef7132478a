"""What does gradcheck_tool.Monitor cost per step in a 2-process DDP job (gloo, CPU)?

The setting of bench_monitor.py (a CPU MLP of 6 ReLU layers 512 wide plus a 10-way head,
global batch 256, SGD, 40 steps a loop), once in this process and once as a 2-process
DistributedDataParallel job (each rank its half of the batch), in the same run, one torch
thread per process (on a shared machine, two OpenMP threads per process slow everything
down by an order of magnitude). In each, three loops (plain, Monitor(every=1),
Monitor(every=10)) start from the same initial weights, interleaved and repeated; the
figures are medians (rank 0's clock in the job). A monitored loop includes entering the
monitor, leaving it (where the job combines its last step across ranks) and rank 0's
`report()`; under DDP each recorded step costs three small all_reduce calls (Note [reducing
a step across ranks] in step.py), all three asynchronous (the layout check is waited for at
the next recorded step: Note [deferring the layout check] in monitor.py).

    python benchmarks/bench_monitor_ddp.py [--repeats 11] [--steps 40] [--threads 1]

Goals: ≤ 1.30× a plain step when recording every step, ≤ 1.05× when recording every 10th,
under DDP as in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_monitor import BATCH, CLASSES, DEPTH, WIDTH, build_model, train
from torch import nn

import gradcheck_tool
from gradcheck_tool import Monitor

VARIANTS = ("plain", "every=1", "every=10")
GOALS = {"every=1": 1.30, "every=10": 1.05}
WORLD = 2


def run(variant: str, init: dict, x: torch.Tensor, y: torch.Tensor, steps: int, ddp: bool) -> float:
    """Seconds per step of one loop of `steps` steps."""
    model: nn.Module = build_model()
    model.load_state_dict(init)
    if ddp:
        model = nn.parallel.DistributedDataParallel(model)
    start = time.perf_counter()
    if variant == "plain":
        train(model, x, y, steps)
    else:
        every = int(variant.split("=")[1])
        with Monitor(model, every=every) as mon:
            train(model, x, y, steps)
        report = mon.report()
        if report is not None:  # (rank 0, or the single process)
            assert report["steps"] == len(range(0, steps, every)), report["steps"]
            assert not report["warnings"], report["warnings"]
    return (time.perf_counter() - start) / steps


def measure(
    init: dict, x: torch.Tensor, y: torch.Tensor, steps: int, repeats: int, ddp: bool
) -> dict[str, list[float]]:
    for v in VARIANTS:  # warm-up: allocator, kernels, first-call paths
        run(v, init, x, y, 5, ddp)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(repeats):
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]  # rotate: no variant always runs first
        for v in order:
            times[v].append(run(v, init, x, y, steps, ddp))
    return times


def rank_main(rank: int, init_file: str, out: str, steps: int, repeats: int, threads: int) -> None:
    """One rank of the DDP job: its half of the batch; rank 0 writes the times."""
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        init, x, y = batch_and_weights()
        n = BATCH // WORLD
        times = measure(
            init,
            x[rank * n : (rank + 1) * n],
            y[rank * n : (rank + 1) * n],
            steps,
            repeats,
            ddp=True,
        )
        if rank == 0:
            Path(out).write_text(json.dumps(times))
    finally:
        dist.destroy_process_group()


def batch_and_weights() -> tuple[dict, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    init = build_model().state_dict()
    x = torch.randn(BATCH, WIDTH)
    y = torch.randint(0, CLASSES, (BATCH,))
    return init, x, y


def table(title: str, times: dict[str, list[float]]) -> None:
    print(title)
    plain_med, plain_min = statistics.median(times["plain"]), min(times["plain"])
    for v in VARIANTS:
        med, best = statistics.median(times[v]), min(times[v])
        paired = statistics.median(t / p for t, p in zip(times[v], times["plain"]))
        goal = GOALS.get(v)
        verdict = f"≤ {goal:.2f}× {'met' if paired <= goal else 'MISSED'}" if goal else ""
        label = "  plain step" if v == "plain" else f"  Monitor({v})"
        print(
            f"{label:<20}{1e3 * med:>8.2f}ms{1e3 * best:>8.2f}ms{med / plain_med:>8.3f}×"
            f"{best / plain_min:>7.3f}×{paired:>7.3f}×   {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    load_before = _load()
    init, x, y = batch_and_weights()
    single = measure(init, x, y, opts.steps, opts.repeats, ddp=False)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        mp.spawn(
            rank_main,
            args=(os.path.join(tmp, "init"), out, opts.steps, opts.repeats, opts.threads),
            nprocs=WORLD,
            join=True,
        )
        job = json.loads(Path(out).read_text())

    print(
        f"gradtool {gradcheck_tool.__version__} · torch {torch.__version__} · "
        f"Python {platform.python_version()} · {platform.machine()} · {os.cpu_count()} CPU(s)"
    )
    print(f"load average (1/5/15 min) before: {load_before}; after: {_load()}")
    print(
        f"MLP {DEPTH}×{WIDTH} ReLU + {CLASSES}-way head, global batch {BATCH}, SGD, "
        f"{opts.steps} steps per loop, {opts.repeats} interleaved repeats of each loop"
    )
    print(f"{'loop':<20}{'median':>10}{'best':>10}{'ratio':>9}{'best':>8}{'paired':>8}   goal")
    table(f"one process, batch {BATCH}, torch threads {threads}:", single)
    table(
        f"DDP, {WORLD} processes (gloo), batch {BATCH // WORLD} each, torch threads "
        f"{opts.threads} each:",
        job,
    )
    print("ratio: median loop time over the plain loop's; best: fastest loop over fastest plain;")
    print("paired: median over repeats of (this loop / the plain loop run beside it) — the")
    print("goal is judged on it: pairs cancel the slow drifts of a shared, noisy machine")


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())

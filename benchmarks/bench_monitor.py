"""What does gradcheck_tool.Monitor cost per training step?

The issue's setting: a CPU MLP of 6 ReLU layers 512 wide plus a 10-way head, batch 256,
SGD, 40 steps. Three loops are timed — plain, Monitor(every=1), Monitor(every=10) — each
from the same initial weights, interleaved and repeated because a small machine is noisy;
the figures are medians. The monitored loops include entering the monitor, leaving it and
the final `report()` (its one read-back of everything recorded).

    python benchmarks/bench_monitor.py [--repeats 21] [--steps 40] [--threads N]

Goals: ≤ 1.30× a plain step when recording every step, ≤ 1.05× when recording every 10th.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

import gradcheck_tool
from gradcheck_tool import Monitor

WIDTH, DEPTH, CLASSES, BATCH = 512, 6, 10, 256


def build_model() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    layers.append(nn.Linear(WIDTH, CLASSES))
    return nn.Sequential(*layers)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def run(variant: str, init: dict, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Seconds per step of one loop of `steps` steps."""
    model = build_model()
    model.load_state_dict(init)
    start = time.perf_counter()
    if variant == "plain":
        train(model, x, y, steps)
    else:
        with Monitor(model, every=int(variant.split("=")[1])) as mon:
            train(model, x, y, steps)
        report = mon.report()
        assert report["steps"] == len(range(0, steps, mon.every)), report["steps"]
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)

    torch.manual_seed(0)
    init = build_model().state_dict()
    x = torch.randn(BATCH, WIDTH)
    y = torch.randint(0, CLASSES, (BATCH,))
    variants = ("plain", "every=1", "every=10")

    load_before = _load()
    for v in variants:  # warm-up: allocator, kernels, first-call paths
        run(v, init, x, y, 5)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(opts.repeats):
        order = variants[r % 3 :] + variants[: r % 3]  # rotate: no variant always runs first
        for v in order:
            times[v].append(run(v, init, x, y, opts.steps))

    print(
        f"gradtool {gradcheck_tool.__version__} · torch {torch.__version__} · "
        f"Python {platform.python_version()} · {platform.machine()} · "
        f"{os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}"
    )
    print(f"load average (1/5/15 min) before: {load_before}; after: {_load()}")
    print(
        f"MLP {DEPTH}×{WIDTH} ReLU + {CLASSES}-way head, batch {BATCH}, SGD, {opts.steps} steps "
        f"per loop, {opts.repeats} interleaved repeats of each loop"
    )
    plain_med = statistics.median(times["plain"])
    plain_min = min(times["plain"])
    goals = {"every=1": 1.30, "every=10": 1.05}
    print(f"{'loop':<20}{'median':>10}{'best':>10}{'ratio':>9}{'best':>8}{'paired':>8}   goal")
    for v in variants:
        med, best = statistics.median(times[v]), min(times[v])
        paired = statistics.median(t / p for t, p in zip(times[v], times["plain"]))
        goal = goals.get(v)
        verdict = ""
        if goal is not None:
            verdict = f"≤ {goal:.2f}× {'met' if paired <= goal else 'MISSED'}"
        label = "plain step" if v == "plain" else f"Monitor({v})"
        print(
            f"{label:<20}{1e3 * med:>8.2f}ms{1e3 * best:>8.2f}ms{med / plain_med:>8.3f}×"
            f"{best / plain_min:>7.3f}×{paired:>7.3f}×   {verdict}"
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
    main()

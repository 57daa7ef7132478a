"""The data behind update_too_large / update_too_small: per-layer update/weight ratios
‖Δw‖/‖w‖ that `Monitor` measures in healthy and broken training loops.

Each set-up trains a small seeded model (random init, no download) for 30 steps on
mini-batches of a fixed synthetic data set under `Monitor(every=1)`, and prints, over the
weight matrices the rules compare, the smallest and largest per-layer median ratio and the
largest single ratio, and the findings. Healthy set-ups use SGD/Adam/AdamW at common
learning rates and must get no update finding; broken ones use far too high or far too low
learning rates.

    python benchmarks/update_ratios.py

Last output: benchmarks/results/update_ratios_cpu_2026-11-30.txt.
"""

from __future__ import annotations

import platform
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from gradcheck_tool import Monitor
from gradcheck_tool.engines.flow.model_map import ModelMap, comparable_keys

STEPS, BATCH, N = 30, 32, 512


class Tagger(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(32, 64, batch_first=True)
        self.head = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.emb(x))[0]).mean(1)


class Encoder(nn.Module):
    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.inp = nn.Linear(16, d)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.inp(x)).mean(1))


def conv_bn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    )  # fmt: skip


def mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 5),
    )  # fmt: skip


MODELS = {
    "mlp-64": (lambda: mlp(64), lambda g: torch.randn(N, 16, generator=g)),
    "mlp-512": (lambda: mlp(512), lambda g: torch.randn(N, 16, generator=g)),
    "conv-bn": (conv_bn, lambda g: torch.randn(N, 3, 16, 16, generator=g)),
    "transformer": (Encoder, lambda g: torch.randn(N, 8, 16, generator=g)),
    "lstm": (lambda: Tagger("lstm"), lambda g: torch.randint(0, 100, (N, 12), generator=g)),
    "gru": (lambda: Tagger("gru"), lambda g: torch.randint(0, 100, (N, 12), generator=g)),
}

HEALTHY = [
    ("sgd", 0.01, {}),
    ("sgd", 0.1, {}),
    ("sgd", 0.01, {"momentum": 0.9}),
    ("adam", 1e-4, {}),
    ("adam", 1e-3, {}),
    ("adamw", 1e-3, {"weight_decay": 0.01}),
]
BROKEN = [("sgd", 10.0, {}), ("adam", 0.1, {}), ("sgd", 1e-6, {}), ("adam", 1e-7, {})]
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def run(model_name: str, opt_name: str, lr: float, extra: dict) -> tuple:
    build, data = MODELS[model_name]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = build()
    x = data(g)
    y = torch.randint(0, 5, (N,), generator=g)
    opt = OPTIMIZERS[opt_name](model.parameters(), lr=lr, **extra)
    with Monitor(model) as mon:
        for _ in range(STEPS):
            idx = torch.randint(0, N, (BATCH,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    report = mon.flow_report()
    compared = comparable_keys(ModelMap(model))  # the rows the update rules read
    ratios: dict[str, list[float]] = {}
    for record in report.history:
        for key, row in record.rows:
            if key in compared and row.update_ratio is not None:
                ratios.setdefault(key, []).append(row.update_ratio)
    medians = [statistics.median(r) for r in ratios.values()] or [float("nan")]
    peak = max((max(r) for r in ratios.values()), default=float("nan"))
    kinds = [f.kind for f in report.findings if f.kind.startswith("update_")]
    return min(medians), max(medians), peak, kinds


def main() -> None:
    print(f"torch {torch.__version__} · Python {platform.python_version()} · {STEPS} steps")
    print(f"{'set-up':<34}{'min median':>11}{'max median':>11}{'max':>10}  update findings")
    started = time.perf_counter()
    for label, configs in (("healthy", HEALTHY), ("broken", BROKEN)):
        for model_name in MODELS:
            for opt_name, lr, extra in configs:
                lo, hi, peak, kinds = run(model_name, opt_name, lr, extra)
                name = f"{label} {model_name} {opt_name} {lr:g}" + (" m" if extra else "")
                print(f"{name:<34}{lo:>11.1e}{hi:>11.1e}{peak:>10.1e}  {', '.join(kinds) or '-'}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

"""What the callbacks' DDP tests share (torch only): a float64 MLP whose ReLU units fire on
one rank's examples only, the global batches and each rank's part of them, and the
comparison of two reports (norms to 1e-6 relative, fractions exactly).

The two ranks' parts of a global batch are its first and second halves: every example of
rank 0's has x0 > 1, every one of rank 1's x0 < -1, and two hidden units fire on one sign
of x0 only, so a rank's own dead fractions are not the global batch's."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

WORLD = 2
GLOBAL_BATCH = 16
BATCHES = 4
FEATURES, HIDDEN = 8, 16


def build_layers() -> tuple[nn.Module, nn.Module]:
    """(encoder, head), the same initial weights in every process, in float64 (the ranks'
    sums of their examples' gradients round otherwise than one sum over all of them)."""
    torch.manual_seed(0)
    enc = nn.Sequential(
        nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh()
    )
    head = nn.Linear(HIDDEN, 1)
    enc, head = enc.double(), head.double()
    with torch.no_grad():
        first = enc[0]
        first.bias[:12] = -100.0  # units 0-11 never fire
        # unit 12 fires only where x0 > 0 (rank 0's examples), unit 13 only where x0 < 0
        first.weight[12:14].zero_()
        first.weight[12, 0], first.weight[13, 0] = 1.0, -1.0
        first.bias[12:14] = -0.5
    return enc, head


def global_data() -> tuple[torch.Tensor, torch.Tensor]:
    """BATCHES global batches, one after the other."""
    g = torch.Generator().manual_seed(1)
    n = GLOBAL_BATCH * BATCHES
    x = torch.randn(n, FEATURES, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    half = GLOBAL_BATCH // 2
    for b in range(BATCHES):
        at = b * GLOBAL_BATCH
        x[at : at + half, 0] = x[at : at + half, 0].abs() + 1.0
        x[at + half : at + GLOBAL_BATCH, 0] = -x[at + half : at + GLOBAL_BATCH, 0].abs() - 1.0
    return x, y


def rank_data(rank: int, world: int = WORLD) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of every global batch, in order (its batches are GLOBAL_BATCH/world)."""
    x, y = global_data()
    n = GLOBAL_BATCH // world
    rows = [
        i
        for b in range(BATCHES)
        for i in range(b * GLOBAL_BATCH + rank * n, b * GLOBAL_BATCH + (rank + 1) * n)
    ]
    return x[rows], y[rows]


def close(a: float | None, b: float | None, rel: float = 1e-6) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def assert_same_report(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Two reports (their JSON) the same: rows, every recorded step, findings."""
    assert [r["key"] for r in got["layers"]] == [r["key"] for r in want["layers"]]
    for g, w in zip(got["layers"], want["layers"]):
        for name in ("grad_norm", "weight_norm", "max_abs_grad", "output_grad_norm"):
            assert close(g[name], w[name]), (g["key"], name, g[name], w[name])
        assert close(g["update_ratio"], w["update_ratio"]), (g["key"], "update_ratio")
        for name in ("dead_fraction", "inactive_fraction", "saturated_fraction"):
            assert g[name] == w[name], (g["key"], name, g[name], w[name])  # exactly
    assert [h["step"] for h in got["history"]] == [h["step"] for h in want["history"]]
    for gs, ws in zip(got["history"], want["history"]):
        assert gs["rows"].keys() == ws["rows"].keys()
        for key, w in ws["rows"].items():
            for name, value in w.items():
                g = gs["rows"][key][name]
                if "fraction" in name:
                    assert g == value, (gs["step"], key, name, g, value)
                else:
                    assert close(g, value), (gs["step"], key, name, g, value)
    assert [(f["kind"], f["key"]) for f in got["findings"]] == [
        (f["kind"], f["key"]) for f in want["findings"]
    ]

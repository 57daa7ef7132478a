"""Calibration of the vanishing/exploding criteria (issue #12): healthy models of many kinds
and broken ones, each through gradtool's `flow()` (one step, SGD lr 1e-2 unless a row says
adam, lr 1e-3), with the numbers the rules judge, so the margins between healthy and broken
show. Random init, no download; a library model is skipped where its library is missing.

    PYTHONPATH=. python benchmarks/flow_calibration.py            # every model (~30 s)
    PYTHONPATH=. python benchmarks/flow_calibration.py --only bert,gpt2

Columns (per model, the extreme over its layers; the criteria are in findings/_layers.py
and findings/exploding.py, the thresholds in FlowThresholds):
  upd  lr·‖g‖/‖w‖, the size of one SGD step relative to the layer: exploding above 0.65 with
       SGD on a real loss (not judged on "proj" rows: the projection's scale is arbitrary);
       the last table shows which first steps blew up over 12 steps
  rel  ‖g‖/(‖w‖·‖∂loss/∂output‖): exploding above 4e2 for Adam, an unknown optimizer and
       the projection loss; "-" where the output is not a tensor (GPT-2's ModelOutput)
  g/w  ‖g‖/‖w‖ (what a real loss is judged by where rel is "-": above 2e2)
  dn   the smallest steady first/last trend of RMS weight gradients along a role (the same
       layer across blocks): vanishing below 1e-3; "-" where no run is steady
  up   the largest such trend: exploding above 1e3
  sig  the largest steady trend of the backward signal (the gradient at layers' outputs):
       exploding above 1e3
  old  the criterion before #12: the first quarter of all weight matrices over the last
       quarter (vanishing was below 1e-3), for comparison
  findings  the kinds flow reports
Only weight matrices count in upd, rel and g/w (not norm layers' scales nor embeddings),
and not those whose weight RMS is below 1e-4 (near zero by design) nor those normalised
next (a conv before its BatchNorm: scale-free, Note [scale-free layers] in
findings/_layers.py).
Loss: "ce" the model's natural loss (cross-entropy, or next-token cross-entropy for the
language models) through loss_fn; "proj" gradtool's default random projection of the
output. The margins at the end: per criterion, the healthy models' worst value and the
broken models' least (of those whose truth is that finding). The last run's output is in
benchmarks/results/flow_calibration.txt.
"""

from __future__ import annotations

import argparse
import math
import platform
import runpy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from gradcheck_tool import flow
from gradcheck_tool.engines.flow import train
from gradcheck_tool.engines.flow.findings import Evidence, exploding
from gradcheck_tool.engines.flow.findings import _layers as L

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "models" / "real"))
import _lib  # noqa: E402  (timm/transformers on a CPU-only torch: see its docstring)

_lib.import_vision()

B = 16  # examples per batch


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _labels(n: int, classes: int) -> torch.Tensor:
    return torch.arange(n) % classes


def ce(out: Any, *_: Any) -> torch.Tensor:
    logits = out if isinstance(out, torch.Tensor) else out.logits
    logits = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(logits, _labels(logits.shape[0], logits.shape[-1]))


@dataclass
class Case:
    name: str
    healthy: bool
    build: Callable[[], nn.Module]
    inputs: Callable[[], Any]
    loss: Callable[..., Any] | None = ce
    optimizer: str = "sgd"
    lr: float | None = None
    truth: str | None = None  # a broken model's expected finding; None: healthy or borderline


# --- healthy models ---------------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def resnet_bn(blocks: int = 6, c: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        *[ResBlock(c) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, 10),
    )


class Encoder(nn.Module):
    def __init__(self, layers: int = 4, d: int = 32, norm_first: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, d)
        layer = nn.TransformerEncoderLayer(
            d, 4, 64, dropout=0.0, batch_first=True, norm_first=norm_first
        )
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.inp(x)).mean(1))


class Seq2Seq(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.src, self.tgt = nn.Linear(8, d), nn.Linear(8, d)
        self.tr = nn.Transformer(d, 4, 2, 2, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, 10)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        mask = self.tr.generate_square_subsequent_mask(tgt.shape[1])
        return self.head(self.tr(self.src(src), self.tgt(tgt), tgt_mask=mask))


def relu_mlp(depth: int = 8, width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(32, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


# the models the corpus's healthy controls are made of (tests/fixtures/flow_corpus/_models.py)
_MODELS = runpy.run_path(str(ROOT / "tests" / "fixtures" / "flow_corpus" / "_models.py"))
Tagger, lm_loss, hf_gpt2, hf_llama = (
    _MODELS[n] for n in ("Tagger", "lm_loss", "hf_gpt2", "hf_llama")
)


def ids(b: int = B, t: int = 12, vocab: int = 50) -> torch.Tensor:
    return _MODELS["token_ids"](b, t, vocab)


def hf_bert() -> nn.Module:
    return _MODELS["hf_bert"]()


def hf_bert_deep() -> nn.Module:
    return _MODELS["hf_bert"](layers=6, hidden=32)


def timm_model(name: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=10, **kw)

    return build


# --- broken models ----------------------------------------------------------------------------


def big_init_mlp(std: float = 1.0, depth: int = 6, width: int = 128) -> nn.Module:
    """An MLP initialised with N(0, std²): far too large (He would be √(2/width))."""
    model = relu_mlp(depth, width)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
    return model


def squashing_mlp(act: type[nn.Module], depth: int = 20, width: int = 32) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(32, width), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def deep_plain(depth: int = 30, width: int = 64, gain: float = 1.5) -> nn.Module:
    """A deep ReLU net without normalisation or residuals, init a little above He."""
    model = relu_mlp(depth, width)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, gain * math.sqrt(2.0 / m.in_features))
    return model


class VanillaRNN(nn.Module):
    def __init__(self, scale: float = 3.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.RNN(8, 64, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(64, 10)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(scale * torch.eye(64) + 0.01 * torch.randn(64, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def saturating_inputs() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)
    )


CASES: list[Case] = [
    Case("resnet_bn", True, resnet_bn, lambda: _x(B, 3, 16, 16)),
    Case("transformer_encoder", True, Encoder, lambda: _x(B, 10, 8)),
    Case(
        "transformer_encoder_prenorm", True, lambda: Encoder(norm_first=True), lambda: _x(B, 10, 8)
    ),
    Case("transformer_seq2seq", True, Seq2Seq, lambda: (_x(B, 10, 8), _x(B, 9, 8, seed=1))),
    Case("lstm_tagger", True, lambda: Tagger(nn.LSTM), ids),
    Case("gru_tagger", True, lambda: Tagger(nn.GRU), ids),
    Case("relu_mlp", True, relu_mlp, lambda: _x(B, 32)),
    Case("relu_mlp_adam", True, relu_mlp, lambda: _x(B, 32), optimizer="adam"),
    Case("hf_bert", True, hf_bert, lambda: ids(4, 16, 100)),
    Case("hf_bert_6", True, hf_bert_deep, lambda: ids(4, 16, 100)),
    Case("hf_gpt2", True, hf_gpt2, lambda: ids(4, 16, 100), lm_loss),
    Case("hf_llama", True, hf_llama, lambda: ids(4, 16, 100), lm_loss),
    Case("timm_resnet18", True, timm_model("resnet18"), lambda: _x(4, 3, 32, 32)),
    Case("timm_mobilenetv3", True, timm_model("mobilenetv3_small_100"), lambda: _x(4, 3, 32, 32)),
    Case(
        "timm_vit_tiny",
        True,
        timm_model("vit_tiny_patch16_224", img_size=32),
        lambda: _x(4, 3, 32, 32),
    ),
    Case("timm_convnext_atto", True, timm_model("convnext_atto"), lambda: _x(4, 3, 32, 32)),
    # at batch 4 its last stages are 1×1, so BatchNorm normalises 4 values per channel and
    # amplifies the gradients: its squeeze-excitation gates' SGD steps at lr 1e-2 are 0.7-1.7×
    # their size and exploding fires (12 steps: the loss jumps 0.17 → 9.5, then recovers);
    # a borderline case, not a control. At batch 16 (here) or 96×96 images nothing
    Case("timm_efficientnet_b0", True, timm_model("efficientnet_b0"), lambda: _x(16, 3, 32, 32)),
    Case("big_init_std1", False, big_init_mlp, lambda: _x(B, 32), truth="exploding"),
    Case(
        "big_init_std1_adam",
        False,
        big_init_mlp,
        lambda: _x(B, 32),
        optimizer="adam",
        truth="exploding",
    ),
    # borderline: 2.4× He's std over 6 layers (logits ~1e2); no criterion flags it
    Case("big_init_std0.3", False, lambda: big_init_mlp(0.3), lambda: _x(B, 32)),
    Case(
        "deep_sigmoid",
        False,
        lambda: squashing_mlp(nn.Sigmoid),
        lambda: _x(B, 32),
        truth="vanishing",
    ),
    Case(
        "deep_tanh", False, lambda: squashing_mlp(nn.Tanh, 30), lambda: _x(B, 32), truth="vanishing"
    ),
    Case("deep_relu_1.5he", False, deep_plain, lambda: _x(B, 32), truth="exploding"),
    Case("deep_relu_default", False, lambda: relu_mlp(30), lambda: _x(B, 32), truth="vanishing"),
    Case("vanilla_rnn", False, VanillaRNN, lambda: _x(B, 20, 8), truth="exploding"),
    Case(
        "saturating_inputs", False, saturating_inputs, lambda: 100 * _x(B, 16), truth="saturation"
    ),
]


def measure(case: Case, with_loss: bool) -> dict[str, Any]:
    """flow() on the case, and the criteria computed from the evidence the rules saw."""
    seen: dict[str, Any] = {}
    detect = train.detect_findings

    def capture(samples, th, batch, comparable, **kw):  # noqa: ANN001
        seen["ev"] = Evidence(samples, th, batch, comparable, kw.get("optimizer"), kw.get("lr"))
        return detect(samples, th, batch, comparable, **kw)

    train.detect_findings = capture
    try:
        model = case.build()
        started = time.perf_counter()
        report = flow(
            model,
            case.inputs(),
            loss_fn=case.loss if with_loss else None,
            optimizer=case.optimizer,
            lr=case.lr,
        )
        seconds = time.perf_counter() - started
    finally:
        train.detect_findings = detect
    ev: Evidence = seen["ev"]
    lr = ev.lr or 1e-2
    sized = exploding._sized(ev)
    ratios = [v for _, v in sized]
    top = max(sized, key=lambda x: x[1])[0].name if sized else "-"
    th = ev.thresholds
    grads = L.steady(L.trends(ev, L.rms), th.trend_steadiness)
    signal = L.steady(L.trends(ev, L.signal_rms), th.trend_steadiness)
    # the criterion before #12: all weight matrices' first quarter over their last quarter
    every = [(r, v) for r in L.compared_layers(ev) if (v := L.rms(r)) and math.isfinite(v)]
    before = L.trend(every)
    loss_grad = ev.last.loss_grad
    return {
        "upd": lr * max(ratios) if ratios else math.nan,
        "g/w": max(ratios) if ratios else math.nan,
        "dn": min((t.ratio for t in grads), default=math.nan),
        "up": max((t.ratio for t in grads), default=math.nan),
        "sig": max((t.ratio for t in signal), default=math.nan),
        "old": before.ratio if before else math.nan,
        "rel": max(ratios) / loss_grad if ratios and loss_grad else math.nan,
        "top": top,
        "findings": ",".join(report.kinds) or "-",
        "s": seconds,
    }


COLUMNS = ("upd", "rel", "g/w", "dn", "up", "sig", "old")


def fmt(x: float) -> str:
    return "-" if x != x else f"{x:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="comma-separated substrings of case names")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    torch.set_num_threads(2)
    print(f"# torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}")
    head = f"{'model':27} {'loss':4} " + " ".join(f"{c:>7}" for c in COLUMNS) + "  findings"
    tops: list[str] = []
    rows: list[tuple[Case, str, dict[str, Any]]] = []
    for healthy in (True, False):
        print(f"\n## {'healthy' if healthy else 'broken'}\n{head}")
        for case in CASES:
            if case.healthy != healthy or (only and not any(s in case.name for s in only)):
                continue
            for with_loss in (True, False):
                if not with_loss and case.optimizer != "sgd":
                    continue
                try:
                    m = measure(case, with_loss)
                except ImportError as exc:
                    print(f"{case.name:27} skipped: {exc}")
                    break
                loss = "ce" if with_loss else "proj"
                name = case.name + (f" ({case.optimizer})" if case.optimizer != "sgd" else "")
                cells = " ".join(f"{fmt(m[k]):>7}" for k in COLUMNS)
                print(f"{name:27} {loss:4} {cells}  {m['findings']}", flush=True)
                tops.append(f"{name} {loss}: {m['top'] or '(model)'}")
                rows.append((case, loss, m))
    print("\n## the layer with the largest ‖g‖/‖w‖ (what upd, rel and g/w are about)")
    print("\n".join(tops))
    margins(rows)
    if not only:
        divergence()


# (name, build, lr): does one SGD step's size at step 1 (upd) tell which runs blow up?
SWEEP: list[tuple[str, Callable[[], nn.Module], float]] = [
    ("relu_mlp", relu_mlp, 1e-2),
    ("relu_mlp", relu_mlp, 1e-1),
    ("resnet_bn", resnet_bn, 1e-1),
    ("transformer_encoder", Encoder, 1e-1),
    ("big_init_std0.3", lambda: big_init_mlp(0.3), 1e-2),
    ("big_init_std0.3", lambda: big_init_mlp(0.3), 3e-2),
    ("big_init_std1_4layers", lambda: big_init_mlp(1.0, 4), 1e-2),
    ("big_init_std1_4layers", lambda: big_init_mlp(1.0, 4), 3e-2),
    ("big_init_std1_4layers", lambda: big_init_mlp(1.0, 4), 1e-1),
    ("big_init_std1", big_init_mlp, 1e-4),
    ("big_init_std1", big_init_mlp, 1e-3),
    ("big_init_std1", big_init_mlp, 1e-2),
]


def divergence() -> None:
    """12 SGD steps on the batch (cross-entropy) for each of SWEEP: the first step's upd
    against what the loss did."""
    print("\n## does the first step's size tell? 12 SGD steps on the batch, cross-entropy")
    print(f"{'model':22} {'lr':>7} {'upd':>7}  losses (every other step)")
    for name, build, lr in SWEEP:
        inputs = (lambda: _x(B, 3, 16, 16)) if name == "resnet_bn" else None
        inputs = inputs or ((lambda: _x(B, 10, 8)) if name == "transformer_encoder" else None)
        inputs = inputs or (lambda: _x(B, 32))
        m = measure(Case(name, True, build, inputs, lr=lr), True)
        report = flow(build(), inputs(), loss_fn=ce, steps=12, lr=lr)
        losses = " ".join(f"{h.loss:.0e}" for h in report.history[::2] if h.loss is not None)
        blew = "nan" in report.kinds or any(
            h.loss is not None and h.loss > 100 * report.history[0].loss for h in report.history
        )
        print(f"{name:22} {lr:7.0e} {m['upd']:7.2f}  {losses}{'  blew up' if blew else ''}")


def margins(rows: list[tuple[Case, str, dict[str, Any]]]) -> None:
    """Per criterion: the healthy models' worst value and the broken models' least."""

    def values(key: str, healthy: bool, truth: str, where: Callable[..., bool]) -> list[float]:
        return [
            m[key]
            for case, loss, m in rows
            if case.healthy == healthy
            and (healthy or case.truth == truth)
            and where(case, loss)
            and m[key] == m[key]
        ]

    sgd_real = lambda case, loss: case.optimizer == "sgd" and loss == "ce"  # noqa: E731
    lr_free = lambda case, loss: not sgd_real(case, loss)  # noqa: E731
    anywhere = lambda case, loss: True  # noqa: E731
    print("\n## margins: healthy worst, broken least, threshold")
    for label, key, truth, where, worst, threshold in (
        ("upd (SGD, real loss)", "upd", "exploding", sgd_real, max, 0.65),
        ("rel (Adam, projection)", "rel", "exploding", lr_free, max, 4e2),
        ("g/w (real loss)", "g/w", "exploding", sgd_real, max, 2e2),
        ("dn (vanishing)", "dn", "vanishing", anywhere, min, 1e-3),
    ):
        good, bad = values(key, True, truth, where), values(key, False, truth, where)
        least = min if worst is max else max
        print(
            f"{label:24} healthy worst {fmt(worst(good, default=math.nan))}, broken least "
            f"{fmt(least(bad, default=math.nan))}, threshold {threshold:.2g}"
        )
    growth = [max(m["up"], m["sig"]) for case, _, m in rows if case.healthy]
    print(f"{'up/sig (growth)':24} healthy worst {fmt(max(growth))}, threshold 1e+03")


if __name__ == "__main__":
    main()

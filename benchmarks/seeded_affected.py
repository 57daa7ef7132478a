"""The tensors whose gradient a seeded bug changes: autograd's gradients of a benchmark model
file with and without GRADTOOL_BENCH_BUG=N (models/real/_lib.py), compared. Prints one JSON
line: where the bug sits, the tensors whose gradient changes at all ("changed": upstream of
the bug) and those it changes by more than 0.1% ("affected": what a check must see), by
gradtool's names (parameters by name, "input:x").

    python benchmarks/seeded_affected.py benchmarks/models/real/timm_resnet18.py 8
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import torch


def gradients(module, bug: str) -> tuple[dict[str, torch.Tensor | None], str | None]:
    os.environ["GRADTOOL_BENCH_BUG"] = bug
    model = module.build_model().double()
    inputs = module.example_inputs()
    kwargs = inputs if isinstance(inputs, dict) else {}
    x = () if isinstance(inputs, dict) else (inputs.double().requires_grad_(True),)
    out = model(*x, **kwargs)
    if hasattr(module, "loss_fn"):
        loss = module.loss_fn(out, **kwargs)
    else:  # a fixed random projection of the output
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        loss = (out * weights.to(out)).sum()
    names = [name for name, _ in model.named_parameters()] + ["input:x"] * len(x)
    tensors = [*model.parameters(), *x]
    got = torch.autograd.grad(loss, tensors, allow_unused=True)
    return dict(zip(names, got)), getattr(model, "seeded_bug", None)


def main() -> None:
    path, bug = sys.argv[1], sys.argv[2]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec = importlib.util.spec_from_file_location("model_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clean, _ = gradients(module, "")
    buggy, where = gradients(module, bug)

    # a gradient that is only rounding (a key bias before softmax, a bias before BatchNorm:
    # truly 0) changes "by more than 0.1%" meaninglessly
    largest = max(float(g.norm()) for g in clean.values() if g is not None)

    def moved(by: float) -> list[str]:
        return [
            name
            for name, g in clean.items()
            if g is not None
            and buggy[name] is not None
            and float(g.norm()) > 1e-10 * largest
            and float((g - buggy[name]).norm()) > by * float(g.norm())
        ]

    print(json.dumps({"where": where, "changed": moved(1e-12), "affected": moved(1e-3)}))


if __name__ == "__main__":
    main()

"""Run torch.autograd.gradcheck on a benchmark model file, the way a user would by hand.

    python benchmarks/gradcheck_reference.py benchmarks/models/mlp_35k.py --fast

The model is converted to float64 and checked with respect to its input and every
parameter (through torch.func.functional_call). Prints the verdict and the seconds spent.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call


def load(path: Path):
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model(), module.example_inputs()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--fast", action="store_true", help="gradcheck(fast_mode=True)")
    args = parser.parse_args()
    model, x = load(args.model)
    model = model.double()
    x = x.double().requires_grad_(True)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

    def f(inp, *ps):
        return functional_call(model, dict(zip(names, ps)), (inp,))

    started = time.perf_counter()
    ok = torch.autograd.gradcheck(f, (x, *params), fast_mode=args.fast, raise_exception=False)
    print(
        f"gradcheck fast_mode={args.fast}: {'pass' if ok else 'FAIL'} "
        f"in {time.perf_counter() - started:.2f}s"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""Try `flow --nproc` before the CLI has the flag: the table of one process, then of N.

PYTHONPATH=. python scripts/try_flow_nproc.py sample_models/dead_relu_mlp.py 2 [--steps 3]
"""

from __future__ import annotations

import argparse
import sys

from gradcheck_tool.engines.flow.distributed_flow import run_flow_nproc
from gradcheck_tool.formats import table
from gradcheck_tool.runner import run_target


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("nproc", type=int)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--lr", type=float, default=None)
    a = parser.parse_args()
    options = {"steps": a.steps, "optimizer": a.optimizer, "lr": a.lr}
    one = run_target("flow", a.target, options)
    if one.report is None:
        print(one.error, file=sys.stderr)
        return one.exit_code
    table.write(one.report, sys.stdout, width=80)
    print("-" * 80)
    table.write(run_flow_nproc(a.target, options, a.nproc), sys.stdout, width=80)
    return 0


if __name__ == "__main__":
    sys.exit(main())

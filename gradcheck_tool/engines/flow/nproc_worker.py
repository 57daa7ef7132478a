"""The entry point each process of `gradtool flow --nproc N` runs under torch.distributed.run
(distributed_flow.worker_main); not a module to import."""

from __future__ import annotations

import sys

from gradcheck_tool.engines.flow.distributed_flow import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))

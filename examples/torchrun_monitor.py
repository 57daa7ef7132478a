"""The Monitor in a distributed job: the same report as one process on the global batch.

    python -m torch.distributed.run --nproc_per_node 2 examples/torchrun_monitor.py ddp
    python -m torch.distributed.run --nproc_per_node 2 examples/torchrun_monitor.py fsdp
    python examples/torchrun_monitor.py single      # one process, the whole batch

Every rank enters its own Monitor on the wrapped model, with the same options; rank 0 prints
the job's report (gradients after DDP's all-reduce, FSDP's shards as whole tensors, dead
units over the global batch), the other ranks print nothing.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn

from gradcheck_tool import Monitor

mode = sys.argv[1] if len(sys.argv) > 1 else "ddp"
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
with torch.no_grad():
    model[0].bias[:4] = -10.0  # four units of the first ReLU never fire
X, Y = torch.randn(32, 8), torch.randn(32, 1)  # the global batch

if mode == "single":
    x, y, net = X, Y, model
else:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = X.chunk(world)[rank], Y.chunk(world)[rank]  # this rank's rows
    if mode == "ddp":
        net = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        net = fully_shard(model)

opt = torch.optim.SGD(net.parameters(), lr=0.05)
with Monitor(net, every=1) as mon:
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
mon.print_report(width=80)  # prints on rank 0 only

if mode != "single":
    dist.barrier()  # FSDP2 on gloo may abort at exit without it (Monitor or not)
    dist.destroy_process_group()

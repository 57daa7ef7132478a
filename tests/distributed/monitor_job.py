"""One rank of the 2-process test job (`python -m torch.distributed.run --nproc_per_node 2
monitor_job.py OUT`, gloo on CPU): the Monitor under DDP, FSDP2 (fully_shard) and FSDP1
(with and without use_orig_params) on each rank's half of the global batch; each rank
writes what its Monitor reported, and how many all_reduce calls gradtool made, to
OUT/<case>_rank<r>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from dist_setup import STEPS, build_model, rank_batch, train
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from gradcheck_tool import Monitor

OURS = "gradcheck_tool.engines.flow.distributed"


class CountedAllReduce:
    """dist.all_reduce, counting the calls gradtool's reduction makes."""

    def __init__(self) -> None:
        self.original = dist.all_reduce
        self.calls = 0

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        if sys._getframe(1).f_globals.get("__name__") == OURS:
            self.calls += 1
        return self.original(*args, **kwargs)


def ddp(model: nn.Module) -> nn.Module:
    return DistributedDataParallel(model)


def fsdp2(model: nn.Module) -> nn.Module:
    for layer in (model.fc1, model.fc2, model.head):
        fully_shard(layer)
    fully_shard(model)
    return model


class Diverging(nn.Module):
    """A forward whose path depends on the data: rank 0 runs a ReLU where rank 1 runs none."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return torch.relu(h) if x[0, 0] > 0 else h


def fsdp1(use_orig_params: bool):  # noqa: ANN201
    def wrap(model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(
            model, use_orig_params=use_orig_params, device_id=torch.device("cpu")
        )

    return wrap


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x, y = rank_batch(rank, dist.get_world_size())
    counter = CountedAllReduce()
    dist.all_reduce = counter
    cases = {
        "ddp": (ddp, {"all_ranks": True}),
        "fsdp2": (fsdp2, {}),
        "fsdp1": (fsdp1(True), {}),
        "fsdp1flat": (fsdp1(False), {}),
    }
    for case, (wrap, options) in cases.items():
        model = wrap(build_model())
        counter.calls = 0
        with Monitor(model, **options) as mon:
            train(model, x, y)
        calls = counter.calls
        report = mon.report()
        (out / f"{case}_rank{rank}.json").write_text(
            json.dumps(
                {"report": report, "all_reduce_calls": calls, "steps": mon.steps_recorded},
                default=str,
            )
        )
    # gradient accumulation: the call under no_sync() is counted, not recorded
    model = DistributedDataParallel(build_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model) as mon:
        for _ in range(2):
            opt.zero_grad()
            with model.no_sync():
                torch.nn.functional.cross_entropy(model(x[:4]), y[:4]).backward()
            torch.nn.functional.cross_entropy(model(x[4:]), y[4:]).backward()
            opt.step()
    (out / f"accumulate_rank{rank}.json").write_text(
        json.dumps({"report": mon.report(), "steps": mon.steps_recorded}, default=str)
    )
    # ranks whose forwards differ: the steps are left out, named, and nothing hangs
    torch.manual_seed(0)
    model = DistributedDataParallel(Diverging().double())
    with Monitor(model, all_ranks=True) as mon:
        train(model, x, y, STEPS)
    (out / f"diverging_rank{rank}.json").write_text(json.dumps({"report": mon.report()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

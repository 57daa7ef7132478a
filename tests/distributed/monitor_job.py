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
from gradcheck_tool.errors import InputError

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
    # a NaN in rank 1's examples only: rank 0's report finds it where one process does
    model = DistributedDataParallel(build_model())
    with Monitor(model) as mon:
        train(model, *rank_batch(rank, dist.get_world_size(), nan=True), steps=1)
    (out / f"nan_rank{rank}.json").write_text(json.dumps({"report": mon.report()}))
    # ranks whose forwards differ: the steps are left out, named, and nothing hangs
    torch.manual_seed(0)
    model = DistributedDataParallel(Diverging().double())
    with Monitor(model, all_ranks=True) as mon:
        train(model, x, y, STEPS)
    (out / f"diverging_rank{rank}.json").write_text(json.dumps({"report": mon.report()}))
    # Monitors that differ across ranks: an InputError on every rank, and the job goes on
    model = DistributedDataParallel(build_model())
    renamed = DistributedDataParallel(Renamed(build_model()) if rank == 1 else build_model())
    mismatches = {
        "every": lambda: Monitor(model, every=1 + rank),
        "names": lambda: Monitor(renamed),  # the same shapes (DDP checks those), other names
    }
    errors = {}
    for case, make in mismatches.items():
        try:
            with make():
                train(model, x, y, steps=1)
        except InputError as exc:
            errors[case] = str(exc)
        train(model, x, y, steps=1)  # (the job's own collectives still match)
    (out / f"mismatch_rank{rank}.json").write_text(json.dumps(errors))
    (out / f"gloo_group_rank{rank}.json").write_text(json.dumps(gloo_group_again(rank)))
    dist.destroy_process_group()


class Renamed(nn.Module):
    """The MLP's layers under other names."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.first, self.act, self.ln = mlp.fc1, mlp.act1, mlp.norm
        self.second, self.last = mlp.fc2, mlp.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.act(self.first(x)))
        return self.last(torch.relu(self.second(h)))


def gloo_group_again(rank: int) -> dict[str, object]:
    """gradtool's gloo group (made beside an NCCL default group; here beside gloo's) after
    the job destroys its process group and initialises a new one whose default group has
    the old one's id (as CPython may give it; simulated: every object's id the same in
    gradtool's module meanwhile): a working group of the new job, the old one destroyed
    with the job's own."""
    from gradcheck_tool.engines.flow import distributed as ours

    c10d = dist.distributed_c10d
    store = c10d._get_default_store()
    ours.id = lambda obj: 0  # every default group at the same address
    first = ours._gloo_group(dist)
    t = torch.ones(1)
    dist.all_reduce(t, group=first)
    dist.destroy_process_group()
    old_destroyed = first not in c10d._world.pg_map
    # (a store of its own for the new job: the old one's keys would be read again)
    dist.init_process_group("gloo", store=dist.PrefixStore("again", store), rank=rank, world_size=2)
    result: dict[str, object] = {"first_sum": t.item(), "old_destroyed": old_destroyed}
    try:
        second = ours._gloo_group(dist)
        u = torch.ones(1)
        dist.all_reduce(u, group=second)
        result.update(sum=u.item(), error=None, new_group=second is not first)
        result["same_again"] = ours._gloo_group(dist) is second
    except Exception as exc:  # noqa: BLE001 - the test names it
        result.update(sum=None, error=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        del ours.id
    return result


if __name__ == "__main__":
    main()

"""Which blocks to checkpoint, and what checkpointing them would free.

Note [predicted saving of checkpointing]
    Non-reentrant `torch.utils.checkpoint` keeps a block's inputs and drops everything its
    operations saved, recomputing it in the backward. So wrapping the blocks B frees the
    storages saved inside B, except
      - the blocks' inputs (checkpoint keeps them; saved or not, they stay alive), and
      - storages also saved outside B (a block's output saved by the next layer stays),
      - storages the model keeps on itself (`self.last_attn = a`: alive anyway);
    and it costs the blocks' inputs that nothing saved before (now kept by checkpoint).
    Computed on the set B at once: adjacent blocks share a storage (one's output is the
    next one's input), which summing per-block predictions would count wrongly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from ...results import CheckpointCandidate, ModuleMemory
from .measure import StepRecord

BIG_SHARE = 0.10  # a single module freeing this share of the step's saved bytes comes first
SMALL_SHARE = 0.01  # one freeing less is no candidate (a dropout's mask: not worth a wrap)


def _inside(name: str, block: str) -> bool:
    return name == block or name.startswith(block + ".")


def predicted_saving(rec: StepRecord, blocks: Iterable[str]) -> int:
    """Bytes freed between the forward and the backward by checkpointing `blocks`
    (Note [predicted saving of checkpointing])."""
    blocks = list(blocks)
    within, outside = set(), set()
    for owner, storages in rec.own_saved.items():
        (within if any(_inside(owner, b) for b in blocks) else outside).update(storages)
    kept = set().union(*(rec.inputs_of.get(b, set()) for b in blocks)) - rec.fixed
    kept -= rec.step_inputs  # alive anyway, and not counted as activations
    freed = within - outside - kept - rec.kept_by_model
    newly_kept = kept - within - outside
    return sum(rec.sizes[s] for s in freed) - sum(rec.sizes[s] for s in newly_kept)


GENERIC = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _shape(module: nn.Module) -> tuple:
    """What makes two layers the same layer: their submodules' names and types, and their
    parameters' names and shapes."""
    return (
        tuple((n, type(m)) for n, m in module.named_modules()),
        tuple((n, tuple(p.shape)) for n, p in module.named_parameters()),
    )


def stacks(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The model's stacks of repeated layers: runs of at least two siblings with consecutive
    indices (a ModuleList's or a Sequential's children: `encoder.layers.0` ... `11`, HF
    `encoder.layer.*`, timm `blocks.*`) of one type that have submodules (a generic
    container, such as a Sequential, also of one shape). Named by the range:
    "encoder.layers.0-11" -> ("encoder.layers.0", ..., "encoder.layers.11")."""
    found: dict[str, tuple[str, ...]] = {}
    for parent, container in model.named_modules():
        run: list[tuple[int, nn.Module]] = []
        for child, module in [*container.named_children(), ("", None)]:
            same = (
                run
                and module is not None
                and child.isdigit()
                and int(child) == run[-1][0] + 1
                and type(module) is type(run[-1][1])
                and (not isinstance(module, GENERIC) or _shape(module) == _shape(run[-1][1]))
            )
            if same:
                run.append((int(child), module))
                continue
            if len(run) > 1:
                prefix = parent + "." if parent else ""
                found[f"{prefix}{run[0][0]}-{run[-1][0]}"] = tuple(f"{prefix}{i}" for i, _ in run)
            has_children = module is not None and next(module.children(), None) is not None
            run = [(int(child), module)] if child.isdigit() and has_children else []
    return found


def rank_candidates(
    model: nn.Module, rec: StepRecord, rows: Sequence[ModuleMemory]
) -> list[CheckpointCandidate]:
    """Blocks worth checkpointing: the stacks of repeated layers first (one candidate each:
    every layer wrapped), then single modules outside any stack that would free a large
    share, then any other module outside a stack that would free at least 1%; within each,
    most bytes freed per unit of recompute (extra_compute: FLOPs, deterministic), the blocks
    torch counts no FLOPs for after them (`rank_key`)."""
    step_ms = rec.forward_total_ms + rec.backward_total_ms
    total = sum(r.saved_bytes for r in rows if r.name == "")
    by_name = {r.name: r for r in rows}
    found: list[tuple[int, CheckpointCandidate]] = []

    def candidate(name: str, type_: str, blocks: tuple[str, ...]) -> CheckpointCandidate | None:
        members = [by_name[b] for b in blocks]
        if any(m.calls != 1 for m in members):
            return None
        saved = set().union(
            *(s for owner, s in rec.own_saved.items() if any(_inside(owner, b) for b in blocks))
        )
        saving = predicted_saving(rec, blocks)
        if not saved or saving <= 0:
            return None
        recompute = sum(m.forward_ms for m in members)
        flops = sum(rec.forward_flops.get(b, 0) for b in blocks)
        if flops > 0 and rec.step_flops > 0:
            extra, cost_from = flops / rec.step_flops, "flops"
        else:  # no matmul, convolution... torch counts: the measured time's share
            extra, cost_from = (recompute / step_ms if step_ms > 0 else 0.0), "ms"
        return CheckpointCandidate(
            name=name,
            type=type_,
            saved_bytes=sum(rec.sizes[s] for s in saved),
            predicted_saving_bytes=saving,
            recompute_ms=recompute,
            extra_compute=extra,
            blocks=blocks if len(blocks) > 1 else (),
            recompute_flops=flops,
            cost_from=cost_from,
        )

    layered = stacks(model)
    for name, blocks in layered.items():
        c = candidate(name, by_name[blocks[0]].type, blocks)
        if c is not None:
            found.append((0, c))
    in_stack = [b for blocks in layered.values() for b in blocks]
    for row in rows:
        if not row.name or any(_inside(row.name, b) for b in in_stack):
            continue
        c = candidate(row.name, row.type, (row.name,))
        if c is not None and c.predicted_saving_bytes >= SMALL_SHARE * total:
            tier = 1 if c.predicted_saving_bytes >= BIG_SHARE * total else 2
            found.append((tier, c))
    found.sort(key=lambda tc: rank_key(*tc))
    return [c for _, c in found]


def rank_key(tier: int, c: CheckpointCandidate) -> tuple:
    """Where a candidate ranks: by tier; in a tier, the blocks torch counts FLOPs for by
    bytes freed per FLOP-share, then the blocks it counts none for (pooling, embeddings,
    LSTMs: `*`) by bytes freed alone — their measured time moves with the machine's load and
    would make the advice change from run to run; ties by name."""
    if c.cost_from == "flops":
        return (tier, 0, -c.predicted_saving_bytes / max(c.extra_compute, 1e-9), c.name)
    return (tier, 1, -c.predicted_saving_bytes, c.name)


def _overlap(a: CheckpointCandidate, b: CheckpointCandidate) -> bool:
    return any(_inside(x, y) or _inside(y, x) for x in a.modules for y in b.modules)


def choose(ranked: Sequence[CheckpointCandidate], top: int) -> list[CheckpointCandidate]:
    """The best `top` blocks of which none contains another."""
    chosen: list[CheckpointCandidate] = []
    for c in ranked:
        if len(chosen) == top:
            break
        if not any(_overlap(c, o) for o in chosen):
            chosen.append(c)
    return chosen

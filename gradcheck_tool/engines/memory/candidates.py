"""Which blocks to checkpoint, and what checkpointing them would free.

Note [predicted saving of checkpointing]
    Non-reentrant `torch.utils.checkpoint` keeps a block's inputs and drops everything its
    operations saved, recomputing it in the backward. So wrapping the blocks B frees the
    storages saved inside B, except
      - the blocks' inputs (checkpoint keeps them; saved or not, they stay alive), and
      - storages also saved outside B (a block's output saved by the next layer stays);
    and it costs the blocks' inputs that nothing saved before (now kept by checkpoint).
    Computed on the set B at once: adjacent blocks share a storage (one's output is the
    next one's input), which summing per-block predictions would count wrongly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from torch import nn

from ...results import CheckpointCandidate, ModuleMemory
from .measure import StepRecord

BIG_SHARE = 0.10  # a single module saving this share of the step's total is a candidate


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
    freed = within - outside - kept
    newly_kept = kept - within - outside
    return sum(rec.sizes[s] for s in freed) - sum(rec.sizes[s] for s in newly_kept)


def rank_candidates(
    model: nn.Module, rec: StepRecord, rows: Sequence[ModuleMemory]
) -> list[CheckpointCandidate]:
    """Blocks worth checkpointing: the repeated blocks (siblings of one type with submodules:
    the layers of a stack) first, then single modules that would free a large share, then
    any module that would free something; within each, most bytes freed per millisecond of
    recompute first."""
    step_ms = rec.forward_total_ms + rec.backward_total_ms
    total = sum(r.saved_bytes for r in rows if r.name == "")
    named = dict(model.named_modules())
    siblings = Counter((n.rpartition(".")[0], type(m)) for n, m in named.items() if n)
    found: list[tuple[int, CheckpointCandidate]] = []
    for row in rows:
        if not row.name or row.calls != 1 or row.saved_bytes == 0:
            continue
        module = named[row.name]
        saving = predicted_saving(rec, [row.name])
        if saving <= 0:
            continue
        repeated = (
            siblings[(row.name.rpartition(".")[0], type(module))] > 1
            and next(module.children(), None) is not None
        )
        tier = 0 if repeated else 1 if saving >= BIG_SHARE * total else 2
        found.append(
            (
                tier,
                CheckpointCandidate(
                    name=row.name,
                    type=row.type,
                    saved_bytes=row.saved_bytes,
                    predicted_saving_bytes=saving,
                    recompute_ms=row.forward_ms,
                    extra_compute=row.forward_ms / step_ms if step_ms > 0 else 0.0,
                ),
            )
        )
    found.sort(
        key=lambda tc: (tc[0], -tc[1].predicted_saving_bytes / max(tc[1].recompute_ms, 1e-3))
    )
    return [c for _, c in found]


def choose(ranked: Sequence[CheckpointCandidate], top: int) -> list[CheckpointCandidate]:
    """The best `top` blocks of which none contains another."""
    chosen: list[CheckpointCandidate] = []
    for c in ranked:
        if len(chosen) == top:
            break
        if not any(_inside(c.name, o.name) or _inside(o.name, c.name) for o in chosen):
            chosen.append(c)
    return chosen

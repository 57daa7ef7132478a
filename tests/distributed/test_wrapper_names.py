"""Names without wrappers' segments, in this process: a checkpoint wrapper leaves no
`_checkpoint_wrapped_module.` in the rows (DDP's `module.` and FSDP1's segments: the
2-process job), while a user's own submodule called `module` keeps its name."""

from __future__ import annotations

import torch
from torch import nn

from gradcheck_tool import Monitor
from gradcheck_tool.engines.flow.distributed import display_names, model_type_name, unwrapped
from gradcheck_tool.engines.flow.model_map import ModelMap


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(4, 4)  # the user's own attribute called "module"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.module(x))


def checkpointed() -> nn.Module:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    torch.manual_seed(0)
    return nn.Sequential(checkpoint_wrapper(Block()), nn.Linear(4, 2))


def test_wrapper_segments_are_left_out_and_user_names_kept() -> None:
    model = checkpointed()
    names = set(display_names(model).values())
    assert {"0", "0.module", "1"} <= names
    assert not any("_checkpoint_wrapped_module" in n for n in names)
    mm = ModelMap(model)
    assert mm.param_names == ["0.module.weight", "0.module.bias", "1.weight", "1.bias"]
    assert mm.type_names[id(model[0])] == "CheckpointWrapper"
    assert unwrapped(model[0]) is model[0]._checkpoint_wrapped_module
    assert model_type_name(model[0]) == "Block"


def rows(model: nn.Module) -> list[tuple[str, str, float | None]]:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    with Monitor(model) as mon:
        model(x).square().mean().backward()
    return [(r["key"], r["type"], r["grad_norm"]) for r in mon.report()["layers"]]


def test_a_wrapped_model_reports_as_the_model() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(Block(), nn.Linear(4, 2))
    assert [k for k, _, _ in rows(plain)] == ["0.module", "0:relu", "1"]
    got = rows(checkpointed())
    assert [(k, g) for k, _, g in got] == [(k, g) for k, _, g in rows(plain)]

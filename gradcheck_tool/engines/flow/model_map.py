"""The model, statically: names, the layers that own parameters, which modules need the
activation mode, and where and in what dtype the model lives. Computed once per model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .activations import ActivationSpec, activation_for_module
from .distributed import display_names, original_type, whole_shapes, wrapped_attribute
from .samples import ROOT

# Layers whose parameters index channels in dim 1 of the activations after them (conv maps);
# after any other layer a unit is a feature in the last dim (Linear, LayerNorm, Embedding).
CHANNEL_FIRST: tuple[type, ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
)


@dataclass
class Layer:
    """A module that owns parameters (each parameter belongs to the first module naming it)."""

    name: str
    module: nn.Module
    params: list[tuple[str, nn.Parameter]]
    index: int
    param_index: list[int] = field(default_factory=list)  # positions in ModelMap.params
    # param index -> whole shape, where a parameter is a flat piece of it (FSDP1)
    whole_shapes: dict[int, torch.Size] = field(default_factory=dict)

    @property
    def sparse_by_design(self) -> bool:
        # an embedding's gradient only touches the rows the batch used
        return isinstance(self.module, (nn.Embedding, nn.EmbeddingBag))

    @property
    def matrix_like(self) -> bool:
        return any(
            len(self.whole_shapes.get(i, p.shape)) >= 2
            for i, (_, p) in zip(self.param_index, self.params)
        )


def may_call_activations(module: nn.Module) -> bool:
    """Whether functional activations called while this module's own forward runs need
    watching: yes for the user's modules and torch's composite ones (TransformerEncoderLayer
    calls F.relu), no for torch's leaf modules (nn.Linear; nn.ReLU is measured by its hook)
    and pure containers, during which the TorchFunctionMode is suspended: it costs a Python
    call per torch function."""
    if not original_type(module).__module__.startswith("torch."):
        return True
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    return next(module.children(), None) is not None


class ModelMap:
    """Names, layers, parameters and activation specs of one model, computed once. Names
    leave out the segments of wrappers (DDP's `module.`, FSDP1's `_fsdp_wrapped_module.`,
    checkpoint and compile wrappers) and type names FSDP2's made-up `FSDP<Name>` classes, so
    that a wrapped model reads as the model itself."""

    def __init__(self, model: nn.Module) -> None:
        self.root = model
        self.names: dict[int, str] = {}
        self.depth: dict[int, int] = {}
        self.specs: dict[int, ActivationSpec | None] = {}
        self.layers: list[Layer] = []
        self.layer_of: dict[int, Layer] = {}
        self.params: list[nn.Parameter] = []
        self.param_names: list[str] = []
        self.param_layer: list[int] = []
        self.type_names: dict[int, str] = {}
        # wrappers (DDP, FSDP1, compile, checkpoint): their calls take no place in the
        # forward order, so that a wrapped model's rows are numbered as the model's own
        self.wrappers: set[int] = set()
        seen: set[int] = set()
        shown = display_names(model)
        for _, module in model.named_modules():
            name = shown.get(id(module), "")
            self.names[id(module)] = name
            self.type_names[id(module)] = original_type(module).__name__
            if wrapped_attribute(module) is not None:
                self.wrappers.add(id(module))
            self.depth[id(module)] = name.count(".") + 1 if name else 0
            self.specs[id(module)] = activation_for_module(module)
            own = []
            for pname, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue  # tied weights: reported once, with their first owner
                seen.add(id(p))
                own.append((f"{name}.{pname}" if name else pname, p))
            if own:
                layer = Layer(name, module, own, len(self.layers))
                self.layers.append(layer)
                self.layer_of[id(module)] = layer
                for qualname, p in own:
                    layer.param_index.append(len(self.params))
                    self.params.append(p)
                    self.param_names.append(qualname)
                    self.param_layer.append(layer.index)
        # whole shapes: a sharded parameter's, not this rank's piece's (read when needed: a
        # lazy module's parameters have no shape before the first forward)
        self.whole_shapes = whole_shapes(model, self.params)
        for layer in self.layers:
            layer.whole_shapes = self.whole_shapes
        self.modules = [m for _, m in model.named_modules()]
        self.runs_user_code = {id(m): may_call_activations(m) for m in self.modules}
        # torch's own leaf modules never turn a finite gradient into NaN/Inf
        self.trusted_backward = {
            id(m): original_type(m).__module__.startswith("torch.")
            and next(m.children(), None) is None
            for m in self.modules
        }
        # what the hooks need per module, in one lookup: name, depth, activation spec, layer
        self.info: dict[int, tuple[str, int, ActivationSpec | None, Layer | None]] = {
            id(m): (
                self.names[id(m)],
                self.depth[id(m)],
                self.specs[id(m)],
                self.layer_of.get(id(m)),
            )
            for m in self.modules
        }

    def param_numel(self, i: int) -> int:
        """Parameter i's number of elements, the whole tensor's where this rank holds a piece."""
        shape = self.whole_shapes.get(i)
        return shape.numel() if shape is not None else self.params[i].numel()

    def name(self, module: nn.Module) -> str:
        return self.names.get(id(module), type(module).__name__)


def comparable_keys(mm: ModelMap) -> set[str]:
    """Rows whose RMS gradients are compared for vanishing/exploding: weight matrices, not
    embeddings (sparse by design) nor per-feature scales (norm layers, bias-only layers)."""
    return {
        layer.name or ROOT
        for layer in mm.layers
        if layer.matrix_like and not layer.sparse_by_design
    }


def first_floating(model: nn.Module) -> torch.Tensor | None:
    """The model's first floating parameter or buffer: where it lives and in what dtype."""
    return next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)


def model_dtype_device(model: nn.Module) -> tuple[str, torch.device]:
    t = first_floating(model)
    if t is not None:
        return str(t.dtype).replace("torch.", ""), t.device
    return str(torch.get_default_dtype()).replace("torch.", ""), torch.device("cpu")

"""_tree: one walker over nested inputs and outputs, for every container user code returns."""

from __future__ import annotations

import collections
import dataclasses

import torch

from gradcheck_tool._tree import (
    first_tensor,
    floating_leaves,
    leaves_with_paths,
    map_tensors,
    replace_at,
)

Pair = collections.namedtuple("Pair", "left right")


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    hidden: tuple


class Record(collections.abc.Mapping):
    """A Mapping pytree does not know (like a tokenizer's BatchEncoding)."""

    def __init__(self, items):
        self._items = dict(items)

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)


class Legacy:
    """An object that only offers to_tuple(), as old Hugging Face outputs did."""

    def __init__(self, *values):
        self.values = values

    def to_tuple(self):
        return self.values


def test_paths_read_as_python_indexing_in_insertion_order():
    x, y, z = torch.ones(1), torch.zeros(2), torch.arange(3)
    value = {"b": [x, (y, 3)], "a": Pair(z, None)}
    assert list(leaves_with_paths(value, "in")) == [
        ("in['b'][0]", x),
        ("in['b'][1][0]", y),
        ("in['b'][1][1]", 3),
        ("in['a'].left", z),
        ("in['a'].right", None),
    ]


def test_containers_pytree_does_not_know_are_walked_too():
    t = torch.ones(2)
    out = Output(logits=t, hidden=(t * 2,))
    assert [p for p, _ in leaves_with_paths(out, "output")] == [
        "output.logits",
        "output.hidden[0]",
    ]
    assert [p for p, _ in leaves_with_paths(Record({"k": t}), "r")] == ["r['k']"]
    assert [p for p, _ in leaves_with_paths(Legacy(t, t), "o")] == ["o[0]", "o[1]"]


def test_floating_leaves_skip_integers_and_keep_complex():
    value = (torch.ones(2), torch.arange(2), torch.ones(2, dtype=torch.complex64), "text")
    assert [p for p, _ in floating_leaves(value)] == ["output[0]", "output[2]"]


def test_replace_at_rebuilds_each_container_type_and_leaves_the_rest_alone():
    x, y = torch.ones(1), torch.zeros(1)
    value = {"pair": Pair(x, [x, y]), "keep": (y,)}
    new = replace_at(value, {"v['pair'].right[1]": "swapped"}, "v")
    assert isinstance(new["pair"], Pair) and new["pair"].right == [x, "swapped"]
    assert new["keep"] is value["keep"]  # untouched branches are not copied
    assert value["pair"].right[1] is y  # the original is not modified


def test_map_tensors_reaches_dataclasses_and_unknown_mappings():
    t = torch.ones(2)
    out = map_tensors(lambda a: a * 3, {"o": Output(t, (t,)), "r": Record({"k": t})})
    assert torch.equal(out["o"].logits, t * 3) and torch.equal(out["o"].hidden[0], t * 3)
    assert torch.equal(out["r"]["k"], t * 3) and isinstance(out["r"], (Record, dict))


def test_first_tensor():
    t = torch.ones(1)
    assert first_tensor(([1, "a"], {"x": None, "y": t})) is t
    assert first_tensor({"x": 1}) is None

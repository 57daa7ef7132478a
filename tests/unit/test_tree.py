"""_tree: one walker over nested inputs (writable) and outputs (read-only)."""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch

from gradcheck_tool._tree import (
    first_tensor,
    floating_leaves,
    leaves_with_paths,
    map_tensors,
    replace_at,
)

Pair = collections.namedtuple("Pair", "left right")


class Seq(list):
    """A list subclass, as user code sometimes returns or passes."""


class Out(tuple):
    pass


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    hidden: tuple
    extra: torch.Tensor = dataclasses.field(init=False)

    def __post_init__(self):
        self.extra = self.logits * 2


class Record(collections.abc.Mapping):
    """A Mapping that is not a dict (like a tokenizer's BatchEncoding)."""

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
    assert list(leaves_with_paths(value, "in", writable=True)) == [
        ("in['b'][0]", x),
        ("in['b'][1][0]", y),
        ("in['b'][1][1]", 3),
        ("in['a'][0]", z),
        ("in['a'][1]", None),
    ]


def test_list_and_tuple_subclasses_are_walked_and_rebuilt_with_their_type():
    x, y = torch.ones(1), torch.zeros(1)
    assert [p for p, _ in leaves_with_paths(Seq([x, y]), "xs", writable=True)] == [
        "xs[0]",
        "xs[1]",
    ]
    assert [p for p, _ in floating_leaves(Out((x, y)))] == ["output[0]", "output[1]"]
    new = replace_at(Seq([x, y]), {"xs[1]": "swapped"}, "xs")
    assert type(new) is Seq and new == [x, "swapped"]


def test_outputs_pytree_does_not_know_are_walked_read_only():
    t = torch.ones(2)
    out = Output(logits=t, hidden=(t * 2,))
    # every field, the one __post_init__ sets included
    assert [p for p, _ in leaves_with_paths(out, "output")] == [
        "output.logits",
        "output.hidden[0]",
        "output.extra",
    ]
    assert [p for p, _ in leaves_with_paths(Record({"k": t}), "r")] == ["r['k']"]
    assert [p for p, _ in leaves_with_paths(Legacy(t, t), "o")] == ["o[0]", "o[1]"]


def test_inputs_walk_only_what_can_be_rebuilt():
    t = torch.ones(2)
    for opaque in (Output(t, (t,)), Record({"k": t}), Legacy(t)):
        assert [leaf for _, leaf in leaves_with_paths(opaque, "x", writable=True)] == [opaque]
        assert map_tensors(lambda a: a * 3, opaque) is opaque  # passed on as it is


def test_floating_leaves_skip_integers_and_keep_complex():
    value = (torch.ones(2), torch.arange(2), torch.ones(2, dtype=torch.complex64), "text")
    assert [p for p, _ in floating_leaves(value)] == ["output[0]", "output[2]"]


def test_replace_at_rebuilds_each_container_type_and_leaves_the_rest_alone():
    x, y = torch.ones(1), torch.zeros(1)
    value = {"pair": Pair(x, [x, y]), "keep": (y,)}
    new = replace_at(value, {"v['pair'][1][1]": "swapped"}, "v")
    assert isinstance(new["pair"], Pair) and new["pair"].right == [x, "swapped"]
    assert new["keep"] is value["keep"]  # untouched branches are not copied
    assert value["pair"].right[1] is y  # the original is not modified


@pytest.mark.parametrize(
    "container", [collections.OrderedDict, lambda pairs: collections.defaultdict(int, pairs)]
)
def test_dict_subclasses_are_rebuilt(container):
    t = torch.ones(2)
    out = map_tensors(lambda a: a * 3, container([("k", t)]))
    assert torch.equal(out["k"], t * 3)


def test_first_tensor():
    t = torch.ones(1)
    assert first_tensor(([1, "a"], {"x": None, "y": t})) is t
    assert first_tensor({"x": 1}) is None

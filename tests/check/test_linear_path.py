"""The nn.Linear path of the engine: rows of a Linear's weight and bias evaluated with a
forward hook instead of perturbed copies. Reference: the copies path (vmap over perturbed
weights, independent code) and gradcheck-style seeded bugs; every fallback case too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradcheck_tool import check
from gradcheck_tool.engines.check import CheckOptions
from gradcheck_tool.engines.check.evaluate import Evaluator
from gradcheck_tool.engines.check.rows import Rows
from gradcheck_tool.prepare import Problem


def _evaluator(model: nn.Module, *args: torch.Tensor) -> tuple[Problem, Evaluator]:
    problem = Problem(model, args, {}, loss_fn=None, dtype=torch.float64, seed=0)
    evaluator = Evaluator(problem, CheckOptions())
    with torch.no_grad():
        evaluator.f0 = problem.terms(problem.values)
    return problem, evaluator


def _both_ways(evaluator: Evaluator, name: str, coords: torch.Tensor, h: float = 1e-6):
    """(hooked rows, copied rows) for the coordinates of one tensor."""
    c = next(c for c in evaluator.problem.checkables if c.name == name)
    with torch.no_grad():
        assert evaluator.can_batch(c)
        hooked = evaluator._linear_rows(Rows(c, coords, h, None))
        copied = evaluator._batched(Rows(c, coords, h, None))
    return hooked, copied


class Recurrent(nn.Module):
    """One Linear applied three times (its later inputs depend on its earlier outputs), a
    3-D input, a Linear called with a keyword argument, and a bias-free Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cell = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for _ in range(3):
            h = torch.tanh(self.cell(h))
        return self.head(input=h)


def test_hooked_rows_equal_copied_rows_for_every_coordinate():
    torch.manual_seed(1)
    problem, ev = _evaluator(Recurrent(), torch.randn(2, 4, 6))
    for name in ("cell.weight", "cell.bias", "head.weight"):
        numel = dict(problem.module.named_parameters())[name].numel()
        hooked, copied = _both_ways(ev, name, torch.arange(numel))
        assert ev._linear[name] is not None, f"{name}: the Linear path was not taken"
        # each row: the loss term, then the scale of what moved (losses.py)
        assert hooked is not None and hooked.shape == copied.shape == (2 * numel, 2)
        # same function evaluated two ways: only rounding may differ
        assert torch.allclose(hooked[:, :1], copied[:, :1], rtol=0, atol=1e-13), name
        assert torch.allclose(hooked[:, 1:], copied[:, 1:], rtol=1e-9, atol=0), name
        # and the difference quotient is the derivative (not f0, not a stale row)
        numeric = (hooked[:numel] - hooked[numel:]).squeeze(1) / 2e-6
        assert numeric.abs().max() > 1e-3


def test_direction_rows_come_from_copies_and_match():
    torch.manual_seed(2)
    problem, ev = _evaluator(
        nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)), torch.randn(3, 5)
    )
    c = next(c for c in problem.checkables if c.name == "0.weight")
    d = torch.randn_like(c.value)
    with torch.no_grad():
        assert ev.can_batch(c)
        rows = ev._linear_rows(Rows(c, torch.tensor([0, 4, 9]), 1e-6, d))
        plus = problem.terms({**ev.base, c.name: c.value + 1e-6 * d})
        minus = problem.terms({**ev.base, c.name: c.value - 1e-6 * d})
        copied = ev._batched(Rows(c, torch.tensor([0, 4, 9]), 1e-6, None))
    assert rows.shape == (8, 2)  # the loss term, then the scale of what moved
    assert torch.allclose(rows[:6, :1], copied[:, :1], rtol=0, atol=1e-13)
    assert torch.allclose(rows[6], plus, rtol=0, atol=1e-13)
    assert torch.allclose(rows[7], minus, rtol=0, atol=1e-13)


class TiedDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10)
        self.out.weight = self.embed.weight  # tied: one tensor, two uses

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(ids)))


class DirectUse(nn.Module):
    """The Linear's weight is also used outside the layer, where no hook can see it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x)) + F.linear(x, self.fc.weight) ** 2


class Doubled(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, 2 * self.weight, self.bias)


class Bypass(nn.Module):
    """Calls the layer's forward directly: hooks never run."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.fc.forward(x))


def _fallback_case(model: nn.Module, name: str, *args: torch.Tensor) -> None:
    problem, ev = _evaluator(model, *args)
    numel = dict(problem.module.named_parameters())[name].numel()
    hooked, copied = _both_ways(ev, name, torch.arange(numel))
    assert hooked is None and ev._linear[name] is None
    assert copied is not None and copied.shape == (2 * numel, 2)


def test_tied_weight_uses_copies():
    _fallback_case(TiedDecoder(), "embed.weight", torch.tensor([[1, 2, 3]]))


def test_weight_used_outside_the_layer_uses_copies():
    _fallback_case(DirectUse(), "fc.weight", torch.randn(2, 4))


def test_subclass_with_its_own_forward_uses_copies():
    _fallback_case(nn.Sequential(Doubled(4, 3), nn.Tanh()), "0.weight", torch.randn(2, 4))


def test_layer_called_around_its_hooks_uses_copies():
    _fallback_case(Bypass(), "fc.weight", torch.randn(2, 4))


def test_layer_with_user_hook_uses_copies():
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    model[0].register_forward_hook(lambda _m, _i, out: out * 3)
    _fallback_case(model, "0.weight", torch.randn(2, 4))


def test_fallback_cases_still_get_right_verdicts():
    for model, args in (
        (TiedDecoder(), (torch.tensor([[1, 2, 3]]),)),
        (DirectUse(), (torch.randn(2, 4),)),
        (Bypass(), (torch.randn(2, 4),)),
    ):
        report = check(model, args, full=True)
        assert report.passed, [(t.name, t.rel_error) for t in report.results]


class _WrongTanh(torch.autograd.Function):
    """tanh whose backward forgets the (1 − y²) factor on every other unit (vmap-able, so
    the whole check runs batched)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        local = 1 - y * y
        local[..., ::2] = 1.0
        return g * local


class BuggyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_WrongTanh.apply(self.a(x)))


def test_a_wrong_backward_behind_a_linear_is_caught_on_the_linear_path():
    report = check(BuggyMLP(), (torch.randn(4, 6),), full=True)
    assert report.evaluation == "batched"
    verdict = {t.name: t.passed for t in report.results}
    # the gradient of a.* flows through the wrong backward; b.* doesn't
    assert verdict == {
        "a.weight": False,
        "a.bias": False,
        "b.weight": True,
        "b.bias": True,
        "input:x": False,
    }
    # ... and the rows behind that verdict came through the hook, equal to the copies'
    problem, ev = _evaluator(BuggyMLP(), torch.randn(4, 6))
    hooked, copied = _both_ways(ev, "a.weight", torch.arange(48))
    assert ev._linear["a.weight"] is not None
    assert torch.allclose(hooked[:, :1], copied[:, :1], rtol=0, atol=1e-13)


# --- the reused buffer of perturbed copies ---------------------------------------------


def test_reused_rows_equal_fresh_rows_chunk_after_chunk():
    from gradcheck_tool.checkables import Checkable

    torch.manual_seed(4)
    value = torch.randn(3, 5, dtype=torch.float64)
    c = Checkable("w", "parameter", ("param", "w"), value)
    coords = torch.tensor([0, 7, 7, 14, 3])
    d = torch.randn(3, 5, dtype=torch.float64)
    rows = Rows(c, coords, 0.5, d)
    expected = []
    for r in range(rows.count):
        flat = value.reshape(-1).clone()
        if r < 2 * rows.m:
            flat[coords[r % rows.m]] += 0.5 if r < rows.m else -0.5
        else:
            flat += (0.5 if r == 2 * rows.m else -0.5) * d.reshape(-1)
        expected.append(flat.view(3, 5))
    for chunk in (4, 3, 1, 12):  # shrinking and growing, direction rows inside a chunk
        for start in range(0, rows.count, chunk):
            stop = min(start + chunk, rows.count)
            got = rows.materialize(start, stop)
            assert torch.equal(got, torch.stack(expected[start:stop])), (chunk, start)


class Normalizes(nn.Module):
    """Scales its own weight to max |w| = 1 during forward: idempotent at θ (so f(θ) is
    reproducible), but a perturbed copy comes back changed in every entry."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 12).reshape(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.w.div_(self.w.abs().amax())
        return torch.tanh(x @ self.w.T).pow(2)


@pytest.mark.parametrize(
    "coords",
    [
        [0, 11, 5, 0, 11],  # the first chunk perturbs the max entry: every entry moves
        [5, 6, 7, 0, 11],  # only a later chunk does
    ],
)
def test_a_target_that_writes_into_its_parameter_gets_fresh_copies(monkeypatch, coords):
    import gradcheck_tool.engines.check.evaluate as engine

    monkeypatch.setattr(engine, "MAX_BATCH", 3)  # several chunks per tensor
    problem, ev = _evaluator(Normalizes(), torch.randn(2, 4))
    c = problem.checkables[0]
    coords = torch.tensor(coords)
    with torch.no_grad():
        assert ev.can_batch(c)
        rows = Rows(c, coords, 1e-2, None)
        batched = ev._batched(rows)
        serial = ev._serial(Rows(c, coords, 1e-2, None))
    assert not rows.reuse  # the buffer's version counter showed the writes
    assert torch.allclose(batched, serial, rtol=0, atol=1e-13)
    # and the same rows with the buffer reused regardless would have been wrong
    with torch.no_grad():
        stale = Rows(c, coords, 1e-2, None)
        parts = []
        for start in range(0, stale.count, 3):
            parts.append(ev._vmapped(c, stale.materialize(start, min(start + 3, stale.count))))
    assert not torch.allclose(torch.cat(parts), serial, rtol=0, atol=1e-9)


# --- float32, max_norm, out of memory, a NaN probe: each failed before its fix -------------


class SecondUseLost(nn.Module):
    """fc.weight is also used outside the layer, and that use loses its gradient."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x)) + (self.fc.weight.detach() ** 2).sum(1)


def test_a_missed_second_use_fails_in_float32_too():
    # float32 rounding (~1e-4 of the loss) hid the missed use from the hook's probe
    torch.manual_seed(1)
    x = torch.randn(8, 64)
    for dtype in ("float32", "float64"):
        report = check(SecondUseLost(), (x,), dtype=dtype)
        weight = next(r for r in report.results if r.name == "fc.weight")
        assert not weight.passed, dtype


def test_the_hook_is_not_used_in_float32():
    problem = Problem(
        nn.Sequential(nn.Linear(4, 3), nn.Tanh()),
        (torch.randn(2, 4),),
        {},
        loss_fn=None,
        dtype=torch.float32,
        seed=0,
    )
    ev = Evaluator(problem, CheckOptions(eps=1e-3))
    with torch.no_grad():
        ev.f0 = problem.terms(problem.values)
        c = problem.checkables[0]
        assert ev.can_batch(c)
        assert ev._linear_rows(Rows(c, torch.arange(12), 1e-3, None)) is None


class MaxNormEmbedding(nn.Module):
    """nn.Embedding(max_norm=…) renormalizes the rows it looks up, in place, in forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(6, 4, max_norm=1.0)
        with torch.no_grad():  # every row just under the limit: +h pushes it over
            self.emb.weight.mul_(0.999 / self.emb.weight.norm(dim=1, keepdim=True))
        self.fc = nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(self.emb(ids)))


def test_embedding_with_max_norm_gets_fresh_copies(monkeypatch):
    import gradcheck_tool.engines.check.evaluate as engine

    monkeypatch.setattr(engine, "MAX_BATCH", 4)
    problem, ev = _evaluator(MaxNormEmbedding(), torch.tensor([[0, 1, 2, 3, 4, 5]]))
    c = next(c for c in problem.checkables if c.name == "emb.weight")
    with torch.no_grad():
        assert ev.can_batch(c)
        batched = ev._batched(Rows(c, torch.arange(24), 1e-2, None))
        serial = ev._serial(Rows(c, torch.arange(24), 1e-2, None))
    assert torch.allclose(batched, serial, rtol=0, atol=1e-13)


class NormalizesThenOOM(Normalizes):
    """A batch 'runs out of GPU memory' after the forward wrote into its weight."""

    fail_next = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if type(self).fail_next:
            type(self).fail_next = False
            raise torch.cuda.OutOfMemoryError("simulated")
        return out


def test_out_of_memory_halves_the_chunk_and_refills_the_copies(monkeypatch):
    import gradcheck_tool.engines.check.evaluate as engine

    monkeypatch.setattr(engine, "MAX_BATCH", 4)
    problem, ev = _evaluator(NormalizesThenOOM(), torch.randn(2, 4))
    c = problem.checkables[0]
    coords = torch.tensor([11, 5, 6, 7])  # row 0 = +h at the max entry: every entry rescaled
    sizes = []
    vmapped = ev._vmapped
    monkeypatch.setattr(ev, "_vmapped", lambda c, part: sizes.append(len(part)) or vmapped(c, part))
    with torch.no_grad():
        assert ev.can_batch(c)
        serial = ev._serial(Rows(c, coords, 1e-2, None))
        sizes.clear()
        NormalizesThenOOM.fail_next = True
        batched = ev._batched(Rows(c, coords, 1e-2, None))
    assert ev.fallback_reason is None  # the retry worked; batching stays on
    assert sizes[:2] == [4, 2]  # the failed chunk of 4, then halves
    assert torch.allclose(batched, serial, rtol=0, atol=1e-13)


def test_a_direction_alone_leaves_the_hook_in_use():
    torch.manual_seed(5)
    problem, ev = _evaluator(nn.Sequential(nn.Linear(5, 7), nn.Tanh()), torch.randn(3, 5))
    c = next(c for c in problem.checkables if c.name == "0.weight")
    d = torch.randn_like(c.value)
    with torch.no_grad():
        assert ev.can_batch(c)
        assert ev._linear_rows(Rows(c, torch.tensor([1, 2]), 1e-6, None)) is not None
        at = ev.evaluate(c, torch.tensor([], dtype=torch.long), 1e-6, d)
        plus = problem.terms({**ev.base, c.name: c.value + 1e-6 * d})
    assert torch.allclose(at.direction_plus, plus, rtol=0, atol=1e-13)
    assert ev._linear[c.name] is not None


class LogOfLinear(nn.Module):
    """Finite at θ, NaN a large step away: the hook's probe can't tell, so copies are used."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.fill_(0.01)
            self.fc.bias.fill_(0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.fc(x))


def test_a_probe_that_steps_into_nan_does_not_vouch_for_the_hook():
    problem, ev = _evaluator(LogOfLinear(), torch.ones(1, 3))
    c = next(c for c in problem.checkables if c.name == "fc.weight")
    with torch.no_grad():
        assert ev.can_batch(c)
        assert ev._linear_rows(Rows(c, torch.arange(6), 1e-6, None)) is None

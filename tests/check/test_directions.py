"""Note [directions]: a larger model's tensors are checked along random directions first, a
fixed number of forwards per tensor whatever its size; coordinates are sampled only for a
tensor the directions don't pass. Bugs caught and localised on one side, correct models
passing on the other (tests/check/test_verdicts.py has the kinks of zero-initialised
residual blocks)."""

from __future__ import annotations

import torch
from conftest import assert_all_pass, failing, message_of, one_entry_wrong
from torch import nn

from gradcheck_tool import check
from gradcheck_tool.options import DEFAULT_DIRECTIONS


class ScaledBackward(torch.autograd.Function):
    """Identity forward, 0.9× backward: a seeded bug vmap can run."""

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return 0.9 * grad

    @staticmethod
    def vmap(info, in_dims, x):
        return ScaledBackward.apply(x), in_dims[0]


class BuggyTanh(nn.Module):
    def forward(self, x):
        return ScaledBackward.apply(torch.tanh(x))


def mlp(width: int, middle: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), middle, nn.Linear(width, 10)
    )


def inputs() -> torch.Tensor:
    return torch.randn(4, 64, generator=torch.Generator().manual_seed(0))


def test_a_larger_model_passes_along_directions_and_says_so():
    report = check(mlp(256, nn.Tanh()), inputs())
    assert_all_pass(report)
    for r in report.results:
        assert (r.checked, r.directions) == (0, DEFAULT_DIRECTIONS), r.name
        assert r.direction_error is not None and r.direction_error <= 1e-5
    row = report.to_dict()["results"][0]
    assert (row["checked"], row["directions"]) == (0, DEFAULT_DIRECTIONS)


def test_the_forwards_per_tensor_do_not_grow_with_its_size():
    calls = []

    def counted(width: int) -> int:
        model = mlp(width, nn.Tanh())
        model.register_forward_pre_hook(lambda *_: calls.append(1))
        calls.clear()
        assert check(model, inputs(), batched=False).passed
        return len(calls)

    small, large = counted(200), counted(400)  # 54k and 187k parameters
    assert small == large
    tensors = 7  # three weights, three biases, the input
    assert large <= 2 * DEFAULT_DIRECTIONS * tensors + 6  # + f(θ), the gradients, probes


def test_a_seeded_bug_fails_the_tensors_upstream_of_it_and_only_those():
    report = check(mlp(256, BuggyTanh()), inputs())
    upstream = {"0.weight", "0.bias", "2.weight", "2.bias", "input:input"}
    assert failing(report) == upstream
    for name in upstream:
        result = report.result(name)
        assert result.directions == DEFAULT_DIRECTIONS and result.checked >= 1  # localised
        assert "0.9" in message_of(result)  # the coordinates name the kind of mistake
    assert report.result("4.weight").checked == 0  # downstream: the directions pass it


def test_one_wrong_entry_among_a_hundred_thousand_is_seen():
    x = torch.randn(300, 400, generator=torch.Generator().manual_seed(4))
    x.view(-1)[54_321] = 3.0  # an entry whose gradient matters
    result = check(one_entry_wrong(54_321), x).result("x")
    assert result.status == "fail" and result.directions == DEFAULT_DIRECTIONS
    assert result.direction_error is not None and result.direction_error > 1e-5


class ScaledBlock(nn.Module):
    """A residual block behind ConvNeXt's layer scale (initialised at 1e-6 there, 1e-9
    here): the gradients of its layer are too small for the loss's rounding at a step of
    1e-6."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.gamma = nn.Parameter(torch.full((width,), 1e-9))

    def forward(self, x):
        return x + self.gamma * torch.tanh(self.fc(x))


def scaled(middle: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), middle, ScaledBlock(256), nn.Linear(256, 10))


def test_gradients_shrunk_by_a_layer_scale_are_resolved_along_directions_at_a_larger_step():
    report = check(scaled(nn.Tanh()), inputs())
    assert report.passed, [(r.name, r.status, r.note) for r in report.results]
    for name in ("2.fc.weight", "2.fc.bias"):
        result = report.result(name)
        assert result.checked == 0  # the directions resolved them, no coordinate needed
        assert result.judged_eps is not None or result.verified_to is not None


def test_a_bug_behind_a_layer_scale_is_still_caught():
    report = check(scaled(BuggyTanh()), inputs())
    assert {"0.weight", "0.bias", "input:input"} <= failing(report)
    assert not {"2.fc.weight", "2.gamma", "3.weight"} & failing(report)


def test_a_direction_that_crosses_a_kink_does_not_excuse_a_wrong_gradient():
    """Review finding: a direction crosses every kink of the tensor at once, so an analytic
    value between its one-sided derivatives proves nothing; each such direction is verified
    off the kink, and a 1% wrong backward behind a ReLU unit sitting at 0 fails."""

    class OnePercent(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w):
            return w.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 1.01  # BUG: 1% too large

    class AtTheKink(nn.Module):
        def __init__(self, bug: bool) -> None:
            super().__init__()
            gen = torch.Generator().manual_seed(0)
            self.bug = bug
            self.w1 = nn.Parameter(torch.randn(150, 150, generator=gen) * 0.1)
            self.b1 = nn.Parameter(torch.zeros(150))
            self.w2 = nn.Parameter(torch.randn(150, generator=gen) * 0.1)
            with torch.no_grad():
                self.w1[0] = 0  # unit 0 sits exactly at the ReLU's kink ...
                self.w2[0] = 50.0  # ... and matters

        def forward(self, x):
            w1 = OnePercent.apply(self.w1) if self.bug else self.w1
            return (torch.relu(x @ w1.T + self.b1) * self.w2).sum()

    x = torch.randn(4, 150, generator=torch.Generator().manual_seed(1))
    assert failing(check(AtTheKink(bug=True), x)) == {"w1"}
    assert check(AtTheKink(bug=False), x).passed

"""Scaled dot-product attention with a hand-written backward — and a seeded bug.

    S = (Q·Kᵀ)·s + M,   P = softmax(S),   O = P·V,   s = 1/√d
    ∂L/∂V = Pᵀ·G,   ∂L/∂P = G·Vᵀ,   ∂L/∂S = P ∘ (∂L/∂P − rowsum(∂L/∂P ∘ P))
    ∂L/∂Q = ∂L/∂S·K·s,   ∂L/∂K = (∂L/∂S)ᵀ·Q·s

The additive mask M is a constant: its gradient is not implemented (the backward returns
None), so pyproject.toml leaves it out of the check with `skip = ["mask"]`.

The bug: the gradient of K forgets the scale s (a missing factor, 1/√8 here). Expected
verdict: `k` fails with a "constant factor" hint; `q` and `v` pass; exit 1.
"""

import torch


def _probabilities(q, k, mask):
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + mask, dim=-1)


class FusedAttention(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, mask):
        return _probabilities(q, k, mask) @ v

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad_output):
        q, k, v, mask = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        p = _probabilities(q, k, mask)  # recomputed rather than stored, as FlashAttention does
        grad_v = p.transpose(-2, -1) @ grad_output
        grad_p = grad_output @ v.transpose(-2, -1)
        grad_scores = p * (grad_p - (grad_p * p).sum(dim=-1, keepdim=True))
        grad_q = grad_scores @ k * scale
        grad_k = grad_scores.transpose(-2, -1) @ q  # BUG: the factor `* scale` is missing
        return grad_q, grad_k, grad_v, None


def example_inputs():
    generator = torch.Generator().manual_seed(0)
    batch, length, dim = 2, 5, 8
    q, k, v = (torch.randn(batch, length, dim, generator=generator) for _ in range(3))
    # causal: position i attends to positions ≤ i
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    mask = torch.zeros(length, length).masked_fill(~causal, -1e4)
    return q, k, v, mask

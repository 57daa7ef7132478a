"""A Transformer block whose attention activations dominate its memory.

Sequence 256, d_model 64, 4 heads: the attention probabilities are B·H·S·S = 2·4·256·256
floats (2 MiB), and their softmax output and dropout mask are saved for the backward,
against B·S·d = 2·256·64 floats (128 KiB) for each linear layer's input. Two blocks:
`gradtool memory` suggests checkpointing them, and `--apply-checkpoint` measures it.

    gradtool memory sample_models/attention_block.py
    gradtool memory sample_models/attention_block.py --apply-checkpoint

Expected: the attention rows hold most of the saved bytes; the checkpointed copy saves
what was predicted (within 20%) and passes gradtool check (exit 0).
"""

import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)  # B·H·S·S
        weights = self.dropout(scores.softmax(dim=-1))  # saved for the backward
        return self.out((weights @ v).transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, d_model: int = 64, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AttentionModel(nn.Module):
    def __init__(self, d_model: int = 64, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(depth))
        self.head = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def build_model() -> AttentionModel:
    torch.manual_seed(0)
    return AttentionModel()


def example_inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 256, 64, generator=generator)

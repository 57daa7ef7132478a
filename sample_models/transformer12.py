"""A 12-layer Transformer encoder (torch.nn) between a token embedding and a classifier head:
the graph of a real-sized stack of layers.

    gradtool graph sample_models/transformer12.py --png transformer12.png
    gradtool memory sample_models/transformer12.py

Expected (graph): one box per encoder layer at the default depth (embed, layers.0 ...
layers.11, head), no cut, every parameter reaches the loss; exit 0.
"""

import torch
from torch import nn

LAYERS = 12


class TextClassifier(nn.Module):
    def __init__(self, vocab: int = 100, d_model: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, 4 * d_model, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(dim=1))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return TextClassifier()


def example_inputs() -> torch.Tensor:
    return torch.randint(0, 100, (4, 32), generator=torch.Generator().manual_seed(1))

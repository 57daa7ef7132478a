"""Hugging Face BERT for sequence classification, tiny config, random weights; its own loss."""

import _lib
import torch

_lib.import_vision()
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402


def build_model():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=99,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    return _lib.seeded(BertForSequenceClassification(cfg).eval())


def example_inputs():
    gen = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(0, 99, (2, 8), generator=gen),
        "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3]),
        "labels": torch.tensor([0, 2]),
    }


def loss_fn(output, **inputs):
    return output.loss

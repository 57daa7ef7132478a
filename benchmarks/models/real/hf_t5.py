"""Hugging Face T5 encoder-decoder, tiny config, random weights; its own loss."""

import _lib
import torch

_lib.import_vision()
from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402


def build_model():
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=99,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    return _lib.seeded(T5ForConditionalGeneration(cfg).eval())


def example_inputs():
    gen = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1, 99, (2, 8), generator=gen),
        "labels": torch.randint(1, 99, (2, 6), generator=gen),
    }


def loss_fn(output, **inputs):
    return output.loss

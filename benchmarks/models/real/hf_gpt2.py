"""Hugging Face GPT-2 language model, tiny config, random weights; its own loss."""

import _lib
import torch

_lib.import_vision()
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402


def build_model():
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=99,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return _lib.seeded(GPT2LMHeadModel(cfg).eval())


def example_inputs():
    ids = torch.randint(0, 99, (2, 8), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


def loss_fn(output, **inputs):
    return output.loss

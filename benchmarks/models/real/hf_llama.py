"""Hugging Face Llama language model, tiny config, random weights; its own loss."""

import _lib
import torch

_lib.import_vision()
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def build_model():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=99,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return _lib.seeded(LlamaForCausalLM(cfg).eval())


def example_inputs():
    ids = torch.randint(0, 99, (2, 8), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


def loss_fn(output, **inputs):
    return output.loss

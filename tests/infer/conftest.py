"""A small random model for engine tests that do not need trained weights."""

from __future__ import annotations

import pytest
import torch

from krmini.model import LlamaModel, ModelConfig


@pytest.fixture(scope="module")
def small_model() -> LlamaModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaModel(ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=48)).eval()

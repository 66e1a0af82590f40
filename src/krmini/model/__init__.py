"""The Llama-style decoder: config, layers, and size/memory accounting."""

from krmini.model.config import ModelConfig
from krmini.model.llama import KVCache, LlamaModel

__all__ = ["KVCache", "LlamaModel", "ModelConfig"]

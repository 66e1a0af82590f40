"""Model hyper-parameters, named as in Hugging Face's `LlamaConfig` so export is a plain save."""

from __future__ import annotations

from dataclasses import dataclass

from krmini.errors import KrminiError


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int = 4
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self, where: str = "model") -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise KrminiError(f"{where}.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise KrminiError(
                f"{where}.hidden_size: {self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise KrminiError(
                f"{where}.num_key_value_heads: {self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise KrminiError(f"{where}: head_dim {self.head_dim} must be even for RoPE")

"""Model hyper-parameters, named as in Hugging Face's `LlamaConfig` so export is a plain save.

Our own presets use only the first block. The second holds training-recipe switches for our own
runs (off by default, see docs/training.md); the third exists for open models imported from Hugging
Face (`krmini import hf`): each is off by default and says which family needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from krmini.errors import KrminiError

ROPE_TYPES = ("llama3",)
MLP_ACTS = ("swiglu", "relu2")


@dataclass
class RopeScaling:
    """Llama 3.x's long-context RoPE: frequencies whose wavelength exceeds the original context are
    divided by `factor`, short ones kept, the band between blended (see `krmini.model.llama.rope_cache`)."""

    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def validate(self, where: str = "model.rope_scaling") -> None:
        if self.rope_type not in ROPE_TYPES:
            raise KrminiError(f"{where}.rope_type: {self.rope_type!r} is not supported (supported: "
                              f"{', '.join(ROPE_TYPES)})")
        if not self.factor > 0 or self.original_max_position_embeddings <= 0:
            raise KrminiError(f"{where}: factor and original_max_position_embeddings must be positive")
        if not 0 < self.low_freq_factor < self.high_freq_factor:
            raise KrminiError(f"{where}: expected 0 < low_freq_factor < high_freq_factor, got "
                              f"{self.low_freq_factor} and {self.high_freq_factor}")


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
    # --- training recipe (our own runs; none of these exports to transformers or llama.cpp but zero_init_proj) ---
    zero_init_proj: bool = False  # o_proj and down_proj start at zero: each block starts as the identity
    logit_softcap: float = 0.0  # > 0: logits = cap · tanh(logits / cap), in training and inference
    mlp_act: str = "swiglu"  # or "relu2": down(relu(up(x))²), no gate matrix
    # --- for imported open models ---
    head_dim: int | None = None  # None: hidden_size / num_attention_heads (Qwen3 sets its own)
    qkv_bias: bool = False  # biases on the q, k and v projections (Qwen2, Qwen2.5)
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3)
    rope_scaling: RopeScaling | None = None  # Llama 3.1 and later

    def __post_init__(self) -> None:
        # Filled in once, so that every reader sees one number (and state.json records it).
        # Left None when the division is not exact: `validate` reports that.
        if self.head_dim is None and self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads

    def validate(self, where: str = "model") -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise KrminiError(f"{where}.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.head_dim is None:
            raise KrminiError(
                f"{where}.hidden_size: {self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise KrminiError(
                f"{where}.num_key_value_heads: {self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.head_dim <= 0 or self.head_dim % 2:
            raise KrminiError(f"{where}.head_dim: {self.head_dim} must be a positive even number for RoPE")
        if not 0 <= self.logit_softcap < float("inf"):
            raise KrminiError(f"{where}.logit_softcap: expected 0 (off) or a positive number, got {self.logit_softcap}")
        if self.mlp_act not in MLP_ACTS:
            raise KrminiError(f"{where}.mlp_act: expected one of {', '.join(MLP_ACTS)}, got {self.mlp_act!r}")
        if self.rope_scaling is not None:
            self.rope_scaling.validate(f"{where}.rope_scaling")

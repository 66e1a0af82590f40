"""Parameter counts and memory estimates, computed from the config alone (no model is built).

Training memory = weights + gradients + AdamW's two moments + activations kept for backward.
The activation term counts the tensors each block saves per token; it is an estimate, checked
against measured peaks in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from krmini.model.config import ModelConfig


def count_parameters(c: ModelConfig) -> dict[str, int]:
    kv = c.num_key_value_heads * c.head_dim
    attn = 2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * kv
    mlp = 3 * c.hidden_size * c.intermediate_size
    norms = 2 * c.hidden_size
    embed = c.vocab_size * c.hidden_size
    head = 0 if c.tie_word_embeddings else embed
    layers = c.num_hidden_layers * (attn + mlp + norms)
    return {
        "embedding": embed,
        "layers": layers,
        "final_norm": c.hidden_size,
        "lm_head": head,
        "total": embed + layers + c.hidden_size + head,
    }


@dataclass
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def training(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def activation_bytes(c: ModelConfig, batch: int, seq_len: int, act_bytes: int) -> int:
    """Bytes of activations saved for backward at (batch, seq_len)."""
    kv = c.num_key_value_heads * c.head_dim
    h, f = c.hidden_size, c.intermediate_size
    # per token per layer: 2 norm inputs (fp32), 2 norm outputs, q, k, v, attention output,
    # o_proj input, gate, up, silu(gate), and their product.
    per_layer = 2 * h * 4 + (2 * h + h + 2 * kv + 2 * h + 4 * f) * act_bytes
    tokens = batch * seq_len
    # logits (activation dtype) + their fp32 copy for the loss + its gradient
    logits = tokens * c.vocab_size * (act_bytes + 4 + 4)
    return tokens * (c.num_hidden_layers * per_layer + 2 * h * 4) + logits


def estimate_memory(c: ModelConfig, batch: int, seq_len: int, precision: str = "fp32") -> MemoryEstimate:
    params = count_parameters(c)["total"]
    act_bytes = 4 if precision == "fp32" else 2
    return MemoryEstimate(
        weights=params * 4,  # master weights stay fp32 under autocast
        gradients=params * 4,
        optimizer=params * 8,
        activations=activation_bytes(c, batch, seq_len, act_bytes),
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"

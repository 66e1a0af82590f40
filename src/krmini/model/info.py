"""Parameter counts and memory estimates, computed from the config alone (no model is built).

Training memory = weights + gradients + optimizer state (AdamW's two moments, or Muon's one momentum
buffer for the blocks' matrices) + activations kept for backward.
The activation term counts the tensors each block saves per token; it is an estimate, checked
against measured peaks in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from krmini.model.config import ModelConfig


def count_parameters(c: ModelConfig) -> dict[str, int]:
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    attn = 2 * c.hidden_size * q + 2 * c.hidden_size * kv + (q + 2 * kv) * c.qkv_bias
    mlp = (3 if c.mlp_act == "swiglu" else 2) * c.hidden_size * c.intermediate_size  # relu2 has no gate
    norms = 2 * c.hidden_size + 2 * c.head_dim * c.qk_norm
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


# PyTorch's own footprint once a training step has run: kernel code pages, thread pools, oneDNN
# workspaces. Measured on CPU (peak RSS of a step minus RSS before the model exists); on CUDA the
# driver context adds about as much again outside the tensors.
RUNTIME_BYTES = 90 * 2**20


@dataclass
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    step_temporaries: int  # foreach AdamW builds one parameter-sized fp32 list during the update
    runtime: int = RUNTIME_BYTES

    @property
    def training(self) -> int:
        """Peak of a step: weights, gradients and AdamW state are always there; on top comes the larger
        of the activations (held at the start of backward) and the optimizer step's temporaries."""
        return (self.weights + self.gradients + self.optimizer + max(self.activations, self.step_temporaries)
                + self.runtime)


def activation_bytes(c: ModelConfig, batch: int, seq_len: int, act_bytes: int) -> int:
    """Bytes of activations saved for backward at (batch, seq_len).

    Per token and layer: each RMSNorm keeps its fp32 input, normalised value and output (plus the
    low-precision copy the next matmul takes under autocast); attention keeps q, k, v, the rotated
    q and k with their rotate-half halves, its output and the o_proj input; the MLP keeps gate,
    up, silu(gate) and their product (relu2: up, its ReLU and the square). The head keeps the logits, their log-softmax and, early in
    backward, both gradients: four fp32 vocabulary-sized rows per token.
    """
    kv = c.num_key_value_heads * c.head_dim
    h, f = c.hidden_size, c.intermediate_size
    cast_copy = h * act_bytes if act_bytes < 4 else 0
    mlp = 4 * f if c.mlp_act == "swiglu" else 3 * f
    per_layer = 2 * (3 * h * 4 + cast_copy) + (5 * h + 4 * kv + mlp) * act_bytes
    tokens = batch * seq_len
    return tokens * (c.num_hidden_layers * per_layer + 2 * h * 4 + 4 * c.vocab_size * 4)


def block_matrix_parameters(c: ModelConfig) -> int:
    """The decoder blocks' matrices (q, k, v, o, gate, up, down): what train.optimizer=muon gives to Muon."""
    counts = count_parameters(c)
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_layer = 2 * c.hidden_size + 2 * c.head_dim * c.qk_norm + (q + 2 * kv) * c.qkv_bias  # norms, biases
    return counts["layers"] - c.num_hidden_layers * per_layer


def estimate_memory(c: ModelConfig, batch: int, seq_len: int, precision: str = "fp32",
                    optimizer: str = "adamw") -> MemoryEstimate:
    """Peak memory of a training step. Under bf16/fp16 autocast the master weights stay fp32 and
    autocast keeps a half-precision copy of each weight during the step. AdamW keeps two fp32
    moments per parameter; with optimizer="muon" the blocks' matrices keep one momentum buffer."""
    params = count_parameters(c)["total"]
    muon = block_matrix_parameters(c) if optimizer == "muon" else 0
    act_bytes = 4 if precision == "fp32" else 2
    return MemoryEstimate(
        weights=params * (4 if precision == "fp32" else 6),
        gradients=params * 4,
        optimizer=(params - muon) * 8 + muon * 4,
        activations=activation_bytes(c, batch, seq_len, act_bytes),
        step_temporaries=params * 4,
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"

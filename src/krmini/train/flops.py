"""Model FLOPs utilisation (MFU): useful training FLOPs per second over the device's matmul peak.

Training FLOPs per token = 6 · N + 12 · L · T · d (forward 2 FLOPs per multiply-add, backward twice
the forward). N counts the weights that take part in a matmul — every linear layer and the LM head,
but not the embedding lookup. The second term is attention's QKᵀ and AV over a context of T
(counted in full, as in the PaLM paper, though causal attention needs only half). Recomputation by
gradient checkpointing is not useful work and is not counted.
"""

from __future__ import annotations

import time

import torch

from krmini.device import DTYPES
from krmini.model.config import ModelConfig
from krmini.model.info import count_parameters


def matmul_parameters(c: ModelConfig) -> int:
    counts = count_parameters(c)
    norms = c.num_hidden_layers * (2 * c.hidden_size + 2 * c.head_dim * c.qk_norm) + c.hidden_size
    return counts["total"] - counts["embedding"] - norms + c.vocab_size * c.hidden_size * c.tie_word_embeddings


def training_flops_per_token(c: ModelConfig, seq_len: int) -> float:
    return flops_per_token(matmul_parameters(c), c.num_hidden_layers, seq_len, c.hidden_size)


def flops_per_token(matmul_params: int, layers: int, seq_len: int, width: int) -> float:
    """Training FLOPs per token of any decoder: 6·N for the matmuls' forward and backward, plus
    12·L·T·d for attention's scores and weighted sums."""
    return 6 * matmul_params + 12 * layers * seq_len * width


def measure_matmul_peak(device: torch.device, precision: str = "fp32", size: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of square matmuls in `precision` on `device`, with the current thread count.

    The best of several timed rounds: on a shared machine the fastest round is the one least
    disturbed by other processes, which is the fairest estimate of what the hardware can do.
    """
    dtype = DTYPES["fp32" if precision == "auto" else precision]
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b)
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best

"""Step 4: attention in NumPy — scaled dot-product, causal mask, multi-head, sinusoidal positions.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V

Each query row scores every key by a dot product; dividing by √d_k keeps the scores' variance
near 1 however wide the head, so the softmax does not saturate. The mask M is 0 where attending
is allowed and −∞ elsewhere; the causal mask forbids looking at later positions. Multi-head
attention runs h smaller attentions on learned projections side by side and mixes their outputs,
so different heads can track different relations.

Attention alone is blind to order (permuting the tokens permutes the output), so the original
Transformer adds sinusoids of geometric wavelengths to the embeddings:
PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np

from krmini.lab.numpy_ops import softmax
from krmini.lab.plotting import plot_attention


def causal_mask(t_q: int, t_k: int) -> np.ndarray:
    """True where query i may see key j, i.e. j ≤ i (aligned at the end when t_k > t_q)."""
    return np.tril(np.ones((t_q, t_k), dtype=bool), k=t_k - t_q)


def scaled_dot_product_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, causal: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Output (..., T_q, d_v) and weights (..., T_q, T_k). `mask` is boolean, True = may attend."""
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        scores = np.where(causal_mask(q.shape[-2], k.shape[-2]), scores, -np.inf)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    weights = softmax(scores)
    return weights @ v, weights


def sinusoidal_positions(n_positions: int, dim: int) -> np.ndarray:
    """(n_positions, dim) table; each sin/cos pair is a clock turning at its own speed."""
    pos = np.arange(n_positions)[:, None]
    freq = 10000.0 ** (-np.arange(0, dim, 2) / dim)
    table = np.zeros((n_positions, dim))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[: dim // 2])
    return table


class MultiHeadAttention:
    """h heads of width d_model/h over projections x·W + b, then an output projection."""

    def __init__(self, d_model: int, n_heads: int, seed: int = 0) -> None:
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        rng = np.random.default_rng(seed)
        self.n_heads = n_heads
        scale = d_model**-0.5
        self.wq, self.wk, self.wv, self.wo = (rng.normal(0, scale, (d_model, d_model)) for _ in range(4))
        self.bq, self.bk, self.bv, self.bo = (rng.normal(0, 0.02, d_model) for _ in range(4))

    def split(self, x: np.ndarray) -> np.ndarray:
        """(B, T, C) → (B, h, T, C/h)."""
        b, t, c = x.shape
        return x.reshape(b, t, self.n_heads, c // self.n_heads).transpose(0, 2, 1, 3)

    def __call__(
        self, x: np.ndarray, context: np.ndarray | None = None, causal: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Self-attention over x, or cross-attention from x to `context`; returns (out, weights)."""
        context = x if context is None else context
        q = self.split(x @ self.wq + self.bq)
        k = self.split(context @ self.wk + self.bk)
        v = self.split(context @ self.wv + self.bv)
        out, weights = scaled_dot_product_attention(q, k, v, causal=causal)
        b, _, t, _ = out.shape
        merged = out.transpose(0, 2, 1, 3).reshape(b, t, -1)
        return merged @ self.wo + self.bo, weights


def char_embeddings(tokens: list[str], dim: int) -> np.ndarray:
    """A fixed random vector per distinct token (seeded by its bytes), so repeats look alike."""
    rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(0, 1, dim) for t in tokens]
    return np.stack(rows)


def sentence_heatmap(
    sentence: str, out: Path, n_heads: int = 4, dim: int = 32, causal: bool = True, seed: int = 0
) -> Path:
    """Attention weights of an untrained layer over the characters of a sentence, one panel a head.

    The weights are random, so the picture shows the mechanics — the causal triangle, rows summing
    to 1, repeated characters attracting each other — not learned language (see char_gpt for that).
    """
    tokens = list(sentence)
    x = char_embeddings(tokens, dim) + sinusoidal_positions(len(tokens), dim)
    _, weights = MultiHeadAttention(dim, n_heads, seed)(x[None], causal=causal)
    mode = "causal" if causal else "bidirectional"
    return plot_attention(weights[0], tokens, out, f"{mode} attention, {n_heads} heads (untrained)")

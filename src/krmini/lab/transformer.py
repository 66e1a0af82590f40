"""Step 5: the original encoder–decoder Transformer ("Attention Is All You Need") in PyTorch.

    encoder: x = Emb(src)·√d + PE;  N × [self-attention, feed-forward]
    decoder: y = Emb(tgt)·√d + PE;  N × [causal self-attention, cross-attention to the encoder, FFN]
    output:  logits = y Wᵀ

Every sub-layer f is wrapped in a residual. The paper normalises *after* the addition (post-norm,
LN(x + f(x))); most models since normalise *before* (pre-norm, x + f(LN(x))), which keeps an
identity path from input to output and trains deep stacks without warm-up. `pre_norm` switches.
The toy task is reversing a sequence: the decoder must learn to look at the mirror position in
the encoder's output through cross-attention.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TransformerConfig:
    vocab: int = 12
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 128
    n_layers: int = 2
    dropout: float = 0.0
    pre_norm: bool = False
    max_len: int = 64


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q, self.k, self.v, self.out = (nn.Linear(d_model, d_model) for _ in range(4))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, t, c = x.shape

        def heads(proj: nn.Linear, src: torch.Tensor) -> torch.Tensor:
            return proj(src).view(b, src.shape[1], self.n_heads, c // self.n_heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            heads(self.q, x),
            heads(self.k, context),
            heads(self.v, context),
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class Residual(nn.Module):
    """x + Dropout(f(·)) with the LayerNorm before f (pre-norm) or after the sum (post-norm)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, f) -> torch.Tensor:
        if self.pre_norm:
            return x + self.drop(f(self.norm(x)))
        return self.norm(x + self.drop(f(x)))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.res1, self.res2 = (Residual(cfg.d_model, cfg.dropout, cfg.pre_norm) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(x, lambda h: self.attn(h, h))
        return self.res2(x, self.ff)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.res1, self.res2, self.res3 = (Residual(cfg.d_model, cfg.dropout, cfg.pre_norm) for _ in range(3))

    def forward(self, y: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        y = self.res1(y, lambda h: self.self_attn(h, h, causal=True))
        y = self.res2(y, lambda h: self.cross_attn(h, memory))
        return self.res3(y, self.ff)


def sinusoidal_table(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float32) / d)
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.src_emb = nn.Embedding(cfg.vocab, cfg.d_model)
        self.tgt_emb = nn.Embedding(cfg.vocab, cfg.d_model)
        self.register_buffer("pe", sinusoidal_table(cfg.max_len, cfg.d_model), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        # Pre-norm leaves the stacks' outputs un-normalised, so each gets a final LayerNorm.
        self.enc_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.vocab)
        # Embeddings are multiplied by √d below; starting them at std 1/√d keeps token and position
        # signals the same size, otherwise positions drown and learning where to look is slow.
        for emb in (self.src_emb, self.tgt_emb):
            nn.init.normal_(emb.weight, std=cfg.d_model**-0.5)

    def embed(self, emb: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        return self.drop(emb(tokens) * math.sqrt(self.cfg.d_model) + self.pe[: tokens.shape[1]])

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.src_emb, src)
        for layer in self.encoder:
            x = layer(x)
        return self.enc_norm(x)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        y = self.embed(self.tgt_emb, tgt)
        for layer in self.decoder:
            y = layer(y, memory)
        return self.head(self.dec_norm(y))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return self.decode(tgt, self.encode(src))

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, bos: int, length: int) -> torch.Tensor:
        """Decode `length` tokens one at a time, each time taking the most likely next token."""
        memory = self.encode(src)
        out = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
        for _ in range(length):
            nxt = self.decode(out, memory)[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
        return out[:, 1:]


BOS = 10  # symbols are 0..9, BOS starts the decoder


def reversal_batch(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(src, decoder input, target): target is src reversed, decoder input is BOS + target[:-1]."""
    src = torch.randint(0, 10, (batch, length), generator=generator)
    tgt = src.flip(1)
    dec_in = torch.cat([torch.full((batch, 1), BOS), tgt[:, :-1]], dim=1)
    return src, dec_in, tgt


@dataclass
class ReversalResult:
    losses: list[float]
    token_accuracy: float
    sequence_accuracy: float
    seconds: float


def train_reversal(
    cfg: TransformerConfig | None = None,
    steps: int = 300,
    length: int = 8,
    batch: int = 64,
    lr: float = 1e-3,
    warmup: int = 50,
    seed: int = 0,
) -> tuple[Transformer, ReversalResult]:
    """Teach the model to reverse digit strings; score greedy decoding on 1,000 fresh sequences."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(cfg or TransformerConfig())
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    losses = []
    model.train()
    for _ in range(steps):
        src, dec_in, tgt = reversal_batch(batch, length, gen)
        loss = F.cross_entropy(model(src, dec_in).flatten(0, 1), tgt.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    src, _, tgt = reversal_batch(1000, length, gen)
    pred = model.greedy(src, BOS, length)
    result = ReversalResult(
        losses=losses,
        token_accuracy=(pred == tgt).float().mean().item(),
        sequence_accuracy=(pred == tgt).all(1).float().mean().item(),
        seconds=time.perf_counter() - start,
    )
    return model, result

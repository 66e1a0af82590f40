"""A Llama-style decoder-only transformer, written out in full.

    tokens → embed → N × [x + Attn(RMSNorm(x)); x + MLP(RMSNorm(x))] → RMSNorm → lm_head → logits

Attention is causal, grouped-query (several query heads share one key/value head, which shrinks the
KV cache) and position-aware through rotary embeddings (RoPE). The MLP is SwiGLU. Parameter names
mirror Hugging Face's `LlamaForCausalLM` (`model.layers.0.self_attn.q_proj.weight`, …), so the
state dict exports without renaming.

The open models `krmini import hf` reads are this same decoder with at most three changes, each a
config switch (off for our own models): q/k/v biases (Qwen2), an RMSNorm over each head of q and k
(Qwen3, which also sets its own head_dim), and Llama 3's rescaled RoPE frequencies.

Our own runs may also switch on pieces of a newer training recipe (modded-nanogpt, nanochat), all off
by default: q/k norms, zero-initialised output projections, a soft cap on the logits and a ReLU²
MLP in place of SwiGLU (the optimizer side, Muon, lives in `krmini.train.optim`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from krmini.model.config import ModelConfig, RopeScaling


class RMSNorm(nn.Module):
    """Scale by the root-mean-square only (no mean subtraction, no bias): cheaper than LayerNorm."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under autocast: the mean of squares overflows easily in fp16.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def llama3_frequencies(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1's long-context RoPE: stretch the slow rotations, keep the fast ones.

    A frequency whose wavelength (2π / freq positions) is longer than the original training context
    never completed a turn in training, so it is divided by `factor` (positions up to factor × the
    original context then look familiar). Wavelengths shorter than context / high_freq_factor encode
    local order and stay. Between the two the frequency is blended linearly in context / wavelength.
    """
    old = s.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / s.low_freq_factor, inv_freq / s.factor, inv_freq)
    smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= old / s.high_freq_factor) & (wavelen <= old / s.low_freq_factor)
    return torch.where(medium, blended, scaled)


def rope_cache(config: ModelConfig, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (max_positions, head_dim) in Hugging Face's half-split layout."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    if config.rope_scaling is not None:
        inv_freq = llama3_frequencies(inv_freq, config.rope_scaling)
    t = torch.arange(config.max_position_embeddings, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+d/2}) pair by an angle proportional to the position.

    The dot product of two rotated vectors depends only on the difference of their positions,
    which is what makes attention scores relative. x: (B, H, T, D); cos/sin: (B or 1, T, D).
    """
    cos = cos.unsqueeze(1).to(x.dtype)
    sin = sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ/√d) v over (B, heads, T, head_dim); causal when no mask is given.

    Grouped-query: k and v may have fewer heads than q; each serves a group of query heads."""
    gqa = k.shape[1] != q.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


@dataclass
class KVCache:
    """Preallocated keys/values, one (B, kv_heads, max_len, head_dim) tensor per layer.

    Generation writes each new position in place instead of concatenating, so decoding allocates
    nothing per token. `length` is how many positions are filled. Its dtype may be wider than the
    model's: attention then runs in that dtype (the engine keeps a bf16 model's cache in fp32 on CPU).
    Separate tensors per layer (not one stacked tensor) let a compiled decode step write each of them
    in place (see `krmini.infer.fast.compiled`).
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, max_len: int, device, dtype) -> KVCache:
        shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        layers = range(config.num_hidden_layers)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in layers],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in layers])

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, kv_heads, T, head_dim) after the filled positions; return every filled one."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of q over the keys/values `update` returned (a compiled step attends its own way)."""
        return attention(q, k, v, mask)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.qkv_bias
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)
        if config.qk_norm:
            # Qwen3: normalising each head bounds the attention scores q·k, which steadies training.
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def rotate(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q (B, T, heads, head_dim), k (B, T, kv_heads, head_dim) → per-head norm (if any), RoPE, (B, heads, T, D)."""
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q, k, v as (B, heads, T, head_dim), with RoPE applied to q and k."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        return *self.rotate(q, k, cos, sin), v

    def forward(self, x, cos, sin, cache: KVCache | None, layer: int, mask: torch.Tensor | None):
        B, T, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        if cache is None:
            out = attention(q, k, v, mask)
        else:
            k, v = cache.update(layer, k, v)
            q = q.to(k.dtype)  # the cache may be kept wider than the weights (see KVCache)
            out = cache.attend(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1).to(x.dtype))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). The gate lets each hidden unit switch itself off."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ReluSquaredMLP(nn.Module):
    """down(relu(up(x))²) (`mlp_act: relu2`; Primer, modded-nanogpt): two matrices instead of three,
    so at the same intermediate_size a third fewer MLP weights and FLOPs. Primer's architecture search
    (So et al., 2021) found it; it keeps ReLU's sparsity with a derivative that is continuous at zero."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config) if config.mlp_act == "swiglu" else ReluSquaredMLP(config)

    def forward(self, x, cos, sin, cache, layer, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Everything but the LM head; named `model` inside `LlamaModel` to match HF's layout."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.grad_checkpointing = False  # training: recompute each block in backward instead of storing it
        cos, sin = rope_cache(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Scale the residual-branch outputs down with depth (GPT-2), so the residual stream's
        # variance does not grow with the number of layers at initialisation. `zero_init_proj`
        # (modded-nanogpt) goes all the way: every block starts as the identity. The first step
        # moves o_proj and down_proj (their inputs are not zero); the weights before them get
        # gradient from the second step on, once the projections are no longer zero.
        std = config.initializer_range / math.sqrt(2 * config.num_hidden_layers)
        for layer in self.model.layers:
            for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
                if config.zero_init_proj:
                    nn.init.zeros_(proj.weight)
                else:
                    nn.init.normal_(proj.weight, std=std)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # Keep the RoPE tables in fp32 whatever dtype the weights move to: in bf16 the angles at
        # long positions lose their low bits and attention blurs.
        self.rope_cos, self.rope_sin = rope_cache(self.config, self.rope_cos.device)
        return self

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head over final hidden states, soft-capped when `logit_softcap` is set (Gemma 2,
        modded-nanogpt): cap · tanh(z / cap) is z for small z and never exceeds ±cap, so no logit can
        run away and make the softmax overconfident. Every path to logits (training, the KV cache,
        the compiled decoder) comes through here, so inference sees what training saw."""
        z = self.lm_head(x)
        cap = self.config.logit_softcap
        return cap * torch.tanh(z / cap) if cap else z

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (logits, loss). With `targets`, loss is the mean cross-entropy (-100 is ignored).

        `position_ids` (B, T) defaults to cache.length + arange(T); `attn_mask` (B, 1, T, S) is a
        boolean "may attend" mask for batches of left-padded prompts. `last_only` computes logits for
        the last position only (B, 1, V): generation needs no more, and with a large vocabulary the
        LM head would otherwise dominate a long prompt's prefill.
        """
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        limit = cache.max_len if cache is not None else self.config.max_position_embeddings
        if start + T > limit:
            raise ValueError(f"sequence of {start + T} tokens exceeds the context of {limit}")
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=input_ids.device).unsqueeze(0)
        cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]
        if attn_mask is None and start > 0 and T > 1:
            # A chunk appended after a cached prefix: SDPA's `is_causal` aligns top-left, so spell
            # out the bottom-right causal mask (query i sees keys up to start + i).
            attn_mask = torch.ones(T, start + T, dtype=torch.bool, device=input_ids.device).tril(start)
        x = self.model.embed_tokens(input_ids)
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.model.layers):
            if recompute:
                x = checkpoint(layer, x, cos, sin, cache, i, attn_mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, i, attn_mask)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:]
        logits = self.logits(self.model.norm(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

"""The model's blocks rebuilt for generation: fewer, larger matmuls with weights laid out once.

Decoding one token runs every layer on a single row, so a step is dozens of small operations and
the fixed cost of each one matters as much as its arithmetic. Two changes cut that cost without
changing what is computed:

* **Fused projections.** q, k and v are one matmul against the three weights stacked, and RoPE
  rotates q and k in one pass; gate and up are one matmul. 7 matmuls per layer become 4.
* **Our kernels** (`gemv.py`): where the CPU has AVX512-BF16, a bf16 matmul over a few rows
  (decoding, batch ≤ 8) runs our own kernel, which streams the weights 1.3-1.5× faster than oneDNN;
  more rows (prefill) still go to oneDNN. int8 layers (`Int8Linear`) of a model large enough to
  stream from memory run our int8 kernel for one or two rows.
* **Packed weights.** Elsewhere, in bf16, `F.linear` on CPU hands the weight to oneDNN in PyTorch's
  row-major layout and oneDNN reorders it into its blocked layout on every call. Packing once
  (`torch.ops.mkldnn._reorder_linear_weight`, the kernels `torch.compile` uses on CPU with frozen
  weights) removes that. oneDNN's bf16 path needs AVX-512 or AVX-NE-CONVERT, so packing is a probe
  (`packing_available`): on an AVX2-only CPU the layers stay plain `nn.Linear`. In fp32, MKL's matrix-vector product wins on small matrices but oneDNN's
  packed one is 1.2–4× faster from about half a million weights up (measured on this project's
  2-core x86-64 machine: a 32000 × 192 LM head 1,510 → 348 µs), so large fp32 matrices are packed too.

Inference only: the fused layers hold new (stacked or packed) weights, so a fused model cannot be
trained, saved or exported — fuse the copy that generates. The tests check it produces the same
tokens as the reference model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from krmini import hardware
from krmini.infer.fast.gemv import BF16_MAX_ROWS, gemv_bf16, kernel_available
from krmini.infer.fast.quantize import Int8Linear
from krmini.model.llama import MLP, Attention, LlamaModel, apply_rope


class PackedLinear(nn.Module):
    """y = x Wᵀ (+ b) through oneDNN with W pre-packed (only Qwen2's q/k/v have a bias)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        self.bias = None if bias is None else bias.detach().to(weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class GemvLinear(nn.Module):
    """y = x Wᵀ (+ b) in bf16: our kernel for up to BF16_MAX_ROWS rows, oneDNN (through `F.linear`) for more."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(weight.dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] > BF16_MAX_ROWS:
            return F.linear(x, self.weight, self.bias)
        y = gemv_bf16(rows, self.weight).view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


# int8 weights a token reads from which our int8 kernel runs. It wins when the weights stream from
# memory (135M model: 1.2x eager and compiled); a model whose weights sit in the CPU's caches is
# bound by arithmetic instead, where PyTorch's int8 kernel was faster (7.7M model: 0.9x eager, 0.8x
# compiled). Between the two, this is about a large L3 cache.
INT8_KERNEL_MIN_BYTES = 32 << 20

PACK_FP32_FROM = 1 << 19  # weights; below this MKL's fp32 matrix-vector product is faster


def _packs(dtype: torch.dtype) -> bool:
    """The probe: pack a tiny weight and multiply through it, against `F.linear`."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("this PyTorch is built without oneDNN")
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(24, 16, generator=gen).to(dtype), torch.randn(3, 16, generator=gen).to(dtype)
    got = PackedLinear(w)(x)
    return bool(torch.allclose(got.float(), F.linear(x, w).float(), rtol=2**-6, atol=1e-2))


def packing_available(dtype: torch.dtype) -> bool:
    """Whether oneDNN packs and multiplies `dtype` weights on this CPU (probed once per process)."""
    if dtype not in (torch.float32, torch.bfloat16):
        return False
    name = "onednn-pack-" + ("bf16" if dtype == torch.bfloat16 else "fp32")
    return hardware.probe(name, lambda: _packs(dtype), hardware.ONEDNN_BF16 if dtype == torch.bfloat16 else ()).ok


def can_pack(weight: torch.Tensor) -> bool:
    """On the CPU where oneDNN packing works: every bf16 matrix, and fp32 ones large enough to gain."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return False
    if weight.dtype == torch.float32 and weight.numel() < PACK_FP32_FROM:
        return False
    return packing_available(weight.dtype)


def linear_for_decoding(weight: torch.Tensor, own_kernel: bool = True, bias: torch.Tensor | None = None) -> nn.Module:
    """A linear layer computing x Wᵀ (+ bias): our kernel (unless `own_kernel` is False) or packed where
    that helps, plain otherwise."""
    if own_kernel and weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and kernel_available():
        return GemvLinear(weight, bias)
    if can_pack(weight):
        return PackedLinear(weight, bias)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")  # no throwaway init
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return layer


class FusedAttention(Attention):
    """`Attention` with one qkv matmul (biases stacked too, where q/k/v have them) and one RoPE pass;
    the per-head q/k norms (Qwen3), caching and attention are inherited."""

    def __init__(self, attn: Attention, own_kernel: bool = True) -> None:
        nn.Module.__init__(self)  # not Attention.__init__: the weights come from `attn`, not a new init
        self.n_heads, self.n_kv, self.head_dim = attn.n_heads, attn.n_kv, attn.head_dim
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        stacked = torch.cat([p.weight for p in projections])
        bias = torch.cat([p.bias for p in projections]) if attn.q_proj.bias is not None else None
        self.qkv_proj = linear_for_decoding(stacked, own_kernel, bias)
        self.o_proj = linear_for_decoding(attn.o_proj.weight, own_kernel)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, self.n_heads + 2 * self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q, k, v = qkv.split([self.n_heads, self.n_kv, self.n_kv], dim=2)
            return *self.rotate(q, k, cos, sin), v.transpose(1, 2)
        qkv = qkv.transpose(1, 2)
        rotated = self.n_heads + self.n_kv
        qk = apply_rope(qkv[:, :rotated], cos, sin)
        return qk[:, : self.n_heads], qk[:, self.n_heads :], qkv[:, rotated:]


class FusedMLP(nn.Module):
    """SwiGLU with gate and up as one matmul."""

    def __init__(self, mlp: MLP, own_kernel: bool = True) -> None:
        super().__init__()
        self.hidden = mlp.gate_proj.out_features
        self.gate_up_proj = linear_for_decoding(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), own_kernel)
        self.down_proj = linear_for_decoding(mlp.down_proj.weight, own_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.hidden, dim=-1)
        return self.down_proj(F.silu(gate) * up)


@torch.no_grad()
def fuse_for_decoding(model: LlamaModel, own_kernel: bool = True) -> LlamaModel:
    """Swap every block's attention and MLP for the fused versions (and the LM head's matmul), in place.

    Layers that are not plain float `nn.Linear` (int8, LoRA) keep their structure; int8 ones run our
    int8 kernel where it is available. `own_kernel=False` keeps PyTorch's matmuls (oneDNN, int8pack)
    where our kernels would run (the benchmark compares the two).
    """
    for block in model.model.layers:
        attn, mlp = block.self_attn, block.mlp
        if isinstance(attn, FusedAttention) or isinstance(mlp, FusedMLP):  # fused already
            continue
        if all(type(m) is nn.Linear for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)):
            block.self_attn = FusedAttention(attn, own_kernel)
        if isinstance(mlp, MLP):
            if all(type(m) is nn.Linear for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
                block.mlp = FusedMLP(mlp, own_kernel)
        elif all(type(m) is nn.Linear for m in (mlp.up_proj, mlp.down_proj)):  # relu2: no gate to fuse with
            mlp.up_proj = linear_for_decoding(mlp.up_proj.weight, own_kernel)
            mlp.down_proj = linear_for_decoding(mlp.down_proj.weight, own_kernel)
    if type(model.lm_head) is nn.Linear:
        model.lm_head = linear_for_decoding(model.lm_head.weight, own_kernel)
    table = getattr(model.model.embed_tokens, "head", None)  # an int8 embedding: read a row at a time, untied
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear) and (m is not table or m is model.lm_head)]
    # a model without int8 layers, such as an fp32 one, never builds the kernels
    if own_kernel and int8 and sum(m.weight.numel() for m in int8) >= INT8_KERNEL_MIN_BYTES and kernel_available():
        for module in int8:
            module.own_kernel = True
    return model

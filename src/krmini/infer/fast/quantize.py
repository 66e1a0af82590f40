"""Weight-only int8: every linear layer (and the embedding) as int8 with one scale per output row.

    w ≈ q · s,  q = round(w / s) ∈ [-127, 127],  s = max|w_row| / 127

Activations stay in floating point; on CPU the matmul runs in `torch._weight_int8pack_mm`, which
reads the int8 weights directly (decoding is bound by how many weight bytes are read per token,
so a quarter of fp32's bytes is the point). Elsewhere the weights are dequantized on the fly.

A quantized checkpoint is a normal checkpoint directory (model.safetensors, state.json with
checksums, tokenizer/) whose state.json has `"quantization": "int8"`; `load_model` rebuilds it.
Quantizing a LoRA run quantizes the merged model: the copy is a plain int8 run (no run_config.lora).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from krmini import hardware
from krmini.infer.fast.gemv import INT8_MAX_ROWS, gemv_int8
from krmini.model import LlamaModel
from krmini.runs import MODEL_FILE, TOKENIZER_DIR, checkpoint_files, staged_dir, write_state

METHOD = "int8"


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float → (int8 (N, K), fp32 scales (N,)), symmetric per row."""
    w = w.float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _int8pack_matches() -> bool:
    """The probe for PyTorch's CPU int8 kernel: a tiny product against the dequantized matmul."""
    gen = torch.Generator().manual_seed(0)
    x, q = torch.randn(2, 32, generator=gen), torch.randint(-127, 128, (5, 32), generator=gen, dtype=torch.int8)
    scale = torch.rand(5, generator=gen) + 0.5
    got = torch._weight_int8pack_mm(x, q, scale)
    return bool(torch.allclose(got, (x @ q.float().T) * scale, rtol=1e-4, atol=1e-3))


def int8pack_available() -> bool:
    return hardware.probe("torch-int8pack", _int8pack_matches).ok


class Int8Linear(nn.Module):
    """y = x · (q · s)ᵀ (+ b) with q int8 (out, in), s one scale per output feature and b a float bias
    (only where the float layer had one: Qwen2's q/k/v).

    `own_kernel` (set by `fuse_for_decoding` where our kernel runs): a step's one or two rows go
    through our int8 kernel (`gemv.py`), which streams the weights faster than PyTorch's.
    """

    own_kernel = False

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = torch.float32,
                 bias: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=dtype))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype) if bias else None)
        self.int8pack = int8pack_available()  # decided once (a plain attribute inside a compiled step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight_scale.to(x.dtype)
        if x.device.type == "cpu" and self.int8pack:
            flat = x.reshape(-1, x.size(-1))
            matmul = gemv_int8 if self.own_kernel and flat.shape[0] <= INT8_MAX_ROWS else torch._weight_int8pack_mm
            y = matmul(flat, self.weight, scale).view(*x.shape[:-1], -1)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * scale
        return y if self.bias is None else y + self.bias.to(y.dtype)


class Int8Embedding(nn.Module):
    """Row lookup of int8 weights times the row's scale (the same tensors as a tied LM head)."""

    def __init__(self, head: Int8Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head.weight[ids].to(self.head.weight_scale.dtype) * self.head.weight_scale[ids, None]


def _swap_linears(model: LlamaModel, dtype: torch.dtype) -> None:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child.in_features, child.out_features, dtype, child.bias is not None))


def int8_skeleton(model: LlamaModel, dtype: torch.dtype = torch.float32) -> LlamaModel:
    """Replace the float layers of `model` with empty int8 ones (to be filled by a state dict)."""
    _swap_linears(model, dtype)
    if model.config.tie_word_embeddings:
        model.model.embed_tokens = Int8Embedding(model.lm_head)
    else:
        emb = model.model.embed_tokens
        model.model.embed_tokens = Int8Embedding(Int8Linear(emb.embedding_dim, emb.num_embeddings, dtype))
    return model


@torch.no_grad()
def quantize_model(model: LlamaModel) -> LlamaModel:
    """Quantize a float model in place (weights rounded to int8, scales kept in the model's dtype)."""
    dtype = model.model.embed_tokens.weight.dtype
    source = {name: p.detach().clone() for name, p in model.state_dict().items()}
    int8_skeleton(model, dtype)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(".bias"):  # a new Int8Linear's bias: the float layer's, as it was
            state[name] = source[name].to(dtype)
        if name.endswith("weight_scale") or tensor.dtype != torch.int8:
            continue
        float_name = name.replace("embed_tokens.head.weight", "embed_tokens.weight")
        q, scale = quantize_rows(source[float_name])
        state[name], state[name + "_scale"] = q, scale.to(dtype)
    model.load_state_dict(state, strict=False)
    return model


def int8_tensors(model: LlamaModel) -> dict[str, torch.Tensor]:
    """The state dict to save: tied weights once, norms and scales as they are."""
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd = {k: v for k, v in sd.items() if not k.startswith("model.embed_tokens.head.")}
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_int8(model: LlamaModel, source_ckpt: Path, state: dict, out: Path) -> Path:
    """Write a quantized checkpoint directory, staged (replaces `out` whole, or leaves it untouched).

    `model` is already merged if the source was a LoRA run, so `run_config.lora` is dropped: the
    copy's weights hold no adapters, and a reader must not try to rebuild them.
    """
    keep = {k: state[k] for k in ("model_config", "run_config", "step") if k in state}
    if (keep.get("run_config") or {}).get("lora") is not None:
        keep["run_config"] = {**keep["run_config"], "lora": None}
    with staged_dir(out, force=True, inputs=checkpoint_files(source_ckpt)) as tmp:
        save_file(int8_tensors(model), tmp / MODEL_FILE, metadata={"format": "pt", "quantization": METHOD})
        write_state(tmp, {**keep, "quantization": METHOD, "source": str(source_ckpt)}, (MODEL_FILE,))
        shutil.copytree(source_ckpt / TOKENIZER_DIR, tmp / TOKENIZER_DIR)
    return out

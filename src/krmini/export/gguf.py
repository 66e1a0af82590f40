"""Our model → one GGUF file for llama.cpp, llama-cpp-python and Ollama (architecture "llama").

Two things differ from the Hugging Face layout:

* RoPE pairs. We (like HF) rotate the pair (x_i, x_{i+d/2}) — the two halves of each head; llama.cpp
  rotates adjacent pairs (x_{2i}, x_{2i+1}). Permuting the rows of q_proj and k_proj per head so
  that row i+d/2 sits next to row i gives identical attention scores (q·k is a sum over the same
  pairs); v and the output projection are untouched.
* The tokenizer. llama.cpp's "llama" (SentencePiece-style) tokenizer starts from characters and
  repeatedly merges the adjacent pair whose concatenation is in the vocabulary with the highest
  score, falling back to `<0xNN>` byte tokens. Scoring each merged token by minus the rank of the
  BPE merge that created it makes that procedure follow our BPE merge order, so no merges list is
  needed ("gpt2" BPE in llama.cpp means byte-level BPE, which our vocabulary is not). Our
  pre-tokenizer never lets a token span a space or a digit, and it adds no leading "▁", hence
  `add_space_prefix = false`.

Types: f32 everything; f16 or bf16 for matrices (norms stay f32; bf16 keeps a bf16 model's bits
exactly); q8_0 for matrices whose rows are a multiple of 32 (others f16), as llama.cpp's own
converter does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from krmini.errors import KrminiError
from krmini.infer.load import LoadedModel
from krmini.model import LlamaModel
from krmini.runs import run_dir, staged_file
from krmini.tokenizer import KoTokenizer
from krmini.tokenizer.tokenizer import BYTE_TOKENS, SPECIAL_TOKENS

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
Q8_BLOCK = 32


def _gguf():
    try:
        import gguf
    except ImportError:
        raise KrminiError("the gguf package is not installed: pip install 'krmini[gguf]'") from None
    return gguf


def interleave_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from half-split (i, i+d/2) to adjacent pairs (2i, 2i+1)."""
    rows, cols = weight.shape
    half = rows // n_heads // 2
    return weight.reshape(n_heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def gguf_tensors(model: LlamaModel) -> dict[str, torch.Tensor]:
    """Weights under llama.cpp's tensor names, q/k rows permuted for its RoPE."""
    c = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not c.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        out |= {
            f"blk.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
            f"blk.{i}.attn_q.weight": interleave_rope_rows(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads),
            f"blk.{i}.attn_k.weight": interleave_rope_rows(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads),
            f"blk.{i}.attn_v.weight": sd[p + "self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": sd[p + "self_attn.o_proj.weight"],
            f"blk.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
            f"blk.{i}.ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": sd[p + "mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": sd[p + "mlp.down_proj.weight"],
        }
    return out


@dataclass
class GGUFVocab:
    """What llama.cpp's "llama" tokenizer reads: one token, score and type per id, and the special ids."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    pad_id: int


def spm_vocab(tokenizer: KoTokenizer, vocab_size: int) -> GGUFVocab:
    """Our tokenizer as llama.cpp's "llama" tokenizer, padded to `vocab_size`."""
    gguf = _gguf()
    by_id = {i: t for t, i in tokenizer.tok.get_vocab(with_added_tokens=True).items()}
    merges = json.loads(tokenizer.tok.to_str())["model"]["merges"]
    scores = {}
    for rank, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        scores.setdefault(left + right, -float(rank + 1))
    special, byte = set(SPECIAL_TOKENS), set(BYTE_TOKENS)
    tokens, token_scores, types = [], [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"<|unused_{i}|>")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if token in special else
                         gguf.TokenType.BYTE if token in byte else gguf.TokenType.NORMAL)
        token_scores.append(scores.get(token, 0.0))
    return GGUFVocab(tokens, token_scores, [int(t) for t in types], tokenizer.bos_id, tokenizer.eos_id,
                     tokenizer.pad_id)


def _encode(gguf, tensor: torch.Tensor, kind: str) -> tuple[np.ndarray, object]:
    array = tensor.numpy().astype(np.float32)
    if kind == "f32" or array.ndim == 1:
        return array, gguf.GGMLQuantizationType.F32
    if kind == "bf16":  # torch's own rounding, so a bf16 model's weights arrive bit for bit
        bits = tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)
        return bits.reshape(*array.shape[:-1], array.shape[-1] * 2), gguf.GGMLQuantizationType.BF16
    if kind == "q8_0" and array.shape[-1] % Q8_BLOCK == 0:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return array.astype(np.float16), gguf.GGMLQuantizationType.F16


def export_gguf(loaded: LoadedModel, out: Path, kind: str = "f16", force: bool = False, name: str = "krmini") -> Path:
    """Our own models only: an imported open model's tokenizer and its extra switches are not written here
    (llama.cpp has its own converter for those families)."""
    c = loaded.model.config
    extras = [f for f in ("qkv_bias", "qk_norm") if getattr(c, f)] + (["rope_scaling"] if c.rope_scaling else [])
    if extras or loaded.tokenizer.foreign is not None:
        what = ", ".join(extras) if extras else "a foreign tokenizer"
        raise KrminiError(f"{loaded.path}: an imported open model ({what}); GGUF export covers krmini's own "
                          "models only (llama.cpp's convert_hf_to_gguf.py converts the original checkpoint)")
    return write_gguf(loaded.model, spm_vocab(loaded.tokenizer, loaded.model.config.vocab_size), out, kind, force,
                      name, inputs=[run_dir(loaded.path)])


def write_gguf(model: LlamaModel, vocab: GGUFVocab, out: Path, kind: str = "f16", force: bool = False,
               name: str = "krmini", inputs: tuple[Path, ...] | list[Path] = ()) -> Path:
    if kind not in GGUF_TYPES:
        raise KrminiError(f"--type: expected one of {', '.join(GGUF_TYPES)}, got {kind!r}")
    gguf = _gguf()
    c = model.config
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]
    if out.is_dir():  # a directory says where the file goes, as with cp
        out = out / f"{name}-{kind}.gguf"
    with staged_file(out, force, inputs) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(name)
        writer.add_context_length(c.max_position_embeddings)
        writer.add_embedding_length(c.hidden_size)
        writer.add_block_count(c.num_hidden_layers)
        writer.add_feed_forward_length(c.intermediate_size)
        writer.add_head_count(c.num_attention_heads)
        writer.add_head_count_kv(c.num_key_value_heads)
        writer.add_rope_dimension_count(c.head_dim)
        writer.add_rope_freq_base(c.rope_theta)
        writer.add_layer_norm_rms_eps(c.rms_norm_eps)
        writer.add_vocab_size(c.vocab_size)
        writer.add_file_type(file_type)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(vocab.tokens)
        writer.add_token_scores(vocab.scores)
        writer.add_token_types(vocab.types)
        writer.add_bos_token_id(vocab.bos_id)
        writer.add_eos_token_id(vocab.eos_id)
        writer.add_pad_token_id(vocab.pad_id)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)
        for tensor_name, tensor in gguf_tensors(model).items():
            data, dtype = _encode(gguf, tensor, kind)
            writer.add_tensor(tensor_name, data, raw_dtype=dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out

"""A model → one GGUF file for llama.cpp, llama-cpp-python and Ollama.

The architecture llama.cpp runs is the one whose arithmetic the model's switches match (as for the
Hugging Face export, `krmini.export.hf_config.export_family`):

    ours, Llama 3.x, SmolLM2, Mistral   "llama"   (Llama 3.x's rescaled RoPE as a `rope_freqs` tensor)
    Qwen2/2.5 (q/k/v biases)            "qwen2"
    Qwen3 (q/k RMSNorm per head)        "qwen3"   (its own head_dim: key_length / value_length)

RoPE pairs. We (like HF) rotate the pair (x_i, x_{i+d/2}) — the two halves of each head. llama.cpp's
"llama" rotates adjacent pairs (x_{2i}, x_{2i+1}): permuting the rows of q_proj and k_proj (and their
biases) per head so that row i+d/2 sits next to row i gives identical attention scores (q·k is a sum
over the same pairs); v and the output projection are untouched. "qwen2" and "qwen3" rotate halves as
we do, so their weights go as they are. Llama 3's long-context RoPE divides each frequency by a factor;
llama.cpp reads those factors from `rope_freqs.weight` (one per pair) and divides likewise.

Tied embeddings: no `output.weight`; llama.cpp then reads the embedding as the output projection.

The tokenizer (`krmini.export.gguf_vocab`): ours as a SentencePiece-style vocabulary, an imported
model's byte-level BPE as llama.cpp's "gpt2" with its merges and pre-tokenizer type. The chat
template, the stop ids and whether a prompt starts with BOS come with it.

Types: f32 everything; f16 or bf16 for matrices (norms, biases and RoPE factors stay f32; bf16 keeps a
bf16 model's bits exactly); q8_0 for matrices whose rows are a multiple of 32 (others f16), as
llama.cpp's own converter does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from krmini.errors import KrminiError
from krmini.export.gguf_vocab import GGUFVocab, gguf_vocab
from krmini.export.hf_config import export_family
from krmini.infer.load import LoadedModel
from krmini.model import LlamaModel
from krmini.model.llama import llama3_frequencies
from krmini.runs import run_dir, staged_file

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
Q8_BLOCK = 32
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise KrminiError("the gguf package is not installed: pip install 'krmini[gguf]'") from None
    return gguf


def gguf_architecture(model: LlamaModel) -> str:
    """llama.cpp's architecture for the model's switches; one it cannot express is refused."""
    arch = ARCHITECTURES[export_family(model.config)]
    if model.config.rope_scaling is not None and arch != "llama":
        raise KrminiError(f"model: rope_scaling with {arch}'s layout (q/k/v biases or q/k norms) has no llama.cpp "
                          "architecture; cannot export GGUF")
    return arch


def interleave_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from half-split (i, i+d/2) to adjacent pairs (2i, 2i+1)."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return weight.reshape(n_heads, 2, half, -1).transpose(1, 2).reshape(weight.shape)


def rope_factors(model: LlamaModel) -> torch.Tensor:
    """Per pair, the number llama.cpp divides the RoPE frequency by (Llama 3's scaling)."""
    c = model.config
    base = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
    return base / llama3_frequencies(base, c.rope_scaling)


def gguf_tensors(model: LlamaModel) -> dict[str, torch.Tensor]:
    """Weights under llama.cpp's tensor names; for "llama", q/k rows (and biases) permuted for its RoPE."""
    c = model.config
    arch = gguf_architecture(model)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not c.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    if c.rope_scaling is not None:
        out["rope_freqs.weight"] = rope_factors(model)

    def rope_rows(t: torch.Tensor, heads: int) -> torch.Tensor:
        return interleave_rope_rows(t, heads) if arch == "llama" else t

    for i in range(c.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        names = {"attn_norm": "input_layernorm", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                if f"{p}{theirs}.{kind}" in sd:
                    out[f"{b}{ours}.{kind}"] = sd[f"{p}{theirs}.{kind}"]
        for ours, theirs, heads in (("attn_q", "q_proj", c.num_attention_heads), ("attn_k", "k_proj", c.num_key_value_heads)):
            for kind in ("weight", "bias"):
                if f"{p}self_attn.{theirs}.{kind}" in sd:
                    out[f"{b}{ours}.{kind}"] = rope_rows(sd[f"{p}self_attn.{theirs}.{kind}"], heads)
    return out


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
    """Ours or an imported open model, with its tokenizer, stop ids and chat template."""
    gguf_architecture(loaded.model)  # refused before the vocabulary is built
    vocab = gguf_vocab(loaded.tokenizer, loaded.model.config.vocab_size, f"{run_dir(loaded.path)}/tokenizer")
    return write_gguf(loaded.model, vocab, out, kind, force, name, inputs=[run_dir(loaded.path)])


def gguf_path(out: Path, name: str, kind: str) -> Path:
    """A directory says where the file goes, as with cp."""
    return out / f"{name}-{kind}.gguf" if out.is_dir() else out


def _write_vocab(writer, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.model == "llama":
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_pad_token_id(vocab.pad_id)
    if vocab.unk_id is not None:
        writer.add_unk_token_id(vocab.unk_id)
    # llama.cpp stops at EOS, EOT and EOM (and at tokens it knows by name: <|im_end|>, <|eot_id|>, …)
    for add, token in zip((writer.add_eot_token_id, writer.add_eom_token_id), vocab.eot_ids, strict=False):
        add(token)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.model == "llama":
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)


def write_gguf(model: LlamaModel, vocab: GGUFVocab, out: Path, kind: str = "f16", force: bool = False,
               name: str = "krmini", inputs: tuple[Path, ...] | list[Path] = ()) -> Path:
    if kind not in GGUF_TYPES:
        raise KrminiError(f"--type: expected one of {', '.join(GGUF_TYPES)}, got {kind!r}")
    gguf = _gguf()
    c = model.config
    arch = gguf_architecture(model)
    tensors = gguf_tensors(model)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]
    out = gguf_path(out, name, kind)
    with staged_file(out, force, inputs) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(name)
        writer.add_context_length(c.max_position_embeddings)
        writer.add_embedding_length(c.hidden_size)
        writer.add_block_count(c.num_hidden_layers)
        writer.add_feed_forward_length(c.intermediate_size)
        writer.add_head_count(c.num_attention_heads)
        writer.add_head_count_kv(c.num_key_value_heads)
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
        writer.add_rope_dimension_count(c.head_dim)
        writer.add_rope_freq_base(c.rope_theta)
        writer.add_layer_norm_rms_eps(c.rms_norm_eps)
        writer.add_vocab_size(c.vocab_size)
        writer.add_file_type(file_type)
        _write_vocab(writer, vocab)
        for tensor_name, tensor in tensors.items():
            data, dtype = _encode(gguf, tensor, kind)
            writer.add_tensor(tensor_name, data, raw_dtype=dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out

"""Our model ↔ `transformers.LlamaForCausalLM`.

Parameter names already match Hugging Face's Llama layout, so conversion is a config translation
plus a plain state-dict copy. `transformers` is an optional dependency (`pip install krmini[hf]`)
needed to export; importing reads config.json and safetensors directly and needs only our code.

    OUT/config.json              LlamaConfig (model_type "llama", architectures LlamaForCausalLM)
    OUT/model.safetensors        weights, HF names
    OUT/generation_config.json   bos/eos/pad ids and our default sampling
    OUT/tokenizer.json           the tokenizer as saved by `KoTokenizer.save`
    OUT/tokenizer_config.json
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from krmini.errors import KrminiError
from krmini.infer.load import LoadedModel
from krmini.model import LlamaModel, ModelConfig
from krmini.runs import CHECKPOINTS_DIR, TOKENIZER_DIR, check_target, read_json, run_dir, staged_dir
from krmini.tokenizer import KoTokenizer
from krmini.train import checkpoint as ckpt
from krmini.train.config import TrainConfig
from krmini.train.optim import build_optimizer

SHARED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps",
                 "tie_word_embeddings", "initializer_range")
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise KrminiError("transformers is not installed: pip install 'krmini[hf]'") from None
    return transformers


def hf_config(config: ModelConfig, bos_id: int = 1, eos_id: int = 2, pad_id: int = 0):
    tf = _transformers()
    return tf.LlamaConfig(
        **{f: getattr(config, f) for f in SHARED_FIELDS},
        hidden_act="silu", attention_bias=False, mlp_bias=False, head_dim=config.head_dim,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
    )


def to_hf_model(model: LlamaModel, bos_id: int = 1, eos_id: int = 2, pad_id: int = 0):
    """A `LlamaForCausalLM` with our weights (same dtype), in eval mode."""
    tf = _transformers()
    hf = tf.LlamaForCausalLM(hf_config(model.config, bos_id, eos_id, pad_id))
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise KrminiError(f"HF conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return hf.to(next(model.parameters()).dtype).eval()


def export_hf(loaded: LoadedModel, out: Path, force: bool = False) -> Path:
    """Write a directory that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` load as-is."""
    tf = _transformers()
    tok = loaded.tokenizer
    model = loaded.model.float()
    context = model.config.max_position_embeddings
    with staged_dir(out, force, inputs=[run_dir(loaded.path)]) as tmp:
        hf = to_hf_model(model, tok.bos_id, tok.eos_id, tok.pad_id)
        hf.generation_config = tf.GenerationConfig(
            bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
            do_sample=True, temperature=0.8, top_k=50)
        hf.save_pretrained(tmp)
        tok.save(tmp, model_max_length=context)
    return out


def _rope_theta(raw: dict, where: str) -> float:
    """rope_theta sits at the top level (older files) or in rope_parameters (transformers 5)."""
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise KrminiError(f"{where}: RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not supported; "
                          "only plain RoPE imports")
    theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
    return float(theta)


def from_hf_config(raw: dict, where: str = "config.json") -> ModelConfig:
    """Our config from a Llama `config.json` (as a dict), refusing what our model cannot express."""
    if raw.get("model_type", "llama") != "llama":
        raise KrminiError(f"{where}: model_type {raw.get('model_type')!r}; only Llama-architecture models import")
    if raw.get("hidden_act", "silu") != "silu" or raw.get("attention_bias") or raw.get("mlp_bias"):
        raise KrminiError(f"{where}: expected hidden_act silu and no attention/MLP biases")
    defaults = asdict(ModelConfig())
    values = {f: raw.get(f, defaults[f]) for f in SHARED_FIELDS if f != "rope_theta"}
    values["num_key_value_heads"] = raw.get("num_key_value_heads") or values["num_attention_heads"]
    config = ModelConfig(**values, rope_theta=_rope_theta(raw, where))
    if raw.get("head_dim") not in (None, config.head_dim):
        raise KrminiError(f"{where}: head_dim {raw['head_dim']} differs from hidden_size / num_attention_heads "
                          f"= {config.head_dim}; not supported")
    config.validate(where)
    return config


def _read_weights(src: Path) -> dict[str, torch.Tensor]:
    if (src / WEIGHTS_INDEX).is_file():
        index = json.loads((src / WEIGHTS_INDEX).read_text(encoding="utf-8"))
        files = sorted(set(index.get("weight_map", {}).values()))
    elif (src / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        raise KrminiError(f"{src}: no {WEIGHTS_FILE} (or sharded {WEIGHTS_INDEX}); only safetensors "
                          "checkpoints import (pickled .bin/.pt files are never loaded)")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            tensors.update(load_file(src / name))
        except (SafetensorError, OSError) as exc:
            raise KrminiError(f"{src / name}: cannot read weights ({exc})") from None
    return {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}


def load_hf(src: Path) -> tuple[LlamaModel, KoTokenizer]:
    """Our model (fp32) and tokenizer from a Hugging Face Llama directory."""
    config_path = src / "config.json"
    raw = read_json(config_path, "not found; expected a Hugging Face model directory")
    config = from_hf_config(raw, str(config_path))
    try:
        tokenizer = KoTokenizer.load(src)
    except KrminiError as exc:
        raise KrminiError(f"{src}: tokenizer not usable here ({exc}); krmini imports models with a "
                          "krmini-style tokenizer (<|pad|>, <|bos|>, <|eos|> specials)") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise KrminiError(f"{src}: tokenizer has {tokenizer.vocab_size} tokens, more than vocab_size {config.vocab_size}")
    tensors = _read_weights(src)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    model = LlamaModel(config)
    expected = ckpt.model_tensors(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise KrminiError(f"{src}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise KrminiError(f"{src}: {k} has shape {tuple(v.shape)}, config.json implies {tuple(expected[k].shape)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    return model.eval(), tokenizer


def import_hf(src: Path, out_run: Path, force: bool = False) -> Path:
    """Write a Hugging Face Llama directory as one of our runs (tokenizer/ + checkpoints/step_00000000)."""
    check_target(out_run, force, inputs=[src])  # before the (slow) load
    model, tokenizer = load_hf(src)
    with staged_dir(out_run, force, inputs=[src]) as tmp:
        tokenizer.save(tmp / TOKENIZER_DIR, model.config.max_position_embeddings)
        # A fresh optimizer keeps the checkpoint layout standard, so the run can be fine-tuned later.
        state = {"model_config": asdict(model.config), "imported_from": str(src)}
        path = ckpt.save_checkpoint(tmp / CHECKPOINTS_DIR, 0, model, build_optimizer(model, TrainConfig()), state, 1)
        tokenizer.save(path / TOKENIZER_DIR, model.config.max_position_embeddings)
    return out_run

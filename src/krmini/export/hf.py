"""Our model ↔ Hugging Face transformers directories.

Parameter names already match Hugging Face's Llama layout, so conversion is a config translation
(`krmini.export.hf_config`) plus a plain state-dict copy. `transformers` is an optional dependency
(`pip install krmini[hf]`) needed to export; importing reads config.json and safetensors directly and
needs only our code.

    OUT/config.json              LlamaConfig (or Qwen2/Qwen3Config for a model imported from those)
    OUT/model.safetensors        weights, HF names
    OUT/generation_config.json   bos/eos/pad ids and our default sampling (an imported model's own)
    OUT/tokenizer.json           the tokenizer as saved by `KoTokenizer.save`
    OUT/tokenizer_config.json

`krmini import hf` reads such a directory, ours or an open model's (Llama 3.x, SmolLM2, Qwen2/2.5,
Qwen3, Mistral): an open model keeps its own tokenizer, chat template and stop ids, saved in the
run's tokenizer/ directory with the files they came in.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from krmini.errors import KrminiError
from krmini.export.hf_config import export_family, from_hf_config, hf_config
from krmini.infer.load import LoadedModel
from krmini.model import LlamaModel, ModelConfig
from krmini.runs import CHECKPOINTS_DIR, TOKENIZER_DIR, check_target, read_json, run_dir, staged_dir
from krmini.tokenizer import KoTokenizer
from krmini.train import checkpoint as ckpt

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise KrminiError("transformers is not installed: pip install 'krmini[hf]'") from None
    return transformers


def _token_ids(tok: KoTokenizer) -> dict:
    """bos/eos/pad for config.json; an imported model's eos is its list of stop ids, as it came."""
    eos = sorted(tok.stop_ids) if tok.foreign is not None else tok.eos_id
    return {"bos_token_id": tok.bos_id, "eos_token_id": eos[0] if isinstance(eos, list) and len(eos) == 1 else eos,
            "pad_token_id": tok.pad_id}


def to_hf_model(model: LlamaModel, bos_id: int = 1, eos_id: int | list[int] = 2, pad_id: int = 0):
    """The transformers model (`LlamaForCausalLM`, or Qwen2/Qwen3) with our weights (same dtype), in eval mode."""
    tf = _transformers()
    cls = getattr(tf, export_family(model.config))
    hf = cls(hf_config(model.config, bos_id, eos_id, pad_id))
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise KrminiError(f"HF conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return hf.to(next(model.parameters()).dtype).eval()


def export_hf(loaded: LoadedModel, out: Path, force: bool = False) -> Path:
    """Write a directory that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` load as-is."""
    tf = _transformers()
    export_family(loaded.model.config)  # a model no transformers class computes is refused before anything is written
    tok = loaded.tokenizer
    model = loaded.model.float()
    context = model.config.max_position_embeddings
    ids = _token_ids(tok)
    with staged_dir(out, force, inputs=[run_dir(loaded.path)]) as tmp:
        hf = to_hf_model(model, ids["bos_token_id"], ids["eos_token_id"], ids["pad_token_id"])
        if tok.foreign is not None and tok.foreign.generation:
            hf.generation_config = tf.GenerationConfig(**tok.foreign.generation)
        else:
            hf.generation_config = tf.GenerationConfig(**ids, do_sample=True, temperature=0.8, top_k=50)
        hf.save_pretrained(tmp)
        tok.save(tmp, model_max_length=context)
    return out


def _read_weights(src: Path) -> dict[str, torch.Tensor]:
    if (src / WEIGHTS_INDEX).is_file():
        index = read_json(src / WEIGHTS_INDEX, "not found")
        files = sorted(set(index.get("weight_map", {}).values()))
        if not files:
            raise KrminiError(f"{src / WEIGHTS_INDEX}: weight_map: empty; expected the shard of each tensor")
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


def load_hf_tokenizer(src: Path, raw: dict) -> KoTokenizer:
    """The checkpoint's tokenizer. A foreign one without generation_config.json stops at config.json's
    token ids, which is what transformers derives its generation config from."""
    tokenizer = KoTokenizer.load(src)
    if tokenizer.foreign is not None and not tokenizer.foreign.generation:
        ids = {k: raw[k] for k in TOKEN_IDS if raw.get(k) is not None}
        if ids:
            tokenizer = KoTokenizer(tokenizer.tok, replace(tokenizer.foreign, generation=ids), src)
    return tokenizer


FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def read_hf(src: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], KoTokenizer]:
    """The model config, the weights as stored (names and shapes checked against config.json, dtype
    kept) and the tokenizer of a Hugging Face directory of a supported family."""
    config_path = src / "config.json"
    raw = read_json(config_path, "not found; expected a Hugging Face model directory")
    config = from_hf_config(raw, str(config_path))
    tokenizer = load_hf_tokenizer(src, raw)
    if tokenizer.vocab_size > config.vocab_size:
        raise KrminiError(f"{src}: tokenizer has {tokenizer.vocab_size} tokens, more than vocab_size {config.vocab_size}")
    tensors = _read_weights(src)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    with torch.device("meta"):  # shapes only: no memory for a model that is never run here
        expected = dict(LlamaModel(config).state_dict())
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise KrminiError(f"{src}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise KrminiError(f"{src}: {k} has shape {tuple(v.shape)}, config.json implies {tuple(expected[k].shape)}")
        if v.dtype not in FLOAT_DTYPES:
            raise KrminiError(f"{src}: {k} is {v.dtype}; expected float32, bfloat16 or float16 weights "
                              "(a quantized checkpoint does not import)")
    return config, tensors, tokenizer


def import_hf(src: Path, out_run: Path, force: bool = False) -> Path:
    """Write a Hugging Face directory as one of our runs (tokenizer/ + checkpoints/step_00000000).

    The checkpoint holds the weights alone, in the dtype they came in (a bf16 model stays bf16 on
    disk; every reader loads it in the dtype it is asked for): nothing has trained it yet, so it has no
    optimizer state, and fine-tuning starts from it with `init_from` like from any run."""
    check_target(out_run, force, inputs=[src])  # before the (slow) read
    config, tensors, tokenizer = read_hf(src)
    architectures = read_json(src / "config.json", "not found").get("architectures")
    with staged_dir(out_run, force, inputs=[src]) as tmp:
        tokenizer.save(tmp / TOKENIZER_DIR, config.max_position_embeddings)
        state = {"model_config": asdict(config), "imported_from": str(src), "architectures": architectures}
        ckpt.write_checkpoint(tmp / CHECKPOINTS_DIR, 0, tensors, None, state, 1, tmp / TOKENIZER_DIR)
    return out_run

"""Load a trained model and its tokenizer from a run or checkpoint directory: the one loader.

Every command that reads a model (generate, chat, serve, eval, report, quantize, export, bench)
calls `load_model`, so all of them open the same three kinds of checkpoint:

    plain   model.safetensors holds the float weights
    int8    state.json has "quantization": "int8" (written by `krmini quantize`)
    LoRA    state.json has run_config.lora: the weights hold the frozen base *and* the A/B
            matrices; the adapters are rebuilt, loaded and merged (W + (alpha / r)·B·A) here,
            so what the caller gets is a plain model that generates as fast as any other
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from krmini.errors import KrminiError
from krmini.infer.fast.quantize import METHOD, int8_skeleton, int8_tensors
from krmini.model import LlamaModel, ModelConfig
from krmini.runs import MODEL_FILE, STATE_FILE, TOKENIZER_DIR, read_state, resolve_checkpoint
from krmini.tokenizer import KoTokenizer
from krmini.train.checkpoint import checkpoint_model_config, load_model_weights
from krmini.train.lora import apply_lora, merge_lora, run_lora_config


@dataclass
class LoadedModel:
    model: LlamaModel
    tokenizer: KoTokenizer
    path: Path  # the checkpoint directory
    state: dict[str, Any] = field(default_factory=dict)  # its state.json


def _load_int8(model: LlamaModel, path: Path) -> None:
    file = path / MODEL_FILE
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError) as exc:
        raise KrminiError(f"{file}: cannot read weights ({exc})") from None
    expected = int8_tensors(model)
    wrong = sorted(k for k in expected if k not in tensors or tensors[k].shape != expected[k].shape)
    if wrong or set(tensors) - set(expected):
        raise KrminiError(f"{file}: int8 weights do not fit the model config (first mismatch: "
                          f"{(wrong or sorted(set(tensors) - set(expected)))[0]})")
    model.load_state_dict(tensors, strict=False)


def load_checkpoint_tokenizer(path: Path, config: ModelConfig) -> KoTokenizer:
    """The tokenizer saved inside a checkpoint, checked against the model's vocabulary."""
    tokenizer_dir = path / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise KrminiError(f"{path}: checkpoint has no tokenizer/ directory")
    tokenizer = KoTokenizer.load(tokenizer_dir)
    if tokenizer.vocab_size > config.vocab_size:
        raise KrminiError(f"{tokenizer_dir}: {tokenizer.vocab_size} tokens, more than the model's "
                          f"vocab_size {config.vocab_size}")
    return tokenizer


def checkpoint_model(path: Path, state: dict[str, Any]) -> LlamaModel:
    """The model a checkpoint holds, on the CPU in its saved dtype: plain, int8, or LoRA merged."""
    config = checkpoint_model_config(path, state)
    lora = run_lora_config(state, str(path / STATE_FILE))
    model = LlamaModel(config)
    if "quantization" in state:
        if state["quantization"] != METHOD:
            raise KrminiError(f"{path / STATE_FILE}: unknown quantization {state['quantization']!r}")
        if lora is not None:
            raise KrminiError(f"{path / STATE_FILE}: an int8 checkpoint with run_config.lora set; adapters cannot "
                              "be merged into int8 weights (merge the float run with `krmini lora merge`, then "
                              "quantize)")
        _load_int8(int8_skeleton(model), path)
        return model
    if lora is None:
        load_model_weights(model, path)
        return model
    apply_lora(model, lora)
    load_model_weights(model, path)
    return merge_lora(model)


def load_model(run_or_ckpt: str | Path, device: torch.device, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Resolve, verify (checksums) and load a checkpoint in eval mode on `device` in `dtype`."""
    path = resolve_checkpoint(run_or_ckpt)
    state = read_state(path)
    model = checkpoint_model(path, state)
    tokenizer = load_checkpoint_tokenizer(path, model.config)
    model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, tokenizer, path, state)

"""Load a trained model and its tokenizer from a run or checkpoint directory (float or int8)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from krmini.errors import KrminiError
from krmini.infer.fast.quantize import METHOD, int8_skeleton, int8_tensors
from krmini.model import LlamaModel, ModelConfig
from krmini.tokenizer import KoTokenizer
from krmini.train import checkpoint as ckpt


@dataclass
class LoadedModel:
    model: LlamaModel
    tokenizer: KoTokenizer
    path: Path  # the checkpoint directory


def _load_int8(model: LlamaModel, path: Path) -> None:
    file = path / ckpt.MODEL_FILE
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
    tokenizer_dir = path / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise KrminiError(f"{path}: checkpoint has no tokenizer/ directory")
    tokenizer = KoTokenizer.load(tokenizer_dir)
    if tokenizer.vocab_size > config.vocab_size:
        raise KrminiError(f"{tokenizer_dir}: {tokenizer.vocab_size} tokens, more than the model's "
                          f"vocab_size {config.vocab_size}")
    return tokenizer


def load_model(run_or_ckpt: str | Path, device: torch.device, dtype: torch.dtype = torch.float32) -> LoadedModel:
    path = ckpt.resolve_checkpoint(run_or_ckpt)
    state = ckpt.read_state(path)
    config = ckpt.checkpoint_model_config(path, state)
    tokenizer = load_checkpoint_tokenizer(path, config)
    model = LlamaModel(config)
    if state.get("quantization") == METHOD:
        _load_int8(int8_skeleton(model), path)
    elif "quantization" in state:
        raise KrminiError(f"{path / ckpt.STATE_FILE}: unknown quantization {state['quantization']!r}")
    else:
        ckpt.load_model_weights(model, path)
    model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, tokenizer, path)

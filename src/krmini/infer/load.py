"""Load a trained model and its tokenizer from a run or checkpoint directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from krmini.errors import KrminiError
from krmini.model import LlamaModel
from krmini.tokenizer import KoTokenizer
from krmini.train import checkpoint as ckpt


@dataclass
class LoadedModel:
    model: LlamaModel
    tokenizer: KoTokenizer
    path: Path  # the checkpoint directory


def load_model(run_or_ckpt: str | Path, device: torch.device, dtype: torch.dtype = torch.float32) -> LoadedModel:
    path = ckpt.resolve_checkpoint(run_or_ckpt)
    state = ckpt.read_state(path)
    config = ckpt.checkpoint_model_config(path, state)
    tokenizer_dir = path / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise KrminiError(f"{path}: checkpoint has no tokenizer/ directory")
    tokenizer = KoTokenizer.load(tokenizer_dir)
    if tokenizer.vocab_size > config.vocab_size:
        raise KrminiError(f"{tokenizer_dir}: {tokenizer.vocab_size} tokens, more than the model's "
                          f"vocab_size {config.vocab_size}")
    model = LlamaModel(config)
    ckpt.load_model_weights(model, path)
    model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, tokenizer, path)

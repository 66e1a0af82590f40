"""Load a chat model: a plain run, a LoRA run (adapters merged on load), or a base plus an adapter."""

from __future__ import annotations

from pathlib import Path

import torch

from krmini.chat.lora import LoraConfig, apply_lora, load_adapter, merge_lora
from krmini.chat.template import END
from krmini.config import from_dict
from krmini.errors import KrminiError
from krmini.infer.load import LoadedModel, load_checkpoint_tokenizer, load_model
from krmini.model import LlamaModel
from krmini.train import checkpoint as ckpt


def load_chat_model(run_or_ckpt: str | Path, device: torch.device, adapter: str | Path | None = None,
                    dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Merged, eval-mode model and its tokenizer (merging once makes generation as fast as a plain
    model); `krmini.infer.build.build_engine` makes an engine of it."""
    path = ckpt.resolve_checkpoint(run_or_ckpt)
    state = ckpt.read_state(path)
    lora = (state.get("run_config") or {}).get("lora")
    if lora is None and adapter is None:
        loaded = load_model(path, device, dtype)
    else:
        if lora is not None and adapter is not None:
            raise KrminiError(f"{path}: already a LoRA run; --adapter applies to a base model only")
        config = ckpt.checkpoint_model_config(path, state)
        model = LlamaModel(config)
        if lora is not None:
            apply_lora(model, from_dict(LoraConfig, lora, f"{path}/state.json:run_config.lora"))
            ckpt.load_model_weights(model, path)
        else:
            ckpt.load_model_weights(model, path)
            load_adapter(model, adapter)
        model = merge_lora(model).to(device=device, dtype=dtype).eval()
        loaded = LoadedModel(model, load_checkpoint_tokenizer(path, config), path)
    loaded.tokenizer.token_id(END)  # fails clearly for a tokenizer without chat tokens
    return loaded

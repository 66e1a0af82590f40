"""Load a chat model: a plain run, a LoRA run (merged by `load_model`), or a base plus an adapter."""

from __future__ import annotations

from pathlib import Path

import torch

from krmini.chat.template import check_chat_tokenizer
from krmini.errors import KrminiError
from krmini.infer.load import LoadedModel, load_model
from krmini.runs import STATE_FILE, lora_section, read_state, resolve_checkpoint
from krmini.train.lora import load_adapter, merge_lora


def load_base_with_adapter(base: str | Path, adapter: str | Path, device: torch.device,
                           dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A float base run with a separately saved adapter (`OUT/adapter/` of `krmini sft --lora`) merged in.

    The adapter is merged in fp32 on the CPU before the cast to `dtype`, like a LoRA run's own.
    """
    path = resolve_checkpoint(base)
    state = read_state(path)
    if lora_section(state) is not None:
        raise KrminiError(f"{path}: already a LoRA run; --adapter applies to a base model only")
    if "quantization" in state:
        raise KrminiError(f"{path / STATE_FILE}: an int8 checkpoint; --adapter needs the float base it was "
                          "trained on (adapters cannot be merged into int8 weights)")
    loaded = load_model(path, torch.device("cpu"))
    model = merge_lora(load_adapter(loaded.model, adapter)).to(device=device, dtype=dtype).eval()
    return LoadedModel(model, loaded.tokenizer, loaded.path, loaded.state)


def load_chat_model(run_or_ckpt: str | Path, device: torch.device, adapter: str | Path | None = None,
                    dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Merged, eval-mode model and its tokenizer (merging once makes generation as fast as a plain
    model); `krmini.infer.build.build_engine` makes an engine of it."""
    if adapter is None:
        loaded = load_model(run_or_ckpt, device, dtype)
    else:
        loaded = load_base_with_adapter(run_or_ckpt, adapter, device, dtype)
    check_chat_tokenizer(loaded.tokenizer)
    return loaded

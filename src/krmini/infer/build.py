"""`build_engine`: a run directory in, a ready engine out, with the speed layers this machine runs.

The one place where the plain engine and the speed layers meet, used by `krmini generate`, the chat
REPL and the server alike:

    load (plain, int8 or LoRA run) → dtype (`--dtype`, bf16 only where it runs) →
    `fast.accelerate` (fused layers, our kernels, the compiled step, each where its probe passed) → Engine
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from krmini.device import pick_device, pick_dtype
from krmini.infer.engine import Engine
from krmini.infer.fast import accelerate
from krmini.infer.load import LoadedModel, load_model

COMPILE_NOTICE = "--compile: the decode step compiles on first use (20-80 s on a 2-core CPU, less once cached)"


def build_engine(source: str | Path | LoadedModel, device: str | torch.device = "auto", dtype: str = "fp32",
                 compile: bool = False, stop_ids: set[int] | None = None) -> Engine:
    """An engine for a run or checkpoint directory (or an already loaded model, whose device and dtype
    are kept). The model is rebuilt for generation: it is not for training or saving afterwards."""
    if isinstance(source, LoadedModel):
        loaded = source
    else:
        where = device if isinstance(device, torch.device) else pick_device(device)
        loaded = load_model(source, where, pick_dtype(dtype, where))
    model, decoder = accelerate(loaded.model, compile)
    if decoder is not None:
        print(COMPILE_NOTICE, file=sys.stderr, flush=True)
    return Engine(model, loaded.tokenizer, stop_ids=stop_ids, decoder=decoder, source=loaded.path)

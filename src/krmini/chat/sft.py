"""Instruction tuning: the pretraining trainer, started from a base checkpoint, on masked chat batches.

Nothing here is a second training loop: `train()` gets `init_from` (the base weights), an optional
`lora` section, and `BatchSources` whose targets are -100 except on the assistant's tokens, so
resume, logging, precision and checkpoints behave exactly as in pretraining.
An imported open model (`krmini import hf`) is tuned in its own chat template: the mask comes from
`krmini.chat.template.training_sequences`, and its checkpoint of weights alone is only read.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file

from krmini.chat.data import chat_batches, prepare_chat
from krmini.chat.template import check_chat_tokenizer
from krmini.config import apply_overrides, from_dict, load_yaml
from krmini.data.shards import read_manifest
from krmini.errors import KrminiError
from krmini.runs import (
    ADAPTER_DIR,
    MODEL_FILE,
    TOKENIZER_DIR,
    check_output,
    lora_section,
    read_state,
    resolve_checkpoint,
    run_dir,
)
from krmini.tokenizer import KoTokenizer
from krmini.train.checkpoint import checkpoint_model_config
from krmini.train.config import RunConfig, resolve_config_path
from krmini.train.lora import LoraConfig, save_adapter
from krmini.train.trainer import train


def sft_config(base: str | Path, out: str | Path, config: str = "sft", overrides: list[str] | None = None,
               lora: LoraConfig | None = None) -> RunConfig:
    """The run config: the base's model section, the SFT train section, `init_from` = the base."""
    base_ckpt = resolve_checkpoint(base)
    state = read_state(base_ckpt)
    model = checkpoint_model_config(base_ckpt, state)
    if lora_section(state):
        raise KrminiError(f"{base_ckpt}: is a LoRA run; tune from its base, or merge it first")
    path = resolve_config_path(config)
    data = load_yaml(path)
    if "model" in data:
        raise KrminiError(f"{path}: an SFT config has no model section (the model comes from --base)")
    data["model"] = asdict(model)
    train_section = data.setdefault("train", {})
    train_section.setdefault("seq_len", min(512, model.max_position_embeddings))
    train_section.update(out_dir=str(out), data_dir=str(Path(out) / "data"), init_from=str(base_ckpt))
    if lora is not None:
        data["lora"] = asdict(lora)
    apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data, str(path))


def run_sft(base: str | Path, data: list[str], out: str | Path, config: str = "sft",
            overrides: list[str] | None = None, lora: LoraConfig | None = None, resume: bool = False,
            progress: bool = True, val_fraction: float = 0.02) -> dict:
    """Tokenize the chat data (once), train, and for LoRA runs also write the adapter alone."""
    if resume:  # the run's own saved config, so a resumed run trains exactly what it started
        saved = Path(out) / "config.yaml"
        data = apply_overrides(load_yaml(saved), [f"train.out_dir={out}", f"train.data_dir={Path(out) / 'data'}",
                                                  *(overrides or [])])
        cfg = from_dict(RunConfig, data, str(saved))
    else:
        cfg = sft_config(base, out, config, overrides, lora)
    base_ckpt = Path(cfg.train.init_from)
    check_output(out, "dir", [run_dir(base_ckpt)])  # never inside (or holding) the base it starts from
    tokenizer_dir = base_ckpt / TOKENIZER_DIR
    tokenizer = KoTokenizer.load(tokenizer_dir)
    check_chat_tokenizer(tokenizer)  # ours has the chat tokens; an imported model has its own template
    data_dir = Path(cfg.train.data_dir)
    if not (resume and (data_dir / "manifest.json").is_file()):
        prepare_chat(data, tokenizer, str(tokenizer_dir), data_dir, val_fraction, progress=progress)
    manifest = read_manifest(data_dir)
    batches = chat_batches(data_dir, cfg.train.seq_len, cfg.train.seed, tokenizer)
    if batches.train.truncated:
        print(f"note: {batches.train.truncated} training conversations are longer than seq_len "
              f"{cfg.train.seq_len} and were cut")
    result = train(cfg, resume=resume, progress=progress, batches=batches)
    result["report"] = manifest["report"]
    if cfg.lora is not None:
        final = resolve_checkpoint(out)
        adapter = save_adapter(load_file(final / MODEL_FILE), cfg.lora, Path(out) / ADAPTER_DIR, str(base_ckpt))
        print(f"adapter → {adapter} (load with --adapter onto {base_ckpt})")
    return result

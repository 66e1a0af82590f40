"""The names inside a run, and how a path given on the command line becomes one checkpoint.

    RUN/
        config.yaml, metrics.jsonl, tokenizer/, eval/, adapter/ (LoRA runs)
        checkpoints/
            step_00000600/
                model.safetensors       weights, Hugging Face names
                optimizer.safetensors   AdamW moments + RNG states (training checkpoints only)
                state.json              step, configs, sha256 of each file
                tokenizer/
            latest                      name of the newest complete checkpoint

A quantized copy or an imported model is a bare checkpoint directory (state.json at its top).
Every command accepts a run directory, its checkpoints/ folder or one checkpoint directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krmini.errors import KrminiError
from krmini.runs.staged import TMP_SUFFIX

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST = "latest"
CHECKPOINTS_DIR = "checkpoints"
TOKENIZER_DIR = "tokenizer"
CONFIG_FILE = "config.yaml"
ADAPTER_DIR = "adapter"
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Checkpoints that finished writing (a state.json, no temporary name), oldest first."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and not p.name.endswith(TMP_SUFFIX)
                  and (p / STATE_FILE).is_file())


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory / checkpoints folder (→ its latest checkpoint)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    root = path / CHECKPOINTS_DIR if (path / CHECKPOINTS_DIR).is_dir() else path
    latest = root / LATEST
    if latest.is_file():
        return root / latest.read_text(encoding="utf-8").strip()
    found = complete_checkpoints(root)
    if found:
        return found[-1]
    raise KrminiError(f"{path}: no checkpoint found (expected a run directory or a checkpoint directory)")


def run_dir(ckpt: Path) -> Path:
    """The run a checkpoint belongs to (RUN for RUN/checkpoints/step_N), or the checkpoint itself."""
    return ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS_DIR else ckpt


def lora_section(state: dict[str, Any]) -> dict[str, Any] | None:
    """The run_config.lora of a LoRA run (its weights hold unmerged adapters), else None."""
    return (state.get("run_config") or {}).get("lora")

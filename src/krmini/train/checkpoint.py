"""Checkpoints: safetensors only (nothing is ever unpickled), written atomically, checksummed.

    checkpoints/step_00000600/
        model.safetensors       weights, Hugging Face names
        optimizer.safetensors   AdamW moments + RNG states
        state.json              step, configs, optimizer hyper-parameters, sha256 of each file
    checkpoints/latest          name of the newest complete checkpoint

A checkpoint is built in `step_…tmp/` and renamed into place only when every file is flushed; then
`latest` is replaced atomically. A crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from krmini.config import from_dict
from krmini.errors import KrminiError
from krmini.model.config import ModelConfig

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST = "latest"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the tied head alias (safetensors refuses shared storage)."""
    sd = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"state.{pid}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    return tensors, {"param_groups": sd["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def save_checkpoint(ckpt_root: Path, step: int, model, optimizer, state: dict[str, Any], keep: int) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final, tmp = ckpt_root / name, ckpt_root / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(model_tensors(model), tmp / MODEL_FILE, metadata={"format": "pt"})
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    save_file({**opt_tensors, **rng_tensors()}, tmp / OPTIM_FILE)
    state = {**state, "step": step, "optimizer": opt_meta,
             "checksums": {f: _sha256(tmp / f) for f in (MODEL_FILE, OPTIM_FILE)}}
    (tmp / STATE_FILE).write_text(json.dumps(state, ensure_ascii=False, indent=2), encoding="utf-8")
    for f in (MODEL_FILE, OPTIM_FILE, STATE_FILE):
        with open(tmp / f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = ckpt_root / (LATEST + ".tmp")
    latest_tmp.write_text(name, encoding="utf-8")
    os.replace(latest_tmp, ckpt_root / LATEST)
    _fsync_dir(ckpt_root)
    for old in sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    return sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / STATE_FILE).is_file())


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (→ its latest checkpoint)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = root / LATEST
    if latest.is_file():
        return root / latest.read_text(encoding="utf-8").strip()
    found = complete_checkpoints(root) if root.is_dir() else []
    if found:
        return found[-1]
    raise KrminiError(f"{path}: no checkpoint found (expected a run directory or a checkpoint directory)")


def read_state(ckpt: Path, verify: bool = True) -> dict[str, Any]:
    """Load state.json and check every file against its recorded sha256."""
    state_path = ckpt / STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KrminiError(f"{state_path}: missing; the checkpoint is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KrminiError(f"{state_path}: corrupt (not valid JSON)") from None
    if verify:
        for f, digest in state.get("checksums", {}).items():
            if not (ckpt / f).is_file() or _sha256(ckpt / f) != digest:
                good = [p for p in complete_checkpoints(ckpt.parent) if p != ckpt]
                hint = f"; last other checkpoint: {good[-1]}" if good else ""
                raise KrminiError(f"{ckpt / f}: corrupt or truncated (checksum mismatch){hint}")
    return state


def checkpoint_model_config(ckpt: Path, state: dict[str, Any]) -> ModelConfig:
    if "model_config" not in state:
        raise KrminiError(f"{ckpt / STATE_FILE}: has no model_config")
    return from_dict(ModelConfig, state["model_config"], f"{ckpt / STATE_FILE}:model_config")


def load_model_weights(model: torch.nn.Module, ckpt: Path) -> None:
    path = ckpt / MODEL_FILE
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise KrminiError(f"{path}: cannot read weights ({exc})") from None
    expected = model_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise KrminiError(f"{path}: weights do not fit this model config (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise KrminiError(f"{path}: {k} has shape {tuple(v.shape)}, this model config expects "
                              f"{tuple(expected[k].shape)}; the checkpoint is from another config")
    model.load_state_dict(tensors, strict=False)


def load_training_state(ckpt: Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    tensors = load_file(ckpt / OPTIM_FILE)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)



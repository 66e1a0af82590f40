"""Training checkpoints: the model and optimizer tensors of a (possibly sharded) run, and back.

The format itself — file names, `latest`, checksums, resolution, staged writes — belongs to
`krmini.runs`; this module adds what only training needs: gathering full tensors from DDP/FSDP,
the optimizer state (AdamW moments, Muon momentum) and RNG states, and restoring them on `--resume`. Safetensors only: nothing is
ever unpickled.

A checkpoint is built in `step_….tmp/` and renamed into place only when every file is flushed; then
`latest` is replaced atomically. A crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from krmini.config import from_dict
from krmini.errors import KrminiError
from krmini.model.config import ModelConfig
from krmini.runs import (
    LATEST,
    MODEL_FILE,
    OPTIM_FILE,
    STATE_FILE,
    TOKENIZER_DIR,
    complete_checkpoints,
    fsync_dir,
    staged_dir,
    step_name,
    write_state,
    write_text_atomic,
)


def _full_state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full, unsharded CPU weights of a plain, DDP, compiled or FSDP-sharded model.

    Under FSDP this is a collective (every rank must call it) and only rank 0 gets the tensors.
    The tied head alias is dropped: safetensors refuses shared storage.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_full_state_options())
    if getattr(base_model(model).config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DDP / torch.compile wrappers (FSDP2 shards in place: no wrapper)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def optimizer_tensors(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as flat tensors keyed `state.<index>.<name>` (index = position in the param groups,
    those of every optimizer in order: Muon's then AdamW's with optimizer=muon).

    The index layout is what `optimizer.state_dict()` uses, whatever the wrapping: a run saved with
    FSDP on 8 GPUs resumes in one process, and the other way round. Collective under FSDP.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, optimizers, options=_full_state_options())
    index = {fqn: i for i, fqn in enumerate(fqn for g in sd.get("param_groups", []) for fqn in g["params"])}
    tensors = {}
    for fqn, state in sd.get("state", {}).items():
        for key, value in state.items():
            tensors[f"state.{index[fqn]}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    groups = [{**g, "params": [index[f] for f in g["params"]]} for g in sd.get("param_groups", [])]
    return tensors, {"param_groups": groups}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def _test_kill_point(step: int) -> None:
    """Test hook: SIGKILL this process between two checkpoint files at the step named by
    KRMINI_TEST_KILL_IN_CHECKPOINT, to prove a crash mid-write never damages a resume."""
    if os.environ.get("KRMINI_TEST_KILL_IN_CHECKPOINT") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def write_checkpoint(ckpt_root: Path, step: int, weights: dict[str, torch.Tensor],
                     optim: tuple[dict[str, torch.Tensor], dict[str, Any]] | None, state: dict[str, Any], keep: int,
                     tokenizer_dir: Path | None = None) -> Path:
    """Write gathered tensors (from `model_tensors` / `optimizer_tensors`) as `step_<step>`; rank 0 only.

    `optim` None writes the weights alone (an imported model: nothing to resume). `tokenizer_dir` is
    copied inside the staged directory, so a checkpoint never appears without it.
    """
    ckpt_root = Path(ckpt_root)
    name = step_name(step)
    with staged_dir(ckpt_root / name, force=True) as tmp:
        save_file(weights, tmp / MODEL_FILE, metadata={"format": "pt"})
        _test_kill_point(step)
        if optim is None:
            write_state(tmp, {**state, "step": step}, (MODEL_FILE,))
        else:
            opt_tensors, opt_meta = optim
            save_file({**opt_tensors, **rng_tensors()}, tmp / OPTIM_FILE)
            write_state(tmp, {**state, "step": step, "optimizer": opt_meta}, (MODEL_FILE, OPTIM_FILE))
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER_DIR)
    write_text_atomic(ckpt_root / LATEST, name)
    fsync_dir(ckpt_root)
    for old in complete_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return ckpt_root / name


def save_checkpoint(ckpt_root: Path, step: int, model, optimizers, state: dict[str, Any], keep: int) -> Path:
    """Single-process convenience: gather and write in one call."""
    return write_checkpoint(ckpt_root, step, model_tensors(model), optimizer_tensors(model, optimizers), state, keep)


def checkpoint_model_config(ckpt: Path, state: dict[str, Any]) -> ModelConfig:
    if "model_config" not in state:
        raise KrminiError(f"{ckpt / STATE_FILE}: has no model_config")
    return from_dict(ModelConfig, state["model_config"], f"{ckpt / STATE_FILE}:model_config")


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    path = ckpt / MODEL_FILE
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise KrminiError(f"{path}: cannot read weights ({exc})") from None


def load_model_weights(model: torch.nn.Module, ckpt: Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Load `ckpt`'s weights (or `tensors` read from it and changed) into `model`, checking names and shapes."""
    path = ckpt / MODEL_FILE
    tensors = read_weights(ckpt) if tensors is None else tensors
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


def check_resumable(ckpt: Path, state: dict[str, Any]) -> None:
    """A checkpoint written with its optimizer state (by training), not weights alone (an imported
    model, a merged LoRA run), which a new run starts from instead."""
    if "optimizer" not in state:
        raise KrminiError(f"{ckpt}: holds weights only (no optimizer state: an imported or merged model), so "
                          f"it cannot be resumed; start a new run from it (train.init_from={ckpt}, or "
                          "`krmini sft --base`)")


def load_training_state(ckpt: Path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                        state: dict[str, Any]) -> None:
    """Restore the optimizer state (into whatever wrapping the model has now) and the RNG states."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    path = ckpt / OPTIM_FILE
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise KrminiError(f"{path}: cannot read optimizer state ({exc})") from None
    layout = get_optimizer_state_dict(model, optimizers, options=_full_state_options())["param_groups"]
    fqns = [fqn for g in layout for fqn in g["params"]]
    saved_groups = state["optimizer"]["param_groups"]
    if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in layout]:
        raise KrminiError(f"{path}: optimizer state does not fit this model (parameter groups differ)")
    opt_state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(fqns[int(pid)], {})[name] = value
    groups = [{**saved, "params": current["params"]} for saved, current in zip(saved_groups, layout, strict=True)]
    set_optimizer_state_dict(model, optimizers, {"state": opt_state, "param_groups": groups},
                             options=_full_state_options())
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)

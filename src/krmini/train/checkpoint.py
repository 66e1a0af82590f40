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
import signal
import warnings
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


def optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW state as flat tensors keyed `state.<index>.<name>` (index = position in the param groups).

    The index layout is what `optimizer.state_dict()` uses, whatever the wrapping: a run saved with
    FSDP on 8 GPUs resumes in one process, and the other way round. Collective under FSDP.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, optimizer, options=_full_state_options())
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
                     optim: tuple[dict[str, torch.Tensor], dict[str, Any]], state: dict[str, Any], keep: int) -> Path:
    """Write gathered tensors (from `model_tensors` / `optimizer_tensors`) as `step_<step>`; rank 0 only."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final, tmp = ckpt_root / name, ckpt_root / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, tmp / MODEL_FILE, metadata={"format": "pt"})
    _test_kill_point(step)
    opt_tensors, opt_meta = optim
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
    for old in complete_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(ckpt_root: Path, step: int, model, optimizer, state: dict[str, Any], keep: int) -> Path:
    """Single-process convenience: gather and write in one call."""
    return write_checkpoint(ckpt_root, step, model_tensors(model), optimizer_tensors(model, optimizer), state, keep)


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
        bad = _corrupt_file(ckpt, state)
        if bad:
            good = [p for p in complete_checkpoints(ckpt.parent) if p != ckpt and _is_intact(p)]
            hint = f"; last good checkpoint: {good[-1]}" if good else "; no other intact checkpoint"
            raise KrminiError(f"{bad}: corrupt or truncated (checksum mismatch){hint}")
    return state


def _corrupt_file(ckpt: Path, state: dict[str, Any]) -> Path | None:
    for f, digest in state.get("checksums", {}).items():
        if not (ckpt / f).is_file() or _sha256(ckpt / f) != digest:
            return ckpt / f
    return None


def _is_intact(ckpt: Path) -> bool:
    try:
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return _corrupt_file(ckpt, state) is None


def last_good_checkpoint(ckpt_root: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint whose files match their checksums, for `--resume`.

    A damaged newer one (a disk error, a copy cut short) is skipped with a warning naming it, so a
    long run continues from the last good state instead of stopping; nothing is deleted.
    """
    found = complete_checkpoints(ckpt_root) if ckpt_root.is_dir() else []
    if not found:
        raise KrminiError(f"{ckpt_root}: --resume given but there is no checkpoint to resume from")
    for path in reversed(found):
        try:
            state = read_state(path)
        except KrminiError as exc:
            warnings.warn(f"skipping damaged checkpoint: {exc}", stacklevel=2)
            continue
        if path != found[-1]:
            warnings.warn(f"resuming from the last good checkpoint {path}", stacklevel=2)
        return path, state
    raise KrminiError(f"{ckpt_root}: every checkpoint is damaged (checksum mismatch or bad state.json); "
                      "cannot resume")


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


def load_training_state(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        state: dict[str, Any]) -> None:
    """Restore AdamW moments (into whatever wrapping the model has now) and the RNG states."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    path = ckpt / OPTIM_FILE
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise KrminiError(f"{path}: cannot read optimizer state ({exc})") from None
    layout = get_optimizer_state_dict(model, optimizer, options=_full_state_options())["param_groups"]
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
    set_optimizer_state_dict(model, optimizer, {"state": opt_state, "param_groups": groups},
                             options=_full_state_options())
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)

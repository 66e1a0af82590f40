"""`krmini lora merge RUN OUT`: fold a LoRA run's adapters into its weights and write a plain run.

A LoRA run already loads everywhere (`load_model` merges on load); merging once on disk is for
what comes after: handing the model to someone as an ordinary run, quantizing or exporting it
repeatedly without re-merging, or starting a new fine-tune from it (`krmini sft --base OUT`,
which refuses a LoRA run). OUT is written staged, as a run directory:

    OUT/config.yaml                           the run config with `lora: null`, out_dir = OUT
    OUT/tokenizer/
    OUT/checkpoints/step_<N>/model.safetensors    merged weights (same step as RUN's checkpoint)
    OUT/checkpoints/step_<N>/state.json           model_config, run_config, checksums, merged_from
    OUT/checkpoints/step_<N>/tokenizer/
    OUT/checkpoints/latest

RUN is only read: an OUT that is RUN, inside it, or holds it is refused before anything is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from krmini.errors import KrminiError
from krmini.infer.load import load_model
from krmini.runs import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LATEST,
    MODEL_FILE,
    STATE_FILE,
    TOKENIZER_DIR,
    check_target,
    lora_section,
    read_state,
    resolve_checkpoint,
    run_dir,
    staged_dir,
    step_name,
    write_state,
    write_text_atomic,
)
from krmini.train.checkpoint import model_tensors


def register(subparsers) -> None:
    p = subparsers.add_parser("lora", help="LoRA 어댑터 / LoRA run tools (merge)")
    sub = p.add_subparsers(dest="lora_command", metavar="ACTION", required=True)
    m = sub.add_parser("merge", help="fold a LoRA run's adapters into its weights → a plain run directory",
                       description="Write OUT as a plain run (merged weights, state.json with checksums, tokenizer/) "
                       "that every command opens like any other run. RUN is never changed.")
    m.add_argument("run", metavar="RUN", help="LoRA run or checkpoint directory (from `krmini sft --lora`)")
    m.add_argument("out", metavar="OUT", help="output run directory")
    m.add_argument("--force", action="store_true", help="replace OUT if it is not empty")
    m.set_defaults(func=run_merge)


def merge_run(run: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write the merged run to `out` and return the checkpoint directory inside it."""
    out = Path(out)
    source = resolve_checkpoint(run)
    state = read_state(source)
    if lora_section(state) is None:
        raise KrminiError(f"{source / STATE_FILE}: not a LoRA run (run_config.lora is not set); nothing to merge")
    inputs = [Path(run), run_dir(source)]
    check_target(out, force, inputs)  # before the (slow) load, so a refusal is immediate
    model = load_model(source, torch.device("cpu")).model
    run_config = {**state["run_config"], "lora": None}
    run_config["train"] = {**run_config.get("train", {}), "out_dir": str(out)}
    name = step_name(int(state.get("step", 0)))
    with staged_dir(out, force, inputs) as tmp:
        ckpt = tmp / CHECKPOINTS_DIR / name
        ckpt.mkdir(parents=True)
        save_file(model_tensors(model), ckpt / MODEL_FILE, metadata={"format": "pt"})
        shutil.copytree(source / TOKENIZER_DIR, ckpt / TOKENIZER_DIR)
        keep = {k: state[k] for k in ("step", "model_config", "precision") if k in state}
        write_state(ckpt, {**keep, "run_config": run_config, "merged_from": str(source),
                           "merged_lora": lora_section(state)}, (MODEL_FILE,))
        write_text_atomic(tmp / CHECKPOINTS_DIR / LATEST, name)
        shutil.copytree(source / TOKENIZER_DIR, tmp / TOKENIZER_DIR)
        write_text_atomic(tmp / CONFIG_FILE, yaml.safe_dump(run_config, allow_unicode=True, sort_keys=False))
    return out / CHECKPOINTS_DIR / name


def run_merge(args) -> int:
    ckpt = merge_run(args.run, args.out, args.force)
    print(f"merged {resolve_checkpoint(args.run)} → plain run {args.out}/ ({ckpt.name}; "
          f"krmini generate {args.out} --prompt ...)")
    return 0

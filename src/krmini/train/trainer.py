"""The pretraining loop: one file, top to bottom, in the order things happen.

    build model + optimizer → (resume) → for each step: warmup/cosine lr → grad-accumulated
    forward/backward under autocast → clip → AdamW → log → eval (loss, bits per byte) → checkpoint
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from krmini.chat.lora import apply_lora
from krmini.data.loader import TokenWindows
from krmini.data.shards import load_split, read_manifest
from krmini.device import autocast, pick_device, pick_precision
from krmini.errors import KrminiError
from krmini.model import LlamaModel
from krmini.tokenizer import KoTokenizer
from krmini.train import checkpoint as ckpt
from krmini.train.config import RunConfig
from krmini.train.metrics import MetricsLog, plot_loss
from krmini.train.optim import build_optimizer, lr_at


@dataclass
class BatchSources:
    """Where training and validation batches come from (see `TokenWindows` for the interface)."""

    train: TokenWindows
    val: TokenWindows
    val_bytes_per_token: float  # raw UTF-8 bytes per validation token, for bits per byte


def _format_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@torch.no_grad()
def evaluate(model: LlamaModel, windows: TokenWindows, bytes_per_token: float, cfg, device, precision) -> dict:
    """Mean loss over the first `eval_tokens` of the split, in order, and bits per byte.

    bits/byte = total nats / ln 2 / raw UTF-8 bytes. The bytes come from the manifest's count of the
    split's original text (bytes per token × tokens scored), not from decoded token strings.
    """
    model.eval()
    n_windows = min(windows.num_windows, max(1, cfg.eval_tokens // cfg.seq_len))
    total_nats, total_tokens = 0.0, 0
    for first in range(0, n_windows, cfg.batch_size):
        size = min(cfg.batch_size, n_windows - first)
        x, y = windows.batch_in_order(first, size, device)
        with autocast(device, precision):
            _, loss = model(x, y)
        scored = int((y != -100).sum())  # masked targets (chat prompts, padding) are not scored
        total_nats += loss.item() * scored
        total_tokens += scored
    model.train()
    mean = total_nats / total_tokens
    return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50)),
            "val_bpb": total_nats / math.log(2) / (total_tokens * bytes_per_token), "val_tokens": total_tokens}


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, batches: BatchSources | None = None) -> dict:
    """Run (or resume) a training run; returns the last logged metrics.

    `batches` replaces the pretraining shards with other batch sources (instruction tuning passes
    masked conversation batches); by default they are windows over `train.data_dir`.
    """
    t = cfg.train
    if not t.data_dir:
        raise KrminiError("train.data_dir: not set; point it at a directory made by `krmini prepare`")
    manifest = read_manifest(t.data_dir)
    if manifest["vocab_size"] > cfg.model.vocab_size:
        raise KrminiError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the vocabulary of "
                          f"{manifest['vocab_size']} that {t.data_dir} was tokenized with")
    out = Path(t.out_dir)
    ckpt_root = out / "checkpoints"
    device = pick_device(t.device)
    precision = pick_precision(t.precision, device)
    torch.manual_seed(t.seed)

    model = LlamaModel(cfg.model).to(device)
    if t.init_from and not resume:
        base = ckpt.resolve_checkpoint(t.init_from)
        ckpt.read_state(base)
        ckpt.load_model_weights(model, base)
        print(f"initialised from {base}")
    if cfg.lora:
        trainable, total = apply_lora(model, cfg.lora)
        print(f"LoRA r={cfg.lora.r}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")
    optimizer = build_optimizer(model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    start_step = 0
    if resume:
        found = ckpt.complete_checkpoints(ckpt_root) if ckpt_root.is_dir() else []
        if not found:
            raise KrminiError(f"{ckpt_root}: --resume given but there is no checkpoint to resume from")
        path = ckpt.resolve_checkpoint(out)
        state = ckpt.read_state(path)
        if state["model_config"] != asdict(cfg.model):
            raise KrminiError(f"{path}: checkpoint was trained with a different model config; "
                              f"resume with the same config or start a new out_dir")
        ckpt.load_model_weights(model, path)
        ckpt.load_training_state(path, optimizer, state)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_step = state["step"]
        print(f"resumed from {path} at step {start_step}")
    elif ckpt.complete_checkpoints(ckpt_root) if ckpt_root.is_dir() else False:
        raise KrminiError(f"{out}: already has checkpoints; pass --resume to continue or choose another out_dir")

    tokenizer_dir = out / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    if not tokenizer_dir.is_dir():
        KoTokenizer.load(manifest["tokenizer"]).save(tokenizer_dir, cfg.model.max_position_embeddings)
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), allow_unicode=True, sort_keys=False), encoding="utf-8")

    if batches is None:
        val_split = manifest["splits"]["val"]
        batches = BatchSources(TokenWindows(load_split(t.data_dir, "train"), t.seq_len, t.seed),
                               TokenWindows(load_split(t.data_dir, "val"), t.seq_len, t.seed),
                               val_split["bytes"] / val_split["tokens"])
    train_windows, val_windows, bytes_per_token = batches.train, batches.val, batches.val_bytes_per_token
    metrics = MetricsLog(out / "metrics.jsonl", truncate_after_step=start_step)
    tokens_per_step = t.batch_size * t.grad_accum * t.seq_len
    n_params = model.num_parameters()
    print(f"model: {n_params / 1e6:.2f}M parameters | device {device} | {precision} | "
          f"{tokens_per_step:,} tokens/step | {train_windows.num_windows:,} train windows")

    def save(step: int) -> None:
        state = {"model_config": asdict(cfg.model), "run_config": asdict(cfg), "precision": precision,
                 "scaler": scaler.state_dict() if scaler.is_enabled() else None}
        path = ckpt.save_checkpoint(ckpt_root, step, model, optimizer, state, t.keep_checkpoints)
        shutil.copytree(tokenizer_dir, path / "tokenizer", dirs_exist_ok=True)

    model.train()
    bar = tqdm(total=t.max_steps, initial=start_step, desc="train", dynamic_ncols=True, disable=not progress)
    last = {}
    window_start, window_tokens = time.perf_counter(), 0
    run_start, run_tokens = time.perf_counter(), 0
    for step in range(start_step, t.max_steps):
        lr = lr_at(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(t.grad_accum):
            x, y = train_windows.batch((step * t.grad_accum + micro) * t.batch_size, t.batch_size, device)
            with autocast(device, precision):
                _, loss = model(x, y)
            scaler.scale(loss / t.grad_accum).backward()
            loss_sum += loss.item()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip).item()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        window_tokens += tokens_per_step
        run_tokens += tokens_per_step
        done = step + 1
        bar.update(1)
        if done % t.log_interval == 0 or done == t.max_steps:
            now = time.perf_counter()
            tok_s = window_tokens / (now - window_start)
            eta = (t.max_steps - done) * tokens_per_step / max(run_tokens / (now - run_start), 1e-9)
            last = {"kind": "train", "step": done, "loss": loss_sum / t.grad_accum, "lr": lr,
                    "grad_norm": grad_norm, "tokens_per_s": tok_s, "tokens": done * tokens_per_step,
                    "epoch": train_windows.epoch_of(done * t.grad_accum * t.batch_size)}
            metrics.write(last)
            bar.set_postfix_str(f"loss {last['loss']:.3f} | lr {lr:.2e} | {tok_s:,.0f} tok/s | ETA {_format_seconds(eta)}")
            window_start, window_tokens = now, 0
        if done % t.eval_interval == 0 or done == t.max_steps:
            paused = time.perf_counter()
            result = evaluate(model, val_windows, bytes_per_token, t, device, precision)
            metrics.write({"kind": "eval", "step": done, **result})
            bar.write(f"step {done}: val loss {result['val_loss']:.4f} | ppl {result['val_ppl']:.2f} | "
                      f"bits/byte {result['val_bpb']:.4f}")
            last.update(result)
            window_start += time.perf_counter() - paused  # evaluation time is not training throughput
        if done % t.save_interval == 0 or done == t.max_steps:
            paused = time.perf_counter()
            save(done)
            window_start += time.perf_counter() - paused
    bar.close()
    plot_loss(out / "metrics.jsonl", out / "loss.png")
    return last

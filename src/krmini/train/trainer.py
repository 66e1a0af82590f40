"""The pretraining loop: one file, top to bottom, in the order things happen.

    join torchrun's group (if any) → check the data's tokenizer is the run's → build model
    → (init_from: another run's weights, resized to an extended tokenizer; resume: own weights) → DDP/FSDP
    → AdamW (or Muon + AdamW) → (resume: moments, RNG, scaler) → compile → for each step: scheduled lr →
    grad-accumulated forward/backward under autocast → clip → optimizer step → log → eval → checkpoint

Batches are a pure function of the step (see `TokenWindows`), so the data position needs no state
of its own: a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from krmini.data.loader import TokenWindows, split_windows
from krmini.data.shards import read_manifest
from krmini.device import autocast, pick_precision
from krmini.errors import KrminiError
from krmini.model import LlamaModel
from krmini.runs import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    TOKENIZER_DIR,
    complete_checkpoints,
    last_good_checkpoint,
    write_text_atomic,
)
from krmini.train import checkpoint as ckpt
from krmini.train import continued
from krmini.train import distributed as ddist
from krmini.train.config import RunConfig
from krmini.train.evaluation import evaluate
from krmini.train.flops import measure_matmul_peak, training_flops_per_token
from krmini.train.loggers import RunLoggers
from krmini.train.lora import apply_lora
from krmini.train.metrics import plot_loss, plot_training
from krmini.train.optim import build_optimizers, optimizer_step, set_step

__all__ = ["BatchSources", "evaluate", "train"]


@dataclass
class BatchSources:
    """Where training and validation batches come from (see `TokenWindows` for the interface)."""

    train: TokenWindows
    val: TokenWindows
    val_bytes_per_token: float  # raw UTF-8 bytes per validation token, for bits per byte


def format_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, batches: BatchSources | None = None) -> dict:
    """Run (or resume) a training run; returns the last logged metrics.

    `batches` replaces the pretraining shards with other batch sources (instruction tuning passes
    masked conversation batches); by default they are windows over `train.data_dir`. Under torchrun
    every process calls this; rank 0 alone writes logs and checkpoints.
    """
    joined_here = not torch.distributed.is_initialized()  # a caller's own process group is left alone
    ctx, device = ddist.init_distributed(cfg.train.device)
    try:
        return _train(cfg, resume, progress, batches, ctx, device)
    finally:
        if joined_here:
            ddist.shutdown_distributed()


def _train(cfg: RunConfig, resume: bool, progress: bool, batches: BatchSources | None,
           ctx: ddist.DistContext, device: torch.device) -> dict:
    t = cfg.train
    if not t.data_dir:
        raise KrminiError("train.data_dir: not set; point it at a directory made by `krmini prepare`")
    manifest = read_manifest(t.data_dir)
    out = Path(t.out_dir)
    run_tokenizer = continued.run_tokenizer(t, manifest, out, resume)
    tokenizer = continued.check_data_tokenizer(t.data_dir, manifest, run_tokenizer, t)
    if manifest["vocab_size"] > cfg.model.vocab_size:
        raise KrminiError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the vocabulary of "
                          f"{manifest['vocab_size']} that {t.data_dir} was tokenized with")
    offset, local_batch = ddist.local_slice(t.batch_size, ctx)
    ckpt_root = out / CHECKPOINTS_DIR
    precision = pick_precision(t.precision, device)
    torch.manual_seed(t.seed)

    model = LlamaModel(cfg.model).to(device)
    model.grad_checkpointing = t.grad_checkpointing
    if t.init_from and not resume:
        base = continued.init_weights(model, t)
        if ctx.is_main:
            print(f"initialised from {base}" + (f", moved to the tokenizer {t.tokenizer}" if t.tokenizer else ""))
    if cfg.lora:
        trainable, total = apply_lora(model, cfg.lora)
        if ctx.is_main:
            print(f"LoRA r={cfg.lora.r}: training {trainable:,} of {total:,} parameters "
                  f"({100 * trainable / total:.2f}%)")
    start_step, state, path = 0, None, None
    if resume:
        path, state = last_good_checkpoint(ckpt_root)
        ckpt.check_resumable(path, state)
        if state["model_config"] != asdict(cfg.model):
            raise KrminiError(f"{path}: checkpoint was trained with a different model config; "
                              f"resume with the same config or start a new out_dir")
        saved_optimizer = state.get("run_config", {}).get("train", {}).get("optimizer", "adamw")
        if saved_optimizer != t.optimizer:
            raise KrminiError(f"{path}: checkpoint was trained with train.optimizer={saved_optimizer}; "
                              f"resume with the same optimizer or start a new out_dir")
        ckpt.load_model_weights(model, path)
        start_step = state["step"]
    elif complete_checkpoints(ckpt_root):
        raise KrminiError(f"{out}: already has checkpoints; pass --resume to continue or choose another out_dir")
    model = ddist.wrap_model(model, t.strategy, ctx, device)
    optimizers = build_optimizers(model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if state is not None:
        ckpt.load_training_state(path, model, optimizers, state)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    step_model = torch.compile(model) if t.compile else model
    eval_model = model if t.strategy == "fsdp" else ckpt.base_model(model)

    tokenizer_dir = out / TOKENIZER_DIR
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not tokenizer_dir.is_dir():
            tokenizer.save(tokenizer_dir, cfg.model.max_position_embeddings)
        write_text_atomic(out / CONFIG_FILE, yaml.safe_dump(asdict(cfg), allow_unicode=True, sort_keys=False))
    if batches is None:
        train_windows, _ = split_windows(t.data_dir, "train", t.seq_len, t.seed)
        batches = BatchSources(train_windows, *split_windows(t.data_dir, "val", t.seq_len, t.seed))
    train_windows, val_windows, bytes_per_token = batches.train, batches.val, batches.val_bytes_per_token
    tokens_per_step = t.batch_size * t.grad_accum * t.seq_len
    flops_per_token = training_flops_per_token(cfg.model, t.seq_len)
    logs, peak = None, 0.0
    if ctx.is_main:
        if path is not None:
            print(f"resumed from {path} at step {start_step}")
        peak = t.peak_tflops * 1e12 or measure_matmul_peak(device, precision, size=1024, seconds=0.3)
        logs = RunLoggers(out, start_step, t.tensorboard, t.wandb, t.wandb_project, asdict(cfg))
        print(f"model: {ckpt.base_model(model).num_parameters() / 1e6:.2f}M parameters | device {device} × "
              f"{ctx.world_size} ({t.strategy if ctx.enabled else 'single process'}) | {precision} | "
              f"{tokens_per_step:,} tokens/step | {train_windows.num_windows:,} train windows | "
              f"peak {peak / 1e12:.2f} TFLOP/s per device")

    def save(step: int) -> None:
        weights, optim = ckpt.model_tensors(model), ckpt.optimizer_tensors(model, optimizers)
        if ctx.is_main:
            extra = {"model_config": asdict(cfg.model), "run_config": asdict(cfg), "precision": precision,
                     "world_size": ctx.world_size, "scaler": scaler.state_dict() if scaler.is_enabled() else None}
            ckpt.write_checkpoint(ckpt_root, step, weights, optim, extra, t.keep_checkpoints, tokenizer_dir)
        ddist.barrier(ctx)

    model.train()
    bar = tqdm(total=t.max_steps, initial=start_step, desc="train", dynamic_ncols=True,
               disable=not (progress and ctx.is_main))
    last = {}
    window_start, window_tokens = time.perf_counter(), 0
    run_start, run_tokens = time.perf_counter(), 0
    for step in range(start_step, t.max_steps):
        lr = set_step(optimizers, step, t)
        loss_sum = torch.zeros((), device=device)
        for micro in range(t.grad_accum):
            first = (step * t.grad_accum + micro) * t.batch_size + offset
            x, y = train_windows.batch(first, local_batch, device)
            with ddist.gradient_sync(model, micro == t.grad_accum - 1):
                with autocast(device, precision):
                    _, loss = step_model(x, y)
                scaler.scale(loss / t.grad_accum).backward()
            loss_sum += loss.detach()
        grad_norm = optimizer_step(model, optimizers, scaler, t.grad_clip)
        done = step + 1
        bar.update(1)
        if t.compile and step == start_step:
            # The first step traced and compiled the model: report it apart from the throughput.
            now = time.perf_counter()
            if logs:
                logs.write({"kind": "compile", "step": done, "compile_s": now - window_start})
            window_start = run_start = now
        else:
            window_tokens += tokens_per_step
            run_tokens += tokens_per_step
        if done % t.log_interval == 0 or done == t.max_steps:
            now = time.perf_counter()
            loss_value = ddist.mean_over_ranks(loss_sum.item() / t.grad_accum, ctx)
            tok_s = window_tokens / max(now - window_start, 1e-9)
            eta = (t.max_steps - done) * tokens_per_step / max(run_tokens / max(now - run_start, 1e-9), 1e-9)
            last = {"kind": "train", "step": done, "loss": loss_value, "lr": lr, "grad_norm": grad_norm.item(),
                    "tokens_per_s": tok_s, "mfu": tok_s * flops_per_token / ctx.world_size / peak if peak else 0.0,
                    "tokens": done * tokens_per_step,
                    "epoch": train_windows.epoch_of(done * t.grad_accum * t.batch_size)}
            if logs:
                logs.write(last)
            bar.set_postfix_str(f"loss {loss_value:.3f} | lr {lr:.2e} | {tok_s:,.0f} tok/s | "
                                f"MFU {last['mfu']:.0%} | ETA {format_seconds(eta)}")
            window_start, window_tokens = now, 0
        if done % t.eval_interval == 0 or done == t.max_steps:
            paused = time.perf_counter()
            result = evaluate(eval_model, val_windows, bytes_per_token, t, device, precision, ctx)
            if logs:
                logs.write({"kind": "eval", "step": done, **result})
                bar.write(f"step {done}: val loss {result['val_loss']:.4f} | ppl {result['val_ppl']:.2f} | "
                          f"bits/byte {result['val_bpb']:.4f}")
            last.update(result)
            window_start += time.perf_counter() - paused  # evaluation time is not training throughput
        if done % t.save_interval == 0 or done == t.max_steps:
            paused = time.perf_counter()
            save(done)
            window_start += time.perf_counter() - paused
    bar.close()
    if logs:
        logs.close()
        plot_loss(out / "metrics.jsonl", out / "loss.png")
        plot_training(out / "metrics.jsonl", out / "training.png")
    return last

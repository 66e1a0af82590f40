"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch

from krmini.train.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Decay 2-D weights (matmuls, embeddings); never norms or biases, whose scale is meaningful.

    The fused kernel updates every parameter in one pass (CUDA, and the CPU since PyTorch 2.4: for
    the 135M `small` preset on 2 cores a step of 37 ms instead of 130–290 ms with `foreach`); where
    a device has no fused kernel, `foreach` batches the updates per group. Both compute AdamW.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    unique = list({id(p): p for p in params}.values())  # tied weights appear once
    decay = [p for p in unique if p.dim() >= 2]
    no_decay = [p for p in unique if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.beta1, cfg.beta2)
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=True)
    except RuntimeError:  # no fused kernel for these parameters' device or type
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, foreach=True)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr × min_lr_ratio` at `max_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))

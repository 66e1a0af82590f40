"""The optimizers (AdamW, or Muon for the block matrices beside AdamW) and the learning-rate schedules.

Each param group keeps its own `base_lr`; the schedule is one factor per step (`lr_factor`) that
multiplies every group's base lr, so Muon's and AdamW's learning rates warm up and decay together.
"""

from __future__ import annotations

import math

import torch

from krmini.train.config import TrainConfig

MUON_MOMENTUM_START = 0.85  # where `muon_momentum_warmup_steps` starts (modded-nanogpt)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                    params: list[torch.nn.Parameter] | None = None) -> torch.optim.AdamW:
    """AdamW over `params` (default: every trainable parameter of `model`). Decay 2-D weights
    (matmuls, embeddings); never norms or biases, whose scale is meaningful.

    The fused kernel updates every parameter in one pass (CUDA, and the CPU since PyTorch 2.4: for
    the 135M `small` preset on 2 cores a step of 37 ms instead of 130–290 ms with `foreach`); where
    a device has no fused kernel, `foreach` batches the updates per group. Both compute AdamW.
    """
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    unique = list({id(p): p for p in params}.values())  # tied weights appear once
    decay = [p for p in unique if p.dim() >= 2]
    no_decay = [p for p in unique if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.beta1, cfg.beta2)
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=True)
    except RuntimeError:  # no fused kernel for these parameters' device or type
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, foreach=True)


def muon_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The hidden matrices Muon is for: every trainable 2-D weight inside a decoder block (q, k, v, o,
    gate, up, down). The embedding (a lookup) and the LM head (a classifier) are not hidden-layer
    maps and stay with AdamW, as Muon's authors recommend; so do norms and biases (not matrices)."""
    return [p for name, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and ".layers." in name]


def build_optimizers(model: torch.nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """`train.optimizer`: [AdamW], or [Muon over `muon_matrices`, AdamW over the rest].

    Muon (torch.optim.Muon) takes Nesterov momentum of the gradient and replaces it by the nearest
    semi-orthogonal matrix (5 Newton–Schulz steps), so every direction of the update moves by the
    same amount. For non-square matrices it uses adjust_lr_fn="original" (Keller Jordan's Muon,
    as in modded-nanogpt): lr × sqrt(max(1, rows / cols)), which gives each matrix the same update
    RMS per input unit and is the scale `muon_lr` ≈ 0.02 was tuned for. The alternative,
    "match_rms_adamw" (Moonshot), rescales to AdamW's update size and would want an AdamW-sized lr.
    """
    if cfg.optimizer == "adamw":
        optimizers: list[torch.optim.Optimizer] = [build_optimizer(model, cfg)]
    else:
        matrices = muon_matrices(model)
        taken = {id(p) for p in matrices}
        muon = torch.optim.Muon(matrices, lr=cfg.muon_lr, weight_decay=cfg.muon_weight_decay,
                                momentum=cfg.muon_momentum, nesterov=True, adjust_lr_fn="original")
        rest = build_optimizer(model, cfg, [p for p in model.parameters() if id(p) not in taken])
        optimizers = [muon, rest]
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def set_step(optimizers: list[torch.optim.Optimizer], step: int, cfg: TrainConfig) -> float:
    """Set every group's lr (base_lr × the schedule) and Muon's momentum for `step`; returns AdamW's lr."""
    factor = lr_factor(step, cfg)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor
            if isinstance(opt, torch.optim.Muon):
                group["momentum"] = muon_momentum_at(step, cfg)
    return cfg.lr * factor


def optimizer_step(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler,
                   grad_clip: float) -> torch.Tensor:
    """After backward: unscale (fp16), clip the global gradient norm, step every optimizer, clear the
    gradients. Returns the norm before clipping (a plain tensor also when FSDP shards it)."""
    for opt in optimizers:
        scaler.unscale_(opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return grad_norm


def muon_momentum_at(step: int, cfg: TrainConfig) -> float:
    """`muon_momentum`, or with `muon_momentum_warmup_steps` a linear ramp from 0.85 to it (modded-nanogpt:
    early gradients change fast, so a shorter memory helps at first)."""
    n = cfg.muon_momentum_warmup_steps
    if not n:
        return cfg.muon_momentum
    frac = min(1.0, step / n)
    return (1 - frac) * MUON_MOMENTUM_START + frac * cfg.muon_momentum


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The schedule at `step` as a fraction of the base lr: 1 at the peak, min_lr_ratio at max_steps.

    cosine: linear warmup, then cosine decay to min_lr_ratio.
    wsd (warmup–stable–decay; MiniCPM, nanochat's warmdown): linear warmup, constant, then a
    linear decay over the last `decay_fraction` of max_steps. Linear rather than 1-sqrt: it is what
    modded-nanogpt and nanochat use, so runs compare with theirs. Where the warmup reaches into
    the decay window the smaller of the two ramps wins.
    """
    warm = (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else 1.0
    r = cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * cfg.max_steps))
        left = min(1.0, max(0.0, (cfg.max_steps - step) / decay_steps))  # 1 until the decay starts, 0 at max_steps
        return min(warm, r + (1 - r) * left)
    if step < cfg.warmup_steps:
        return warm
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return r + 0.5 * (1 - r) * (1 + math.cos(math.pi * progress))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """AdamW's learning rate at `step`: `lr × lr_factor`."""
    return cfg.lr * lr_factor(step, cfg)

"""Validation loss and bits per byte, split over the data-parallel ranks."""

from __future__ import annotations

import math

import torch

from krmini.data.loader import TokenWindows
from krmini.device import autocast
from krmini.train.distributed import SINGLE_PROCESS, DistContext, sum_over_ranks


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: TokenWindows, bytes_per_token: float, cfg, device, precision,
             ctx: DistContext = SINGLE_PROCESS) -> dict:
    """Mean loss over the first `eval_tokens` of the split, in order, and bits per byte.

    bits/byte = total nats / ln 2 / raw UTF-8 bytes. The bytes come from the manifest's count of the
    split's original text (bytes per token × tokens scored), not from decoded token strings.
    Ranks score alternate batches and add up their sums, so the figure is the single-process one.
    Targets of -100 (masked positions of instruction data) are not scored.
    """
    model.eval()
    n_windows = min(windows.num_windows, max(1, cfg.eval_tokens // cfg.seq_len))
    starts = list(range(0, n_windows, cfg.batch_size))
    total_nats, total_tokens = 0.0, 0
    for round_first in range(0, len(starts), ctx.world_size):
        mine = round_first + ctx.rank
        if mine >= len(starts):
            # Under FSDP every rank must join each block's weight all-gather: score nothing, but run.
            model(*windows.batch_in_order(0, 1, device))
            continue
        size = min(cfg.batch_size, n_windows - starts[mine])
        x, y = windows.batch_in_order(starts[mine], size, device)
        with autocast(device, precision):
            _, loss = model(x, y)
        scored = int((y != -100).sum())
        total_nats += loss.item() * scored
        total_tokens += scored
    total_nats, total_tokens = sum_over_ranks([total_nats, float(total_tokens)], ctx)
    model.train()
    mean = total_nats / total_tokens
    return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50)),
            "val_bpb": total_nats / math.log(2) / (total_tokens * bytes_per_token), "val_tokens": int(total_tokens)}

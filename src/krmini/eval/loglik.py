"""Batched log-likelihood of continuations: the one primitive behind perplexity and KoBEST.

A request is (context ids, continuation ids); its score is log P(continuation | context), summed over
the continuation's tokens. Requests are sorted by length and packed into batches under a token
budget, padded on the right (a causal model never looks right, so padding changes nothing before
it). A context longer than the model's window keeps only its last tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from krmini.errors import KrminiError
from krmini.model import LlamaModel


@dataclass(frozen=True)
class Request:
    context: Sequence[int]  # at least one token (BOS when there is no text before)
    continuation: Sequence[int]


def _window(request: Request, context_len: int) -> tuple[list[int], int]:
    """Input ids (at most `context_len`) and how many of their last predictions are scored."""
    n = len(request.continuation)
    if not request.context or not n:
        raise KrminiError("log-likelihood request: context and continuation must both be non-empty")
    if n > context_len:
        raise KrminiError(f"continuation of {n} tokens is longer than the model's context of {context_len}")
    full = [*request.context, *request.continuation]
    return full[-(context_len + 1):-1], n


@torch.inference_mode()
def continuation_logprobs(model: LlamaModel, requests: Sequence[Request], max_batch_tokens: int = 4096,
                          progress: bool = False, desc: str = "score") -> list[float]:
    """Sum of log-probabilities (nats) of each request's continuation, in the order given."""
    context_len = model.config.max_position_embeddings
    device = next(model.parameters()).device
    windows = [_window(r, context_len) for r in requests]
    targets = [list(r.continuation) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: -len(windows[i][0]))
    scores = [0.0] * len(requests)
    bar = tqdm(total=len(requests), desc=desc, unit="seq", dynamic_ncols=True, disable=not progress)
    start = 0
    while start < len(order):
        width = len(windows[order[start]][0])
        batch = order[start:start + max(1, max_batch_tokens // width)]
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, :len(windows[i][0])] = torch.tensor(windows[i][0])
        logits, _ = model(ids.to(device))
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, i in enumerate(batch):
            length, n = len(windows[i][0]), windows[i][1]
            picked = logprobs[row, length - n:length].gather(-1, torch.tensor(targets[i], device=device)[:, None])
            scores[i] = picked.sum().item()
        bar.update(len(batch))
        start += len(batch)
    bar.close()
    return scores

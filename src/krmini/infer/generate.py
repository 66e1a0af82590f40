"""Token-by-token generation with the KV cache, and streaming text that never splits a character.

Prefill runs the whole prompt in one forward pass and fills the cache; each decode step then feeds
only the newest token. Sampling: temperature ≤ 0 means greedy; otherwise logits / temperature,
keep the top-k, keep the smallest set whose probability reaches top-p, sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from krmini.errors import KrminiError
from krmini.model import KVCache, LlamaModel
from krmini.tokenizer import KoTokenizer


@dataclass
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 0.8  # <= 0: greedy
    top_k: int = 50  # 0: off
    top_p: float = 1.0  # 1.0: off
    seed: int | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise KrminiError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise KrminiError(f"top_p: expected a value in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise KrminiError(f"top_k: expected >= 0, got {self.top_k}")


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) → next token ids (B,)."""
    if cfg.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop = (cum - sorted_logits.softmax(-1)) >= cfg.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate_ids(model: LlamaModel, prompt_ids: list[int], cfg: SamplingConfig,
                 stop_ids: set[int] = frozenset()) -> Iterator[int]:
    """Yield new token ids one at a time; stops at a stop id (not yielded) or max_new_tokens.

    New tokens are capped so prompt + output fits the context.
    """
    cfg.validate()
    if not prompt_ids:
        raise KrminiError("prompt: empty; give at least one token of text")
    context = model.config.max_position_embeddings
    if len(prompt_ids) >= context:
        raise KrminiError(f"prompt: {len(prompt_ids)} tokens, but the model's context is {context} "
                          f"(at most {context - 1} prompt tokens)")
    device = next(model.parameters()).device
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    steps = min(cfg.max_new_tokens, context - len(prompt_ids))
    cache = KVCache.empty(model.config, 1, len(prompt_ids) + steps, device, next(model.parameters()).dtype)
    logits, _ = model(torch.tensor([prompt_ids], device=device), cache=cache)
    for i in range(steps):
        token = sample_next(logits[:, -1], cfg, generator)
        tid = int(token)
        if tid in stop_ids:
            return
        yield tid
        if i + 1 < steps:
            logits, _ = model(token.view(1, 1), cache=cache)


class TextStream:
    """Turn token ids into text pieces, holding back bytes of a character that is not complete yet.

    A Hangul syllable is 3 UTF-8 bytes; with byte fallback a rare one arrives as three byte tokens.
    Decoding them one by one would print U+FFFD, so pending ids are kept until they decode cleanly.
    """

    def __init__(self, tokenizer: KoTokenizer) -> None:
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


def stream_text(model: LlamaModel, tokenizer: KoTokenizer, prompt: str, cfg: SamplingConfig,
                add_bos: bool = True) -> Iterator[str]:
    """Generate a continuation of `prompt`, yielding printable text pieces as they are produced."""
    ids = tokenizer.encode(prompt)
    if not ids:
        raise KrminiError("prompt: empty; give at least one character of text")
    if add_bos:
        ids = [tokenizer.bos_id, *ids]
    stream = TextStream(tokenizer)
    for tid in generate_ids(model, ids, cfg, stop_ids={tokenizer.eos_id}):
        piece = stream.push(tid)
        if piece:
            yield piece
    tail = stream.flush()
    if tail:
        yield tail


def generate_text(model: LlamaModel, tokenizer: KoTokenizer, prompt: str, cfg: SamplingConfig) -> str:
    return "".join(stream_text(model, tokenizer, prompt, cfg))

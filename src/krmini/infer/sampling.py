"""How the next token is chosen: penalties, temperature, top-k, top-p.

Order (as in most inference servers): repetition/frequency/presence penalties on the raw logits →
temperature ≤ 0 means greedy (argmax) → logits / temperature → keep the top-k → keep the smallest
set whose probability reaches top-p → sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from krmini.argtypes import SEED_LIMIT
from krmini.errors import KrminiError

TRUNCATE_MODES = ("error", "left")
# Below this a temperature is greedy in all but name, and logits / temperature would overflow fp32
# (1e-300 gave inf - inf = NaN probabilities); sampling divides by at least this.
MIN_TEMPERATURE = 1e-4
# Finite settings can still overflow fp32 (1e300 is inf there, and inf × 0 is NaN): penalties touch only
# the tokens they are about, and the logits are clipped to fp32's range before the softmax.
FP32_MAX, FP32_TINY = torch.finfo(torch.float32).max, torch.finfo(torch.float32).tiny
FLOAT_FIELDS = ("temperature", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty")
INT_FIELDS = ("max_new_tokens", "top_k", "n")
MAX_SAMPLES = 256  # n: each sample is a row of the batch with its own cache (2^64 rows were a hang)


@dataclass
class SamplingConfig:
    """Settings of one generation request (field names follow the OpenAI API where one exists)."""

    max_new_tokens: int = 128  # capped so prompt + output fits the context
    temperature: float = 0.8  # <= 0: greedy
    top_k: int = 50  # 0: off
    top_p: float = 1.0  # 1.0: off
    seed: int | None = None
    repetition_penalty: float = 1.0  # > 1 discourages any token already in prompt or output (CTRL/HF rule)
    frequency_penalty: float = 0.0  # subtract penalty × (times the token was generated)
    presence_penalty: float = 0.0  # subtract penalty once a token has been generated at all
    stop: tuple[str, ...] = ()  # stop strings: output ends before the first one (not included)
    n: int = 1  # samples per prompt (at most MAX_SAMPLES); they share one prefill
    truncate: str = "error"  # prompt too long: "error", or "left" = keep its last context - max_new_tokens

    def validate(self) -> None:
        """Every value finite, of its type and in range; the one check the CLI, the REPL, the server and
        the Python API share (one-line `KrminiError`s naming the field)."""
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise KrminiError(f"{name}: expected a finite number, got {value!r}")
        for name in INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise KrminiError(f"{name}: expected an integer, got {value!r}")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT):
            raise KrminiError(f"seed: expected an integer from 0 to 2^64-1, got {seed!r}")
        if self.max_new_tokens < 1:
            raise KrminiError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise KrminiError(f"top_p: expected a value in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise KrminiError(f"top_k: expected >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise KrminiError(f"repetition_penalty: expected > 0 (1 = off), got {self.repetition_penalty}")
        if not 1 <= self.n <= MAX_SAMPLES:
            raise KrminiError(f"n: expected >= 1 and at most {MAX_SAMPLES} samples per prompt, got {self.n}")
        if self.truncate not in TRUNCATE_MODES:
            raise KrminiError(f"truncate: expected one of {TRUNCATE_MODES}, got {self.truncate!r}")
        if not isinstance(self.stop, tuple | list) or any(not isinstance(s, str) or not s for s in self.stop):
            raise KrminiError(f"stop: expected a list of non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


def _fp32(value: float, low: float = -FP32_MAX) -> float:
    """A setting as a finite fp32 scalar: torch cannot make one of 2^64, and 1e300 becomes inf (0 × inf = NaN)."""
    return float(min(max(value, low), FP32_MAX))


def apply_penalties(logits: torch.Tensor, seen: torch.Tensor, counts: torch.Tensor,
                    cfg: SamplingConfig) -> torch.Tensor:
    """logits (B, V) float; seen (B, V) bool: in prompt or output; counts (B, V): times generated."""
    if cfg.repetition_penalty != 1.0:
        penalty = _fp32(cfg.repetition_penalty, FP32_TINY)
        scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, scaled, logits)
    generated = counts > 0
    if cfg.frequency_penalty:
        logits = logits - torch.where(generated, _fp32(cfg.frequency_penalty) * counts, 0.0)
    if cfg.presence_penalty:
        logits = logits - torch.where(generated, _fp32(cfg.presence_penalty), 0.0)
    return logits


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V), already penalised → next token ids (B,)."""
    if cfg.greedy:
        return logits.argmax(dim=-1)
    logits = (logits.float() / _fp32(max(cfg.temperature, MIN_TEMPERATURE))).clamp(-FP32_MAX, FP32_MAX)
    if cfg.top_k and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop = (probs.cumsum(-1) - probs) >= cfg.top_p
        drop[..., 0] = False  # a top_p below fp32's smallest number (1e-300 rounds to 0) would drop it too
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)

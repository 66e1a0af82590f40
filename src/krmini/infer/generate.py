"""The simple entry points, kept as thin wrappers over the engine (`krmini.infer.engine`).

`stream_text` / `generate_text` take one text prompt; `generate_ids` works on token ids without a
tokenizer. Sampling settings live in `SamplingConfig` (`krmini.infer.sampling`).
"""

from __future__ import annotations

from collections.abc import Iterator

from krmini.infer.engine import DecodeBatch, Decoder, Engine, fit_prompt
from krmini.infer.sampling import SamplingConfig, sample_next
from krmini.infer.textstream import TextStream
from krmini.model import LlamaModel
from krmini.tokenizer import KoTokenizer

__all__ = ["SamplingConfig", "TextStream", "generate_ids", "generate_text", "sample_next", "stream_text"]


def generate_ids(model: LlamaModel, prompt_ids: list[int], cfg: SamplingConfig,
                 stop_ids: set[int] = frozenset(), decoder: Decoder | None = None) -> Iterator[int]:
    """Yield new token ids one at a time; stops at a stop id (not yielded) or the length limit."""
    cfg.validate()
    ids = fit_prompt(list(prompt_ids), model.config.max_position_embeddings, cfg)
    batch = DecodeBatch(model, [ids], [cfg], stop_ids, decoder)
    while batch.running:
        for _, tid, _ in batch.step():
            if tid is not None:
                yield tid


def stream_text(model: LlamaModel, tokenizer: KoTokenizer, prompt: str, cfg: SamplingConfig,
                add_bos: bool = True) -> Iterator[str]:
    """Generate a continuation of `prompt`, yielding printable text pieces as they are produced."""
    return Engine(model, tokenizer, add_bos).stream(prompt, cfg)


def generate_text(model: LlamaModel, tokenizer: KoTokenizer, prompt: str, cfg: SamplingConfig) -> str:
    return Engine(model, tokenizer).generate(prompt, cfg)

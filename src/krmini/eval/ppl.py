"""Perplexity and bits per byte on held-out text, with a sliding window for long documents.

Loss per token depends on the tokenizer (a tokenizer with longer tokens has fewer, harder tokens), so
models with different vocabularies compare only per byte: bits/byte = total nats / ln 2 / UTF-8 bytes
of the scored text. Documents are read and cleaned exactly as `krmini prepare` does before
tokenizing, and each is scored as `<|bos|>` + its tokens (the end-of-document token is not scored:
it has no bytes). An imported model's documents start with its own BOS (`<|begin_of_text|>`, `<s>`);
one without a BOS (Qwen) uses the token its configuration names instead (`<|endoftext|>`), the
prefix lm-evaluation-harness gives such a model too.

A document longer than the context is scored in windows: the first window scores its whole length,
each next one moves on by `stride` tokens and scores only those, seeing up to `context − stride`
tokens before them. Every token is scored exactly once; a smaller stride gives each more context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from krmini.data.clean import clean_text
from krmini.data.readers import read_documents
from krmini.errors import KrminiError
from krmini.eval.loglik import Request, continuation_logprobs
from krmini.model import LlamaModel
from krmini.tokenizer import KoTokenizer

DEFAULT_PPL_DATA = Path("../shared/data/eval/heldout_wiki_korquad1_dev_contexts.jsonl")


@dataclass
class PerplexityResult:
    documents: int
    tokens: int
    bytes: int
    nats: float

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.bytes

    def as_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
                "tokens": self.tokens, "bytes": self.bytes, "documents": self.documents,
                "bytes_per_token": self.bytes / self.tokens}


def sliding_requests(ids: list[int], bos_id: int, context_len: int, stride: int) -> list[Request]:
    """Windows that together score every token of `ids` once, each seeing at most `context_len` inputs."""
    if not 0 < stride <= context_len:
        raise KrminiError(f"stride: expected 1..{context_len} (the model's context), got {stride}")
    seq = [bos_id, *ids]
    requests, done = [], 1
    while done < len(seq):
        end = min(len(seq), context_len + 1 if done == 1 else done + stride)
        begin = max(0, end - context_len - 1)
        requests.append(Request(seq[begin:done], seq[done:end]))
        done = end
    return requests


def read_eval_texts(paths: list[str | Path], text_field: str = "text", limit: int | None = None) -> list[str]:
    texts = []
    for doc in read_documents(paths, text_field):
        text = clean_text(doc.text)
        if text:
            texts.append(text)
        if limit and len(texts) >= limit:
            break
    if not texts:
        raise KrminiError(f"{', '.join(map(str, paths))}: no text to evaluate")
    return texts


def perplexity(model: LlamaModel, tokenizer: KoTokenizer, texts: list[str], stride: int | None = None,
               max_batch_tokens: int = 4096, progress: bool = False) -> PerplexityResult:
    context_len = model.config.max_position_embeddings
    stride = stride or max(1, context_len // 2)
    requests = [r for ids in tokenizer.encode_batch(texts)
                for r in sliding_requests(ids, tokenizer.bos_id, context_len, stride)]
    scores = continuation_logprobs(model, requests, max_batch_tokens, progress, desc="ppl")
    return PerplexityResult(documents=len(texts), tokens=sum(len(r.continuation) for r in requests),
                            bytes=sum(len(t.encode("utf-8")) for t in texts), nats=-sum(scores))

"""The per-chunk work (clean → filter → tokenize → MinHash) and running it on a pool of processes.

A chunk is a run of consecutive documents of one source. `process_chunk` is a pure function of the
chunk, so results are the same in any process; `ordered_results` keeps at most a few chunks in
flight per worker and hands results back in input order. Everything that must be decided
in order — exact and near duplicates, the mix, the split, writing — happens in the caller.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from krmini.data.clean import clean_text
from krmini.data.dedup import DedupConfig, MinHasher, ngram_hashes, repeated_ngram_ratio
from krmini.data.filters import FilterConfig, scrub_pii, strip_boilerplate, text_reason
from krmini.data.split import document_digest
from krmini.tokenizer.word_cache import WordCachedEncoder


@dataclass
class ChunkResult:
    reasons: list[str | None]  # per document: why it was dropped, or None
    digests: list[bytes]
    clean_bytes: list[int]
    tokens: np.ndarray  # kept candidates' ids back to back, each as BOS … EOS
    token_counts: np.ndarray  # per document (0 when dropped)
    band_keys: np.ndarray | None  # (documents, bands); None when near-dedup is off
    has_ngrams: np.ndarray  # whether a document had any 5-gram (else it is never a near duplicate)
    pii_documents: int = 0
    pii_replacements: int = 0
    boilerplate_documents: int = 0
    boilerplate_chars: int = 0


@dataclass
class WorkerSetup:
    tokenizer_json: str
    bos_id: int  # the tokenizer's document markers (ours: <|bos|> <|eos|>; an imported model's: its own)
    eos_id: int
    filters: FilterConfig
    dedup: DedupConfig
    dtype: str
    min_chars: int = 1
    max_chars: int = 1_000_000
    shard_index: int = 0
    num_shards: int = 1


class ChunkProcessor:
    def __init__(self, setup: WorkerSetup) -> None:
        from tokenizers import Tokenizer

        self.setup = setup
        self.tok = Tokenizer.from_str(setup.tokenizer_json)
        # Every text reaches the tokenizer through `clean_text`, already NFC, so a tokenizer's own NFC
        # pass would only repeat it (10-20% of tokenization time). The ids are the same. Any other
        # normalizer (an imported model's) stays.
        if json.loads(setup.tokenizer_json).get("normalizer") == {"type": "NFC"}:
            self.tok.normalizer = None
        self.encoder = WordCachedEncoder(self.tok)
        self.bos, self.eos = setup.bos_id, setup.eos_id
        self.hasher = MinHasher(setup.dedup) if setup.dedup.near else None

    def _owned(self, digest: bytes) -> bool:
        return int.from_bytes(digest[8:12], "little") % self.setup.num_shards == self.setup.shard_index

    def __call__(self, texts: list[str], wikitext: bool) -> ChunkResult:
        from krmini.data.wikipedia import wikitext_to_text

        f = self.setup.filters
        n = len(texts)
        result = ChunkResult([None] * n, [b""] * n, [0] * n, np.empty(0), np.zeros(n, np.int64), None,
                             np.zeros(n, bool))
        kept_texts, kept_index = [], []
        for i, raw in enumerate(texts):
            text = raw
            if wikitext:
                text = wikitext_to_text(raw)
                if text is None:
                    result.reasons[i] = "disambiguation"
                    continue
            text = clean_text(text)
            if f.strip_boilerplate:
                text, removed = strip_boilerplate(text)
                if removed:
                    result.boilerplate_documents += 1
                    result.boilerplate_chars += removed
                    if not text:
                        result.reasons[i] = "boilerplate"
                        continue
            if f.scrub_pii:
                text, replaced = scrub_pii(text)
                if replaced:
                    result.pii_documents += 1
                    result.pii_replacements += replaced
            digest = document_digest(text)
            result.digests[i] = digest
            if not self._owned(digest):
                result.reasons[i] = "other_machine"
                continue
            result.reasons[i] = text_reason(text, f, self.setup.min_chars, self.setup.max_chars)
            if result.reasons[i] is None:
                result.clean_bytes[i] = len(text.encode("utf-8"))
                kept_texts.append(text)
                kept_index.append(i)
        self._tokenize(result, kept_texts, np.asarray(kept_index, np.int64))
        return result

    def _tokenize(self, result: ChunkResult, texts: list[str], index: np.ndarray) -> None:
        body, lengths = self.encoder.encode_texts(texts)
        f = self.setup.filters
        if self.hasher is not None or f.max_repeated_ngram_ratio:
            hashes, doc = ngram_hashes(body, lengths)
            if f.max_repeated_ngram_ratio:
                ratio = repeated_ngram_ratio(hashes, doc, len(texts))
                bad = ratio > f.max_repeated_ngram_ratio
                for j in np.flatnonzero(bad):
                    result.reasons[index[j]] = "repeated_ngrams"
                    result.clean_bytes[index[j]] = 0
                if bad.any():
                    keep = ~bad[doc]
                    hashes, doc = hashes[keep], doc[keep]
                    body = body[np.repeat(~bad, lengths)]
                    index, lengths = index[~bad], lengths[~bad]
                    doc = (np.cumsum(~bad) - 1)[doc]
            if self.hasher is not None:
                keys = np.zeros((len(result.reasons), self.hasher.bands), np.uint64)
                keys[index] = self.hasher.band_keys(self.hasher.signatures(hashes, doc, len(index)))
                result.band_keys = keys
                result.has_ngrams[index] = np.bincount(doc, minlength=len(index)) > 0
        # each document as BOS, its ids, EOS
        starts = np.cumsum(lengths + 2) - lengths - 2
        out = np.empty(len(body) + 2 * len(lengths), dtype=self.setup.dtype)
        out[starts] = self.bos
        out[starts + lengths + 1] = self.eos
        out[np.arange(len(body)) + np.repeat(2 * np.arange(len(lengths)) + 1, lengths)] = body
        result.tokens = out
        result.token_counts[index] = lengths + 2


_processor: ChunkProcessor | None = None


def _init_worker(setup: WorkerSetup) -> None:
    global _processor
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process
    _processor = ChunkProcessor(setup)


def _run_chunk(args: tuple[list[str], bool]) -> ChunkResult:
    return _processor(*args)


def ordered_results(chunks: Iterable[tuple], setup: WorkerSetup, workers: int) -> Iterator[tuple[tuple, ChunkResult]]:
    """(chunk, result) pairs in input order. Each chunk is (texts, wikitext, *anything the caller keeps)."""
    if workers <= 1:
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker means one core, for honest figures
        try:
            processor = ChunkProcessor(setup)
            for chunk in chunks:
                yield chunk, processor(chunk[0], chunk[1])
        finally:
            if previous is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(setup,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(_run_chunk, ((chunk[0], chunk[1]),))))
            if len(pending) >= 3 * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()

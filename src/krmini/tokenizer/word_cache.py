"""Encoding a corpus word by word, each distinct word once: the same ids as `tokenizers`, in ~3/4 of the time.

`tokenizers` redoes its work for every word it has seen before: splitting, BPE merges (its cache
keeps 10,000 words; Korean text has many more frequent ones) and per-token bookkeeping (strings,
offsets; about a third of its time was the C allocator). Our pipeline makes a space a hard
boundary — Metaspace turns it into "▁" and starts a new piece there, and nothing afterwards joins
pieces — so a text's ids are the ids of its space-separated words, each encoded alone, back to back. Here each new word
is encoded once (all of a batch's new words in one call, joined by spaces) and remembered.

Only for tokenizers built like ours (`applies`); any other pipeline is encoded text by text.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
from tokenizers import Tokenizer

from krmini.tokenizer.tokenizer import META

CUTTERS = ("Digits", "Punctuation", "Split")  # steps that only cut a piece into smaller ones (unless they remove text)
MAX_WORDS = 250_000  # remembered words (~50 MB a process); past this, or past MAX_TOKENS ids, memory starts over
MAX_TOKENS = 1 << 22


def applies(tok: Tokenizer) -> bool:
    """Whether a space always starts a new piece for `tok`, so that words can be encoded alone.

    True for this project's pipelines: NFC or no normalizer, Metaspace("▁", split, never prepend),
    then only steps that cut pieces further (Digits, Punctuation, a regex Split: a Sequence applies
    them to each piece alone, so they never see across a space), then BPE without dropout, and "▁"
    in the vocabulary (a word's first token starts with it, which is how a batch of joined words is
    cut back into words).
    """
    spec = json.loads(tok.to_str())
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    normalizer = spec.get("normalizer")
    model = spec.get("model", {})
    return (bool(steps) and steps[0].get("type") == "Metaspace" and steps[0].get("replacement") == META
            and steps[0].get("split", True) and steps[0].get("prepend_scheme") == "never"
            and all(step.get("type") in CUTTERS and step.get("behavior") != "Removed" for step in steps[1:])
            and (normalizer is None or normalizer.get("type") == "NFC")
            and model.get("type") == "BPE" and model.get("dropout") is None
            and spec.get("truncation") is None and tok.token_to_id(META) is not None)


class WordCachedEncoder:
    """`encode_texts(texts)` → (ids back to back, tokens per text), equal to `tok.encode` text by text."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.by_words = applies(tok)
        vocab = tok.get_vocab(with_added_tokens=True)
        self.word_start = np.zeros(max(vocab.values()) + 1, bool)  # ids whose token begins a word
        self.word_start[[i for t, i in vocab.items() if t.startswith(META)]] = True
        self._forget()

    def _forget(self) -> None:
        self.known: dict[str | tuple[str], int] = {}  # a word → its entry, numbered in the order first seen
        # entry e's ids are store[starts[e] : starts[e] + lengths[e]]
        self.starts = np.empty(1 << 16, np.int64)
        self.lengths = np.empty(1 << 16, np.int64)
        self.used = 0
        self.store = np.empty(1 << 18, np.uint32)

    def encode_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not self.by_words:
            encoded = [np.asarray(e.ids, np.uint32) for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]
            lengths = np.array([len(e) for e in encoded], np.int64)
            return (np.concatenate(encoded) if encoded else np.empty(0, np.uint32)), lengths
        if len(self.known) > MAX_WORDS or self.used > MAX_TOKENS:
            self._forget()
        # Every text as a list of words. A word after a space is the str itself (it stands for " " + word);
        # a text's first word is a 1-tuple, since it has no space before it. A text that already holds
        # "▁" is one 1-tuple: Metaspace also splits there, which would break the cut by "▁" below.
        # Entries are numbered in the order words are first seen, so this batch's new words are the
        # last ones added to `known`.
        known, seen = self.known, len(self.known)
        add = known.setdefault
        order: list[int] = []
        counts = np.empty(len(texts), np.int64)
        for i, text in enumerate(texts):
            words = text.split(" ") if META not in text else [text]
            words[0] = (words[0],)
            order += [add(w, len(known)) for w in words]
            counts[i] = len(words)
        self._encode_new(list(itertools.islice(reversed(known), len(known) - seen))[::-1], seen)
        e = np.asarray(order, np.int64)
        lengths, starts = self.lengths[e], self.starts[e]
        total = int(lengths.sum())
        ids = self.store[np.arange(total) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)]
        per_text = np.add.reduceat(lengths, np.cumsum(counts) - counts) if len(texts) else np.empty(0, np.int64)
        return ids, per_text

    def _encode_new(self, words: list[str | tuple[str]], first: int) -> None:
        """Encode the words just added to `known` (entries `first` onwards) into the store."""
        end = first + len(words)
        self.starts, self.lengths = _room(self.starts, end), _room(self.lengths, end)
        spaced = [j for j, w in enumerate(words) if not isinstance(w, tuple)]
        heads = [j for j, w in enumerate(words) if isinstance(w, tuple)]
        if spaced:
            joined = self.tok.encode_batch_fast([" " + " ".join([words[j] for j in spaced])],
                                                add_special_tokens=False)[0]
            ids = np.asarray(joined.ids, np.uint32)
            cuts = np.flatnonzero(self.word_start[ids])
            if len(cuts) != len(spaced) or cuts[0] != 0:
                raise RuntimeError(f"word cache: {len(spaced)} words gave {len(cuts)} word starts")
            self._store(first + np.asarray(spaced, np.int64), ids, np.diff(cuts, append=len(ids)))
        if heads:
            pieces = [e.ids for e in self.tok.encode_batch_fast([words[j][0] for j in heads], add_special_tokens=False)]
            ids = np.fromiter((i for p in pieces for i in p), np.uint32)
            self._store(first + np.asarray(heads, np.int64), ids, np.array([len(p) for p in pieces], np.int64))

    def _store(self, entries: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> None:
        self.store = _room(self.store, self.used + len(ids))
        self.store[self.used : self.used + len(ids)] = ids
        self.starts[entries] = self.used + np.cumsum(lengths) - lengths
        self.lengths[entries] = lengths
        self.used += len(ids)


def _room(array: np.ndarray, size: int) -> np.ndarray:
    """`array`, or a copy twice as large (or as large as needed), so that it holds `size` items."""
    if size <= len(array):
        return array
    grown = np.empty(max(size, 2 * len(array)), array.dtype)
    grown[: len(array)] = array
    return grown

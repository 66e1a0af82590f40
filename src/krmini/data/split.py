"""Deterministic train/val/test assignment by content hash.

A document's split depends only on its text, so re-running `prepare` — with more data, other
workers, in another order — never moves a document between splits (no test leakage into train).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from krmini.data.clean import clean_text
from krmini.data.filters import scrub_pii, strip_boilerplate

SPLITS = ("train", "val", "test")


def document_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def split_of(digest: bytes, val_fraction: float = 0.01, test_fraction: float = 0.01) -> str:
    """By default 98% train, 1% val, 1% test (fractions resolved to 1/10,000)."""
    bucket = int.from_bytes(digest[:8], "little") % 10_000
    if bucket < round(test_fraction * 10_000):
        return "test"
    if bucket < round((test_fraction + val_fraction) * 10_000):
        return "val"
    return "train"


def texts_in_split(texts: Iterable[str], prepare_config: dict, split: str) -> Iterator[str]:
    """The documents of `texts` that `krmini prepare` with `prepare_config` (a manifest's "config") puts in
    `split`, as it wrote them: cleaned, stripped and scrubbed as it did, then assigned by the same hash.
    A document assigned to test or val is never in train, whatever the filters did with it: raw files
    can then serve as held-out text for a model trained on that data."""
    filters = prepare_config.get("filters") or {}
    val, test = prepare_config.get("val_fraction", 0.01), prepare_config.get("test_fraction", 0.01)
    for raw in texts:
        text = clean_text(raw)
        if filters.get("strip_boilerplate"):
            text, _ = strip_boilerplate(text)
        if filters.get("scrub_pii"):
            text, _ = scrub_pii(text)
        if text and split_of(document_digest(text), val, test) == split:
            yield text

"""Deterministic train/val/test assignment by content hash.

A document's split depends only on its text, so re-running `prepare` — with more data, other
workers, in another order — never moves a document between splits (no test leakage into train).
"""

from __future__ import annotations

import hashlib

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

"""`krmini prepare`: corpus files → clean → dedupe → split → tokenize → shards + manifest.

Everything streams: memory stays flat in corpus size except for one 16-byte digest per kept
document (the exact-duplicate set).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from krmini.data.clean import LengthFilter, clean_text
from krmini.data.readers import read_documents
from krmini.data.shards import FORMAT_VERSION, ShardWriter, SplitStats, token_dtype, write_manifest
from krmini.data.split import SPLITS, document_digest, split_of
from krmini.errors import KrminiError
from krmini.tokenizer import KoTokenizer


@dataclass
class PrepareConfig:
    text_field: str = "text"
    min_chars: int = 1
    max_chars: int = 1_000_000
    val_fraction: float = 0.01
    test_fraction: float = 0.01
    shard_tokens: int = 100_000_000
    batch_documents: int = 512


def clean_documents(inputs: list, config: PrepareConfig, counts: Counter) -> Iterator[tuple[str, bytes]]:
    """Yield (clean text, digest) for every document that survives cleaning, filters and dedupe.

    `counts` is filled with how many documents each step removed, for the manifest.
    """
    length = LengthFilter(config.min_chars, config.max_chars)
    seen: set[bytes] = set()
    for doc in read_documents(inputs, config.text_field):
        counts["read"] += 1
        text = clean_text(doc.text)
        reason = "empty" if not text else length.reason(text)
        if reason is None:
            digest = document_digest(text)
            if digest in seen:
                reason = "duplicate"
            else:
                seen.add(digest)
                counts["kept"] += 1
                yield text, digest
                continue
        counts[reason] += 1


def prepare(inputs: list, tokenizer: KoTokenizer, tokenizer_path: str, out_dir: str | Path,
            config: PrepareConfig | None = None, progress: bool = True) -> dict:
    config = config or PrepareConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    stats = {s: SplitStats() for s in SPLITS}
    writers = {s: ShardWriter(out, s, dtype, config.shard_tokens, stats[s]) for s in SPLITS}
    counts: Counter = Counter()
    bar = tqdm(desc="prepare", unit="doc", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()

    def flush(batch: list[tuple[str, bytes]]) -> None:
        for (text, digest), ids in zip(batch, tokenizer.encode_batch([t for t, _ in batch]), strict=True):
            tokens = np.asarray([tokenizer.bos_id, *ids, tokenizer.eos_id])
            writers[split_of(digest, config.val_fraction, config.test_fraction)].write(tokens, len(text.encode("utf-8")))
        bar.update(len(batch))
        mb = sum(s.bytes for s in stats.values()) / 1e6
        bar.set_postfix_str(f"{mb:.1f} MB, {mb / max(time.perf_counter() - start, 1e-9):.1f} MB/s")

    batch: list[tuple[str, bytes]] = []
    for item in clean_documents(inputs, config, counts):
        batch.append(item)
        if len(batch) >= config.batch_documents:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    bar.close()
    for w in writers.values():
        w.close()
    if counts["kept"] == 0:
        raise KrminiError(f"{', '.join(map(str, inputs))}: no usable documents (read {counts['read']}, "
                          f"removed: {dict(counts - Counter(read=counts['read']))})")
    for split in ("train", "val"):
        if stats[split].documents == 0:
            raise KrminiError(f"{', '.join(map(str, inputs))}: only {counts['kept']} documents, none fell in the "
                              f"{split} split (val is chosen by hash); give a larger corpus or more, shorter documents")
    manifest = {
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "tokenizer": str(tokenizer_path),
        "inputs": [str(p) for p in inputs],
        "config": asdict(config),
        "documents": dict(counts),
        "splits": {s: asdict(v) for s, v in stats.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_manifest(out, manifest)
    return manifest

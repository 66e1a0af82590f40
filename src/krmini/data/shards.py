"""Binary token shards and their manifest.

A shard is a flat little-endian array of token ids (`uint16`, or `uint32` when the vocabulary does
not fit in 16 bits): documents back to back, each wrapped as BOS … EOS. Training memory-maps them.
`manifest.json` records what is in each split (documents, raw UTF-8 bytes, tokens) — the byte count
is what turns a loss into bits per byte. Every file is a staged write (`krmini.runs`): built under
a temporary name and renamed when complete, so a crash never leaves a shard that looks whole.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from krmini.errors import KrminiError
from krmini.runs import read_json, staged_file, write_json_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


@dataclass
class SplitStats:
    documents: int = 0
    bytes: int = 0
    tokens: int = 0
    shards: list[str] = field(default_factory=list)


class ShardWriter:
    """Append documents' token ids to `{prefix}{split}_{index:05d}.bin`, a new shard every `shard_tokens`."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int, stats: SplitStats,
                 prefix: str = "") -> None:
        self.out_dir, self.split, self.dtype, self.shard_tokens, self.stats = out_dir, split, dtype, shard_tokens, stats
        self.prefix = prefix  # names one machine's shards apart from another's (`krmini prepare --shard-index`)
        self._fh = None
        self._stage: ExitStack | None = None  # the open shard's staged write, committed by close()
        self._written = 0

    def _open(self) -> None:
        name = f"{self.prefix}{self.split}_{len(self.stats.shards):05d}.bin"
        self._stage = ExitStack()
        tmp = self._stage.enter_context(staged_file(self.out_dir / name, force=True))
        self._fh = open(tmp, "wb")  # noqa: SIM115 (kept open across write() calls)
        self._written = 0
        self.stats.shards.append(name)

    def write(self, ids: np.ndarray, n_bytes: int) -> None:
        if self._fh is None or self._written >= self.shard_tokens:
            self.close()
            self._open()
        self._fh.write(ids.astype(self.dtype, copy=False).tobytes())
        self._written += len(ids)
        self.stats.documents += 1
        self.stats.bytes += n_bytes
        self.stats.tokens += len(ids)

    def close(self) -> None:
        """Finish the open shard: the staged write fsyncs it and renames it to its final name."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._stage.close()
            self._stage = None


def write_manifest(out_dir: Path, manifest: dict, name: str = MANIFEST) -> None:
    write_json_atomic(out_dir / name, manifest)


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    manifest = read_json(path, "no manifest; run `krmini prepare` to create the data directory")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise KrminiError(f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    return manifest


def split_stats(manifest: dict, split: str) -> SplitStats:
    return SplitStats(**manifest["splits"][split])


def load_split(data_dir: str | Path, split: str) -> list[np.ndarray]:
    """Memory-map every shard of a split, checking each holds a whole number of tokens."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    dtype = np.dtype(manifest["dtype"])
    arrays = []
    for name in manifest["splits"][split]["shards"]:
        path = data_dir / name
        if not path.is_file():
            raise KrminiError(f"{path}: shard listed in the manifest is missing")
        if path.stat().st_size % dtype.itemsize:
            raise KrminiError(f"{path}: truncated shard (size is not a multiple of {dtype.itemsize} bytes)")
        arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    expected = manifest["splits"][split]["tokens"]
    if sum(len(a) for a in arrays) != expected:
        raise KrminiError(f"{data_dir}: {split} shards hold {sum(len(a) for a in arrays)} tokens, manifest says {expected}")
    return arrays


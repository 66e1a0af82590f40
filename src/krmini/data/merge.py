"""`krmini prepare merge DIR`: join the parts that several machines prepared into one data directory.

Each machine ran `krmini prepare --shard-index i --num-shards n` and wrote
`part-00i-of-00n_{split}_*.bin` plus `manifest.part-00i-of-00n.json`. Once all parts sit in one
directory, merging checks they belong together (same tokenizer, dtype and settings, every part
present, every shard file whole) and writes the one manifest.json training reads.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from krmini.data.shards import MANIFEST, write_manifest
from krmini.data.split import SPLITS
from krmini.errors import KrminiError

_PART = re.compile(r"^manifest\.part-(\d{3})-of-(\d{3})\.json$")
_SAME = ("format_version", "dtype", "vocab_size", "bos_id", "eos_id", "tokenizer", "tokenizer_sha256")


def _add(total: dict, part: dict) -> dict:
    """Sum nested dicts of counts; other values must agree."""
    for key, value in part.items():
        if isinstance(value, dict):
            total[key] = _add(total.get(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
        else:
            total.setdefault(key, value)
    return total


def merge_parts(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise KrminiError(f"{data_dir}: not a directory")
    found = {}
    for f in sorted(data_dir.iterdir()):
        m = _PART.match(f.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = f
    if not found:
        raise KrminiError(f"{data_dir}: no manifest.part-*-of-*.json; run `krmini prepare --shard-index i --num-shards n` first")
    counts = {n for _, n in found}
    if len(counts) != 1:
        raise KrminiError(f"{data_dir}: parts of different splits of the corpus (num_shards {sorted(counts)})")
    n = counts.pop()
    missing = [i for i in range(n) if (i, n) not in found]
    if missing:
        raise KrminiError(f"{data_dir}: parts {missing} of {n} are missing; copy them here before merging")
    parts = [json.loads(found[(i, n)].read_text(encoding="utf-8")) for i in range(n)]
    first = parts[0]
    for i, part in enumerate(parts[1:], 1):
        for key in _SAME:
            if part.get(key) != first.get(key):
                raise KrminiError(f"{found[(i, n)]}: {key} {part.get(key)!r} differs from part 0's {first.get(key)!r}")
        a, b = dict(part["config"], shard_index=0), dict(first["config"], shard_index=0)
        if a != b:
            raise KrminiError(f"{found[(i, n)]}: prepared with other settings than part 0; prepare all parts alike")
    dtype = np.dtype(first["dtype"])
    splits = {s: {"documents": 0, "bytes": 0, "tokens": 0, "shards": []} for s in SPLITS}
    for part in parts:
        for s in SPLITS:
            for key in ("documents", "bytes", "tokens"):
                splits[s][key] += part["splits"][s][key]
            splits[s]["shards"] += part["splits"][s]["shards"]
    for s in SPLITS:
        size = sum((data_dir / name).stat().st_size if (data_dir / name).is_file() else -1
                   for name in splits[s]["shards"])
        if size != splits[s]["tokens"] * dtype.itemsize:
            raise KrminiError(f"{data_dir}: {s} shards are missing or incomplete (parts list {splits[s]['tokens']} tokens)")
    if splits["train"]["documents"] == 0 or splits["val"]["documents"] == 0:
        raise KrminiError(f"{data_dir}: merged parts have no train or no val documents; give a larger corpus")
    manifest = {key: first.get(key) for key in _SAME}
    manifest.update(
        inputs=first["inputs"],
        config=dict(first["config"], shard_index=None),
        documents=dict(sum((Counter(p["documents"]) for p in parts), Counter())),
        sources={},
        read_problems=first["read_problems"],  # every machine reads every record, so all saw the same
        near_dedup=first["near_dedup"],
        splits=splits,
        part={"merged": n},
        seconds=max(p["seconds"] for p in parts),
    )
    for key in ("sources", "pii", "boilerplate"):
        total: dict = {}
        for p in parts:
            total = _add(total, p[key])
        manifest[key] = total
    train_tokens = sum(s["written"].get("train_tokens", 0) for s in manifest["sources"].values()) or 1
    for name, s in manifest["sources"].items():
        s["weight"] = first["sources"][name]["weight"]  # a setting, not a count: undo the sum
        s["train_token_share"] = round(s["written"].get("train_tokens", 0) / train_tokens, 4)
    write_manifest(data_dir, manifest, MANIFEST)
    return manifest

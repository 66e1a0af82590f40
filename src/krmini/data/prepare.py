"""`krmini prepare`: sources → clean → filter → dedupe → mix → split → tokenize → shards + manifest.

Work is split in two. Worker processes take ordered chunks of documents and do everything that
depends on one document alone (clean, quality filters, tokenize, MinHash). This process reads the
sources and, in input order, makes every decision that depends on earlier documents — exact and
near duplicates, the mix, the split — and writes. So the output is byte-identical for any number
of workers. Memory grows only by a 16-byte digest and a few band keys per kept document.

The output is built in a temporary sibling directory and moved into place when complete, its
manifest (the commit point) last: a run that fails or stops half way leaves the output directory as
it was — absent, or holding the previous output — and never one a training run would half accept.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from krmini.config import from_dict, load_yaml
from krmini.data.clean import clean_text
from krmini.data.dedup import DedupConfig, NearDuplicateIndex, lsh_bands
from krmini.data.filters import FilterConfig, text_reason
from krmini.data.mix import SourceConfig, copies, read_source
from krmini.data.parallel import WorkerSetup, ordered_results
from krmini.data.readers import ReadProblems, read_documents
from krmini.data.shards import FORMAT_VERSION, MANIFEST, ShardWriter, SplitStats, token_dtype, write_manifest
from krmini.data.split import SPLITS, document_digest, split_of
from krmini.errors import KrminiError
from krmini.runs import staged_files
from krmini.tokenizer import KoTokenizer
from krmini.tokenizer.extend import fingerprint

EXAMPLES_PER_REASON = 3


@dataclass
class PrepareConfig:
    """Defaults here are the minimal pipeline (clean, length, exact dedup) that library callers had;
    `krmini prepare` and data configs start from `PrepareConfig.recommended()`, which adds the quality
    filters and near-dedup with thresholds measured on ../shared/data/pretrain (docs/data.md)."""

    text_field: str = "text"
    min_chars: int = 1
    max_chars: int = 1_000_000
    val_fraction: float = 0.01
    test_fraction: float = 0.01
    shard_tokens: int = 100_000_000
    chunk_documents: int = 512  # documents per unit of work; fixed, so results do not depend on workers
    chunk_chars: int = 2_000_000
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    workers: int = 0  # processes; 0 = all cores
    strict: bool = False  # stop at the first unreadable record instead of skipping it
    shard_index: int = 0  # this machine's part when the corpus is split over machines
    num_shards: int = 1

    @classmethod
    def recommended(cls, **changes) -> PrepareConfig:
        filters = FilterConfig(min_hangul_ratio=0.3, max_repeated_line_ratio=0.5, max_repeated_ngram_ratio=0.6,
                               strip_boilerplate=True)
        return cls(**{"filters": filters, "dedup": DedupConfig(near=True), **changes})

    def validate(self, where: str = "prepare") -> None:
        cores = os.cpu_count() or 1
        for name, low, high in (("min_chars", 0, None), ("max_chars", 1, None), ("shard_tokens", 1, None),
                                ("chunk_documents", 1, None), ("chunk_chars", 1, None), ("num_shards", 1, None),
                                ("workers", 0, cores)):
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                rule = f">= {low}" if high is None else f"from {low} (all cores) to {high} (this machine's cores)"
                raise KrminiError(f"{where}.{name}: expected an integer {rule}, got {value}")
        if self.max_chars < self.min_chars:
            raise KrminiError(f"{where}.max_chars: {self.max_chars} is below min_chars {self.min_chars}")
        if not all(map(math.isfinite, (self.val_fraction, self.test_fraction))):
            raise KrminiError(f"{where}: val_fraction and test_fraction must be finite numbers, got "
                              f"{self.val_fraction} and {self.test_fraction}")
        if not 0 <= self.shard_index < self.num_shards:
            raise KrminiError(f"{where}: shard_index {self.shard_index} must be in 0 … num_shards-1 ({self.num_shards - 1})")
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise KrminiError(f"{where}: val_fraction and test_fraction must be ≥ 0 and sum to less than 1")


@dataclass
class DataConfig:
    """A data config file: the sources to mix and how to prepare them."""

    sources: list[SourceConfig]
    prepare: PrepareConfig = field(default_factory=PrepareConfig)


def merged(base: dict, update: dict) -> dict:
    """`update` laid over `base`, nested mappings merged key by key."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def load_data_config(path: str | Path) -> DataConfig:
    """A data config; its `prepare:` settings are laid over the recommended ones."""
    data = load_yaml(path)
    prepare_section = data.get("prepare", {})
    if isinstance(prepare_section, dict):
        data = dict(data, prepare=merged(asdict(PrepareConfig.recommended()), prepare_section))
    config = from_dict(DataConfig, data, str(path))
    if not config.sources:
        raise KrminiError(f"{path}: sources: expected at least one source")
    names = [s.name for s in config.sources]
    if len(set(names)) != len(names):
        raise KrminiError(f"{path}: sources: names must be unique, got {names}")
    config.prepare.validate(f"{path}: prepare")
    return config


def clean_documents(inputs: list, config: PrepareConfig, counts: Counter) -> Iterator[tuple[str, bytes]]:
    """Cleaned, filtered, exact-deduplicated (text, digest) pairs, in order, without tokenizing.

    For quick passes over a corpus (tokenizer training samples); `counts` gets what each step removed.
    """
    seen: set[bytes] = set()
    problems = ReadProblems(strict=config.strict)
    try:
        for doc in read_documents(inputs, config.text_field, problems):
            counts["read"] += 1
            text = clean_text(doc.text)
            reason = text_reason(text, config.filters, config.min_chars, config.max_chars)
            if reason is None:
                digest = document_digest(text)
                if digest not in seen:
                    seen.add(digest)
                    counts["kept"] += 1
                    yield text, digest
                    continue
                reason = "duplicate"
            counts[reason] += 1
    finally:
        counts.update({f"unreadable_{kind}": n for kind, n in problems.counts.items()})


def sample_texts(inputs: list, text_field: str, max_bytes: int, counts: Counter | None = None,
                 strict: bool = False) -> Iterator[str]:
    """Cleaned, deduplicated documents from the start of the corpus, up to `max_bytes` of text."""
    seen = 0
    config = PrepareConfig(text_field=text_field, strict=strict)
    for text, _ in clean_documents(inputs, config, counts if counts is not None else Counter()):
        yield text
        seen += len(text.encode("utf-8"))
        if seen >= max_bytes:
            return


class Accounting:
    """Per source: documents and bytes read, removed by each filter, kept, and written (with repeats)."""

    def __init__(self, sources: list[SourceConfig], keep_examples: bool) -> None:
        self.sources = sources
        self.read = [Counter() for _ in sources]
        self.removed = [defaultdict(Counter) for _ in sources]
        self.written = [Counter() for _ in sources]
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.keep_examples = keep_examples
        self.pii, self.boilerplate = Counter(), Counter()

    def count_read(self, source: int, n_bytes: int) -> None:
        self.read[source]["documents"] += 1
        self.read[source]["bytes"] += n_bytes

    def count_removed(self, source: int, reason: str, n_bytes: int, where: str, text: str, note: str = "") -> None:
        self.removed[source][reason]["documents"] += 1
        self.removed[source][reason]["bytes"] += n_bytes
        if self.keep_examples and len(self.examples[reason]) < EXAMPLES_PER_REASON:
            snippet = " ⏎ ".join(text[:160].split("\n"))
            self.examples[reason].append(f"{where}: {snippet}{note}")

    def totals(self) -> Counter:
        out: Counter = Counter()
        for i in range(len(self.sources)):
            out["read"] += self.read[i]["documents"]
            out["kept"] += self.written[i]["unique_documents"]
            for reason, c in self.removed[i].items():
                out[reason] += c["documents"]
        return out

    def report(self) -> dict:
        train_tokens = sum(w["train_tokens"] for w in self.written) or 1
        return {
            s.name: {
                "weight": s.weight,
                "read": dict(self.read[i]),
                "removed": {r: dict(c) for r, c in sorted(self.removed[i].items())},
                "written": dict(self.written[i]),
                "train_token_share": round(self.written[i]["train_tokens"] / train_tokens, 4),
            }
            for i, s in enumerate(self.sources)
        }


def _part_names(config: PrepareConfig) -> tuple[str, str]:
    """(shard file prefix, manifest file name) for this machine's part."""
    if config.num_shards == 1:
        return "", MANIFEST
    part = f"part-{config.shard_index:03d}-of-{config.num_shards:03d}"
    return f"{part}_", f"manifest.{part}.json"


def _previous_output(prefix: str, manifest_name: str) -> Callable[[str], bool]:
    """Which names in an existing output directory the new output replaces: this part's manifest and
    shards (and what a killed write left of them); other parts' files and anything else stay."""
    pattern = re.compile(rf"^({re.escape(manifest_name)}|{re.escape(prefix)}(train|val|test)_\d{{5}}\.bin)(\.tmp)?$")
    return lambda name: pattern.match(name) is not None


def _chunks(sources: list[SourceConfig], problems: ReadProblems, config: PrepareConfig, acc: Accounting,
            bar: tqdm) -> Iterator[tuple]:
    for index, source in enumerate(sources):
        docs, chars = [], 0
        for doc in read_source(source, problems):
            if doc.skip:
                acc.count_read(index, 0)
                acc.count_removed(index, doc.skip, 0, f"{doc.source}:{doc.line}", doc.text)
                continue
            docs.append(doc)
            chars += len(doc.text)
            if len(docs) >= config.chunk_documents or chars >= config.chunk_chars:
                yield [d.text for d in docs], docs[0].wikitext, index, docs
                docs, chars = [], 0
        if docs:
            yield [d.text for d in docs], docs[0].wikitext, index, docs
    bar.set_postfix_str("finishing")


def _as_sources(inputs: list, config: PrepareConfig) -> list[SourceConfig]:
    if inputs and all(isinstance(s, SourceConfig) for s in inputs):
        return list(inputs)
    return [SourceConfig(name="input", paths=[str(p) for p in inputs], text_field=config.text_field)]


def prepare(inputs: list, tokenizer: KoTokenizer, tokenizer_path: str, out_dir: str | Path | None,
            config: PrepareConfig | None = None, progress: bool = True, dry_run: bool = False) -> dict:
    """Run the pipeline; `inputs` is a list of paths (one source) or of `SourceConfig`s.

    With `dry_run` nothing is written (out_dir may be None) and the report carries examples of what
    each filter removed. Returns the manifest (or the report).
    """
    config = config or PrepareConfig()
    config.validate()
    sources = _as_sources(inputs, config)
    prefix, manifest_name = _part_names(config)
    # Built in a temporary sibling and moved in when complete: a failed run leaves no output (or the old one).
    stage = nullcontext() if dry_run else staged_files(out_dir, _previous_output(prefix, manifest_name), manifest_name)
    with stage as out:
        return _run(sources, tokenizer, tokenizer_path, config, out, progress)


def _run(sources: list[SourceConfig], tokenizer: KoTokenizer, tokenizer_path: str, config: PrepareConfig,
         out: Path | None, progress: bool) -> dict:
    """The pipeline, writing shards and the manifest into `out` (None: a dry run, nothing written)."""
    dry_run = out is None
    workers = config.workers or os.cpu_count() or 1
    dtype = token_dtype(tokenizer.vocab_size)
    prefix, manifest_name = _part_names(config)
    stats = {s: SplitStats() for s in SPLITS}
    writers = {} if dry_run else {s: ShardWriter(out, s, dtype, config.shard_tokens, stats[s], prefix) for s in SPLITS}
    acc = Accounting(sources, keep_examples=dry_run)
    problems = ReadProblems(strict=config.strict)
    setup = WorkerSetup(tokenizer.tok.to_str(), tokenizer.bos_id, tokenizer.eos_id, config.filters, config.dedup,
                        dtype.name, config.min_chars, config.max_chars, config.shard_index, config.num_shards)
    exact: set[bytes] = set()
    near = NearDuplicateIndex() if config.dedup.near else None
    locations: list[str] = []  # dry run: where each kept document came from, to show near-duplicate pairs
    bar = tqdm(desc="prepare", unit="B", unit_scale=True, disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()

    try:
        for (_, _, si, docs), res in ordered_results(_chunks(sources, problems, config, acc, bar), setup, workers):
            weight = sources[si].weight
            written = acc.written[si]
            offset = 0
            raw_bytes = 0
            kept = Counter()  # this chunk's written documents, added to `written` once
            acc.pii.update(documents=res.pii_documents, replacements=res.pii_replacements)
            acc.boilerplate.update(documents=res.boilerplate_documents, chars=res.boilerplate_chars)
            for i, doc in enumerate(docs):
                n_raw = len(doc.text.encode("utf-8"))
                raw_bytes += n_raw
                tokens = res.tokens[offset : offset + res.token_counts[i]]
                offset += res.token_counts[i]
                reason = res.reasons[i]
                if reason == "other_machine":
                    continue
                acc.count_read(si, n_raw)
                note = ""
                if reason is None:
                    digest = res.digests[i]
                    if digest in exact:
                        reason = "duplicate"
                    else:
                        exact.add(digest)
                        if near is not None and res.has_ngrams[i]:
                            match = near.match_or_add(res.band_keys[i], len(exact) - 1)
                            if match is not None:
                                reason = "near_duplicate"
                                note = f"  ≈ {locations[match]}" if dry_run else ""
                        if dry_run:
                            locations.append(f"{doc.source}:{doc.line}")
                if reason is None:
                    n = copies(digest, weight)
                    reason = None if n else "sampled_out"
                if reason is not None:
                    acc.count_removed(si, reason, n_raw, f"{doc.source}:{doc.line}", doc.text, note)
                    continue
                split = split_of(digest, config.val_fraction, config.test_fraction)
                repeats = n if split == "train" else 1
                for _ in range(repeats):
                    if writers:
                        writers[split].write(tokens, res.clean_bytes[i])
                    else:  # dry run: count what would be written
                        stats[split].documents += 1
                        stats[split].bytes += res.clean_bytes[i]
                        stats[split].tokens += len(tokens)
                kept["unique_documents"] += 1
                kept["documents"] += repeats
                kept["bytes"] += res.clean_bytes[i] * repeats
                kept["tokens"] += len(tokens) * repeats
                if split == "train":
                    kept["train_tokens"] += len(tokens) * repeats
            written.update(kept)
            bar.update(raw_bytes)
    finally:
        bar.close()
    for w in writers.values():
        w.close()
    return _finish(sources, tokenizer, tokenizer_path, config, acc, problems, stats, start, dtype, out, manifest_name)


def _finish(sources, tokenizer, tokenizer_path, config, acc, problems, stats, start, dtype, out, manifest_name) -> dict:
    counts = acc.totals()
    names = ", ".join(s.name for s in sources)
    if out is not None and counts["kept"] == 0:
        raise KrminiError(f"{names}: no usable documents (read {counts['read']}, "
                          f"removed: {dict(counts - Counter(read=counts['read']))}; problems: {dict(problems.counts)})")
    if out is not None and config.num_shards == 1:
        for split in ("train", "val"):
            if stats[split].documents == 0:
                raise KrminiError(f"{names}: only {counts['kept']} documents, none fell in the {split} split (val is "
                                  "chosen by hash); give a larger corpus or more, shorter documents")
    bands, rows = lsh_bands(config.dedup.threshold, config.dedup.num_perm) if config.dedup.near else (0, 0)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "tokenizer": str(tokenizer_path),
        "tokenizer_sha256": fingerprint(tokenizer.tok),  # what `krmini train` compares with the run's tokenizer
        "inputs": [p for s in sources for p in (s.paths or [s.dataset])],
        "config": asdict(config),
        "documents": dict(counts),
        "sources": acc.report(),
        "read_problems": problems.as_dict(),
        "pii": dict(acc.pii),
        "boilerplate": dict(acc.boilerplate),
        "near_dedup": {"threshold": config.dedup.threshold, "num_perm": config.dedup.num_perm,
                       "bands": bands, "rows": rows} if config.dedup.near else None,
        "splits": {s: asdict(v) for s, v in stats.items()},
        "part": {"shard_index": config.shard_index, "num_shards": config.num_shards},
        "seconds": round(time.perf_counter() - start, 2),
    }
    if out is None:
        manifest["examples"] = dict(acc.examples)
    else:
        write_manifest(out, manifest, manifest_name)
    return manifest

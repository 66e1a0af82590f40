"""The data of `krmini bench speedrun`: one tokenizer and one prepared copy of the mix, made once.

Both live in the work directory (`--out`) beside `data.json`, which records the key they were made
for: the data config's text, the size and modification time of every source file, the
vocabulary size and the pre-tokenisation rule. A later run with the same key reuses them; any
change rebuilds both. The tokenizer learns only from documents that `krmini prepare` puts in train
(`texts_in_split`), so the validation split stays unseen by it too.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from krmini.data.mix import read_source
from krmini.data.prepare import DataConfig, prepare
from krmini.data.readers import ReadProblems
from krmini.data.split import texts_in_split
from krmini.errors import KrminiError
from krmini.runs import write_json_atomic
from krmini.tokenizer import KoTokenizer
from krmini.tokenizer.tokenizer import DEFAULT_PRETOKENIZER

MARKER = "data.json"
FORMAT = 1
# what the benchmarks themselves put in a work directory besides the data: other vocabularies' data
# (`speedrun --vocab-sizes`, `--pretokenizers`), the curves and the scaling fit
OWN = re.compile(r"^(vocab-\d+|pretok-[a-z-]+|speedrun\.png|scaling\.png|scaling-fit\.json)$")


def cache_key(config_path: str | Path, config: DataConfig, vocab_size: int, pretokenizer: str) -> str:
    files = []
    for source in config.sources:
        for path in source.paths:
            stat = Path(path).stat() if Path(path).exists() else None
            files.append([str(path), stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    record = {"format": FORMAT, "config": Path(config_path).read_text(encoding="utf-8"), "files": files,
              "vocab_size": vocab_size}
    if pretokenizer != "spaces-digits":  # the rule of every directory made before the option: they stay valid
        record["pretokenizer"] = pretokenizer
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def prepared_data(config_path: str | Path, config: DataConfig, out: Path, vocab_size: int,
                  pretokenizer: str = DEFAULT_PRETOKENIZER, progress: bool = True) -> tuple[KoTokenizer, Path]:
    """The benchmark's tokenizer and prepared data directory, reused when the key matches."""
    key = cache_key(config_path, config, vocab_size, pretokenizer)
    marker, tok_dir, data_dir = out / MARKER, out / "tokenizer", out / "data"
    if marker.is_file():
        if json.loads(marker.read_text(encoding="utf-8")).get("key") == key and tok_dir.is_dir() and data_dir.is_dir():
            print(f"data: reusing the tokenizer and shards in {out} (same data config, vocabulary and pre-tokenisation)")
            return KoTokenizer.load(tok_dir), data_dir
        marker.unlink()
        for stale in (tok_dir, data_dir):
            shutil.rmtree(stale, ignore_errors=True)
    elif out.is_dir() and any(not OWN.match(p.name) for p in out.iterdir()):
        raise KrminiError(f"{out}: directory is not empty and holds no {MARKER}; choose another --out")
    problems = ReadProblems(strict=config.prepare.strict)
    texts = texts_in_split((d.text for s in config.sources for d in read_source(s, problems)),
                           asdict(config.prepare), "train")
    tokenizer = KoTokenizer.train(texts, vocab_size=vocab_size, show_progress=progress, pretokenizer=pretokenizer)
    tokenizer.save(tok_dir)
    manifest = prepare(config.sources, tokenizer, str(tok_dir), data_dir, config.prepare, progress=progress)
    write_json_atomic(marker, {"key": key, "data_config": str(config_path), "vocab_size": tokenizer.vocab_size,
                               "pretokenizer": pretokenizer, "splits": manifest["splits"]})
    print(f"data: trained a {tokenizer.vocab_size}-token tokenizer ({pretokenizer}) and prepared {config_path} into {out}")
    return tokenizer, data_dir


def heldout_texts(texts: list[str], tokenizer: KoTokenizer, max_tokens: int) -> list[str]:
    """The first documents, in file order, until they hold `max_tokens` tokens (at least one)."""
    chosen, tokens = [], 0
    for text, ids in zip(texts, tokenizer.encode_batch(texts), strict=True):
        chosen.append(text)
        tokens += len(ids)
        if tokens >= max_tokens:
            break
    return chosen

"""`krmini tokenizer train|extend`: read and clean a corpus (this package's job), then train a tokenizer on
it, or extend one with a domain's tokens (`krmini.tokenizer.extend`).

The command lives in `data`, not in `tokenizer`, because imports run one way: data may use the
tokenizer, the tokenizer never uses data.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from krmini.argtypes import FRACTION, POSITIVE_INT, POSITIVE_NUMBER, integer
from krmini.data.prepare import PrepareConfig, sample_texts
from krmini.data.split import texts_in_split
from krmini.errors import KrminiError
from krmini.runs import TOKENIZER_DIR, check_output, check_target, resolve_checkpoint, staged_dir
from krmini.tokenizer.extend import extend, fingerprint, save_extension
from krmini.tokenizer.tokenizer import (
    DEFAULT_PRETOKENIZER,
    MIN_VOCAB_SIZE,
    PRETOKENIZERS,
    TOKENIZER_FILE,
    VOCAB_SIZE,
    KoTokenizer,
)


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="토크나이저 / tokenizer tools")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="BPE 토크나이저 학습 / train a byte-fallback BPE tokenizer",
                       description="Train a byte-fallback BPE tokenizer (no <unk>) and save it in Hugging Face format.")
    t.add_argument("inputs", nargs="+", help="corpus files or directories")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--vocab-size", type=VOCAB_SIZE, default=32000,
                   help=f"vocabulary size, {MIN_VOCAB_SIZE} to 2^32 (default: 32000)")
    t.add_argument("--pretokenizer", choices=list(PRETOKENIZERS), default=DEFAULT_PRETOKENIZER,
                   help="where text is cut before BPE: " + "; ".join(f"{k}: {v}" for k, v in PRETOKENIZERS.items()))
    t.add_argument("--text-field", default="text", help="JSONL field holding the text")
    t.add_argument("--max-mb", type=POSITIVE_NUMBER, default=200.0,
                   help="train on at most this many MB of text, > 0 (default: 200)")
    t.add_argument("--strict", action="store_true", help="stop at the first unreadable record instead of skipping it")
    t.set_defaults(func=run_train)

    e = sub.add_parser("extend", help="도메인 토큰 추가 / add a domain's tokens after the existing ids",
                       description="Learn up to N new tokens from domain text by continuing the base BPE's merges "
                       "and append them after every existing id: old ids keep their meaning, byte fallback and "
                       "special tokens are unchanged. BASE is a tokenizer directory or tokenizer.json, or a run "
                       "or checkpoint (ours or imported) whose tokenizer/ is used.")
    e.add_argument("base", metavar="BASE", help="tokenizer directory / tokenizer.json, or a run or checkpoint")
    e.add_argument("--corpus", nargs="+", required=True, help="domain text: files or directories")
    e.add_argument("--add", type=POSITIVE_INT, required=True, help="new tokens to learn, at most (>= 1)")
    e.add_argument("--out", required=True, help="output tokenizer directory")
    e.add_argument("--min-frequency", type=integer(1), default=2,
                   help="a new token must occur at least this often in the corpus, >= 1 (default: 2)")
    e.add_argument("--heldout", nargs="+", help="text to measure characters per token on, before and after")
    e.add_argument("--skip-heldout", type=FRACTION, metavar="FRACTION",
                   help="learn only from documents that `krmini prepare` keeps in train when its val_fraction + "
                   "test_fraction is FRACTION or less (e.g. 0.03 for configs/data/legal-cpt-mix.yaml), so the "
                   "held-out text stays unseen")
    e.add_argument("--text-field", default="text", help="JSONL field holding the text")
    e.add_argument("--max-mb", type=POSITIVE_NUMBER, default=50.0,
                   help="learn from at most this many MB of the corpus, > 0 (default: 50)")
    e.add_argument("--strict", action="store_true", help="stop at the first unreadable record instead of skipping it")
    e.add_argument("--force", action="store_true", help="replace OUT if it is not empty")
    e.set_defaults(func=run_extend)


def run_train(args) -> int:
    start = time.perf_counter()
    check_output(args.out, "dir", args.inputs)  # before the corpus is read
    counts: Counter = Counter()
    texts = sample_texts(args.inputs, args.text_field, int(args.max_mb * 1e6), counts, args.strict)
    try:
        tokenizer = KoTokenizer.train(texts, vocab_size=args.vocab_size, pretokenizer=args.pretokenizer)
    finally:
        _say_unreadable(counts)
    tokenizer.save(args.out)
    print(f"tokenizer: {tokenizer.vocab_size} tokens → {args.out} ({time.perf_counter() - start:.1f}s)")
    return 0


def _say_unreadable(counts: Counter) -> None:
    skipped = {k: v for k, v in counts.items() if k.startswith("unreadable_")}
    if skipped:
        print(f"skipped unreadable records: {skipped} (rerun with --strict to stop at the first one)", file=sys.stderr)


def tokenizer_path(path: str | Path) -> Path:
    """A tokenizer directory or tokenizer.json as given, or the tokenizer/ of a run or checkpoint."""
    path = Path(path)
    if path.is_file() or (path / TOKENIZER_FILE).is_file():
        return path
    if (path / TOKENIZER_DIR / TOKENIZER_FILE).is_file():
        return path / TOKENIZER_DIR
    try:
        return resolve_checkpoint(path) / TOKENIZER_DIR
    except KrminiError:
        raise KrminiError(f"{path}: no tokenizer found (expected a tokenizer directory, a tokenizer.json, or a run "
                          "or checkpoint with tokenizer/)") from None


def _ratio(chars: int, tokens: int) -> str:
    return f"{chars / max(tokens, 1):.3f}"


def run_extend(args) -> int:
    start = time.perf_counter()
    base_path = tokenizer_path(args.base)
    out = Path(args.out)
    check_target(out, args.force, [args.base, *args.corpus, *(args.heldout or [])])  # before the corpus is read
    base = KoTokenizer.load(base_path)
    counts: Counter = Counter()
    texts = sample_texts(args.corpus, args.text_field, int(args.max_mb * 1e6), counts, args.strict)
    if args.skip_heldout:
        # Splits are nested by content hash (krmini.data.split): the lowest FRACTION of the buckets holds every
        # val and test document of any prepare whose two fractions sum to at most FRACTION.
        held_out = dict(asdict(PrepareConfig.recommended()), val_fraction=args.skip_heldout, test_fraction=0.0)
        texts = texts_in_split(texts, held_out, "train")
    try:
        ext = extend(base.tok, texts, args.add, args.min_frequency, where=str(base_path))
    finally:
        _say_unreadable(counts)
    record = {"base": str(base_path), "base_sha256": fingerprint(base.tok), "sha256": fingerprint(ext.tokenizer),
              "base_vocab_size": base.vocab_size, "vocab_size": ext.tokenizer.get_vocab_size(),
              "first_new_id": ext.first_id, "requested": args.add, "added": len(ext.added),
              "skipped_already_present": ext.skipped, "min_frequency": args.min_frequency,
              "skip_heldout": args.skip_heldout,
              "corpus": [str(c) for c in args.corpus], "corpus_chars": ext.chars,
              "corpus_tokens": {"before": ext.tokens_before, "after": ext.tokens_after}}
    lines = [f"added {len(ext.added)} of {args.add} tokens ({ext.skipped} already present, skipped): vocabulary "
             f"{base.vocab_size} → {ext.tokenizer.get_vocab_size()}, new ids from {ext.first_id}",
             f"domain corpus ({ext.chars:,} characters): chars/token {_ratio(ext.chars, ext.tokens_before)} → "
             f"{_ratio(ext.chars, ext.tokens_after)} ({ext.tokens_after / max(ext.tokens_before, 1) - 1:+.1%} tokens)"]
    if args.heldout:
        held = list(sample_texts(args.heldout, args.text_field, 1 << 62, Counter(), args.strict))
        chars = sum(map(len, held))
        before = sum(map(len, base.encode_batch(held)))
        after = sum(len(e.ids) for e in ext.tokenizer.encode_batch(held, add_special_tokens=False))
        record["heldout"] = {"files": [str(h) for h in args.heldout], "chars": chars,
                             "tokens": {"before": before, "after": after}}
        lines.append(f"held-out text ({chars:,} characters): chars/token {_ratio(chars, before)} → "
                     f"{_ratio(chars, after)} ({after / max(before, 1) - 1:+.1%} tokens)")
    base_dir = base_path if base_path.is_dir() else base_path.parent
    with staged_dir(out, args.force, [args.base, *args.corpus]) as tmp:
        save_extension(ext, base_dir, tmp, record)
    KoTokenizer.load(out)  # what was written loads as a tokenizer (ours, or the open model's kind)
    print("\n".join(lines))
    print(f"tokenizer → {out} ({time.perf_counter() - start:.1f}s)")
    return 0

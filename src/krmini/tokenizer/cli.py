"""`krmini tokenizer train`."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator

from krmini.data.prepare import PrepareConfig, clean_documents
from krmini.tokenizer.tokenizer import KoTokenizer


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


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="토크나이저 / tokenizer tools")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="BPE 토크나이저 학습 / train a byte-fallback BPE tokenizer",
                       description="Train a byte-fallback BPE tokenizer (no <unk>) and save it in Hugging Face format.")
    t.add_argument("inputs", nargs="+", help="corpus files or directories")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--vocab-size", type=int, default=32000, help="vocabulary size (default: 32000)")
    t.add_argument("--text-field", default="text", help="JSONL field holding the text")
    t.add_argument("--max-mb", type=float, default=200.0, help="train on at most this many MB of text (default: 200)")
    t.add_argument("--strict", action="store_true", help="stop at the first unreadable record instead of skipping it")
    t.set_defaults(func=run_train)


def run_train(args) -> int:
    start = time.perf_counter()
    counts: Counter = Counter()
    texts = sample_texts(args.inputs, args.text_field, int(args.max_mb * 1e6), counts, args.strict)
    try:
        tokenizer = KoTokenizer.train(texts, vocab_size=args.vocab_size)
    finally:
        skipped = {k: v for k, v in counts.items() if k.startswith("unreadable_")}
        if skipped:
            print(f"skipped unreadable records: {skipped} (rerun with --strict to stop at the first one)",
                  file=sys.stderr)
    tokenizer.save(args.out)
    print(f"tokenizer: {tokenizer.vocab_size} tokens → {args.out} ({time.perf_counter() - start:.1f}s)")
    return 0

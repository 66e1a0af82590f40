"""`krmini tokenizer train`: read and clean a corpus (this package's job), then train the tokenizer on it.

The command lives in `data`, not in `tokenizer`, because imports run one way: data may use the
tokenizer, the tokenizer never uses data.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from krmini.argtypes import POSITIVE_NUMBER
from krmini.data.prepare import sample_texts
from krmini.runs import check_output
from krmini.tokenizer.tokenizer import MIN_VOCAB_SIZE, VOCAB_SIZE, KoTokenizer


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="토크나이저 / tokenizer tools")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="BPE 토크나이저 학습 / train a byte-fallback BPE tokenizer",
                       description="Train a byte-fallback BPE tokenizer (no <unk>) and save it in Hugging Face format.")
    t.add_argument("inputs", nargs="+", help="corpus files or directories")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--vocab-size", type=VOCAB_SIZE, default=32000,
                   help=f"vocabulary size, {MIN_VOCAB_SIZE} to 2^32 (default: 32000)")
    t.add_argument("--text-field", default="text", help="JSONL field holding the text")
    t.add_argument("--max-mb", type=POSITIVE_NUMBER, default=200.0,
                   help="train on at most this many MB of text, > 0 (default: 200)")
    t.add_argument("--strict", action="store_true", help="stop at the first unreadable record instead of skipping it")
    t.set_defaults(func=run_train)


def run_train(args) -> int:
    start = time.perf_counter()
    check_output(args.out, "dir", args.inputs)  # before the corpus is read
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

"""`krmini prepare`."""

from __future__ import annotations

import json

from krmini.data.prepare import PrepareConfig, prepare
from krmini.tokenizer import KoTokenizer


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="말뭉치 정제·분할·토큰화 / clean, split and tokenize a corpus into shards",
        description="Read .txt/.jsonl(.gz/.bz2) files or directories, clean (NFC, control chars, whitespace), "
        "drop exact duplicates, split 98/1/1 by document hash, and write uint16/uint32 token shards "
        "plus manifest.json.",
    )
    p.add_argument("inputs", nargs="+", help="corpus files or directories")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (from `krmini tokenizer train`)")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--min-chars", type=int, default=1, help="drop documents shorter than this")
    p.add_argument("--max-chars", type=int, default=1_000_000, help="drop documents longer than this")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of documents for validation (0.01)")
    p.add_argument("--test-fraction", type=float, default=0.01, help="share of documents for test (0.01)")
    p.set_defaults(func=run)


def run(args) -> int:
    tokenizer = KoTokenizer.load(args.tokenizer)
    config = PrepareConfig(text_field=args.text_field, min_chars=args.min_chars, max_chars=args.max_chars,
                           val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    manifest = prepare(args.inputs, tokenizer, args.tokenizer, args.out, config)
    print(json.dumps({"documents": manifest["documents"], "splits": manifest["splits"]}, ensure_ascii=False, indent=2))
    return 0

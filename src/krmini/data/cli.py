"""`krmini prepare` (and `krmini prepare merge DIR`)."""

from __future__ import annotations

import json
from dataclasses import asdict

from krmini.config import apply_overrides, from_dict
from krmini.data.prepare import DataConfig, PrepareConfig, load_data_config, prepare
from krmini.errors import KrminiError
from krmini.runs import check_output


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="말뭉치 정제·분할·토큰화 / clean, filter, dedupe, split and tokenize a corpus into shards",
        description="Read .txt/.jsonl(.gz/.bz2) files or directories, a Wikipedia dump (--source wikipedia) or a "
        "Hugging Face dataset (--source hf:NAME[:CONFIG]), or the sources of a data config (--config); clean "
        "(NFC, control chars, whitespace), filter (length, Hangul ratio, repetition, boilerplate), drop exact and "
        "near duplicates, mix, split 98/1/1 by document hash and write token shards plus manifest.json. "
        "`krmini prepare merge DIR` joins the parts written with --shard-index/--num-shards.",
    )
    p.add_argument("inputs", nargs="*", help="corpus files or directories (or: merge DIR)")
    p.add_argument("--tokenizer", help="tokenizer directory (from `krmini tokenizer train`)")
    p.add_argument("--out", help="output data directory")
    p.add_argument("--source", default="files", help="files (default), wikipedia, or hf:NAME[:CONFIG]")
    p.add_argument("--config", help="data config YAML: sources with weights, and prepare settings")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--min-chars", type=int, help="drop documents shorter than this")
    p.add_argument("--max-chars", type=int, help="drop documents longer than this")
    p.add_argument("--val-fraction", type=float, help="share of documents for validation (0.01)")
    p.add_argument("--test-fraction", type=float, help="share of documents for test (0.01)")
    p.add_argument("--dedup-threshold", type=float, help="near-duplicate similarity threshold (default 0.7)")
    p.add_argument("--no-near-dedup", action="store_true", help="keep near duplicates (exact ones still go)")
    p.add_argument("--scrub-pii", action="store_true", help="replace e-mails, phone and resident numbers")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--shard-index", type=int, help="this machine's part (with --num-shards)")
    p.add_argument("--num-shards", type=int, help="number of machines the corpus is split over")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable record instead of skipping it")
    p.add_argument("--dry-run", action="store_true", help="write nothing; print what each filter would remove")
    p.set_defaults(func=run)


def _config(args) -> DataConfig:
    if args.config:
        if args.inputs:
            raise KrminiError(f"--config {args.config}: the config lists the sources; drop the input paths")
        data = load_data_config(args.config)
    else:
        from krmini.data.mix import source_from_cli

        data = DataConfig(sources=[source_from_cli(args.source, args.inputs, args.text_field)],
                          prepare=PrepareConfig.recommended(text_field=args.text_field))
    settings = {
        "min_chars": args.min_chars, "max_chars": args.max_chars,
        "val_fraction": args.val_fraction, "test_fraction": args.test_fraction,
        "dedup.threshold": args.dedup_threshold, "workers": args.workers, "shard_index": args.shard_index,
        "num_shards": args.num_shards, "dedup.near": False if args.no_near_dedup else None,
        "filters.scrub_pii": True if args.scrub_pii else None, "strict": True if args.strict else None,
    }
    raw = asdict(data.prepare)
    apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in settings.items() if v is not None])
    data.prepare = from_dict(PrepareConfig, raw, "prepare")
    data.prepare.validate("prepare")
    return data


def print_report(manifest: dict) -> None:
    """The per-source, per-filter table of what was removed, then examples (dry run)."""
    for name, s in manifest["sources"].items():
        read = s["read"]
        print(f"\n[{name}] weight {s['weight']}: read {read.get('documents', 0):,} documents, "
              f"{read.get('bytes', 0) / 1e6:,.1f} MB")
        print(f"  {'removed by':<18}{'documents':>12}{'MB':>10}{'% docs':>9}")
        for reason, c in s["removed"].items():
            share = 100 * c["documents"] / max(read.get("documents", 0), 1)
            print(f"  {reason:<18}{c['documents']:>12,}{c['bytes'] / 1e6:>10.2f}{share:>8.2f}%")
        w = s["written"]
        print(f"  {'written':<18}{w.get('documents', 0):>12,}{w.get('bytes', 0) / 1e6:>10.2f}"
              f"   {w.get('tokens', 0):,} tokens, {100 * s['train_token_share']:.1f}% of train")
    problems = manifest["read_problems"]
    if problems["counts"]:
        print(f"\nunreadable records: {problems['counts']}")
        for line in problems["examples"][:5]:
            print(f"  {line}")
    for reason, lines in manifest.get("examples", {}).items():
        print(f"\nexamples — {reason}:")
        for line in lines:
            print(f"  {line}")


def run(args) -> int:
    if args.inputs[:1] == ["merge"]:
        from krmini.data.merge import merge_parts

        if len(args.inputs) != 2:
            raise KrminiError("prepare merge: expected one directory holding every part, e.g. krmini prepare merge data/")
        manifest = merge_parts(args.inputs[1])
        print(json.dumps({"documents": manifest["documents"], "splits": manifest["splits"]}, ensure_ascii=False, indent=2))
        return 0
    if not args.tokenizer:
        raise KrminiError("prepare: --tokenizer is required")
    if not args.out and not args.dry_run:
        raise KrminiError("prepare: --out is required (or --dry-run)")
    from krmini.tokenizer import KoTokenizer

    data = _config(args)
    if args.out:  # written into: not a file, and not where a corpus or the tokenizer it reads lives
        check_output(args.out, "dir", [*(p for s in data.sources for p in s.paths), args.tokenizer])
    tokenizer = KoTokenizer.load(args.tokenizer)
    manifest = prepare(data.sources, tokenizer, args.tokenizer, None if args.dry_run else args.out, data.prepare,
                       dry_run=args.dry_run)
    print_report(manifest)
    print(json.dumps({"documents": manifest["documents"], "splits": manifest["splits"]}, ensure_ascii=False, indent=2))
    return 0

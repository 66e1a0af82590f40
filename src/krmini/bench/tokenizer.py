"""`krmini bench tokenizer`: SentencePiece vs Hugging Face `tokenizers`, measured the same way.

Both train a byte-fallback BPE of the same size on the same cleaned text; we report training time,
Korean characters per token on a held-out file (more is better: more text fits in the context and
each step sees more), and whether every held-out document round-trips exactly.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from krmini.argtypes import POSITIVE_NUMBER
from krmini.data.prepare import sample_texts
from krmini.errors import KrminiError
from krmini.runs import check_output, write_json_atomic
from krmini.tokenizer.tokenizer import VOCAB_SIZE, KoTokenizer

DEFAULT_TRAIN = "../shared/data/pretrain"
DEFAULT_HELDOUT = "../shared/data/eval/heldout_wiki_korquad1_dev_contexts.jsonl"


def _heldout(path: Path) -> list[str]:
    if not path.is_file():
        raise KrminiError(f"{path}: held-out file not found (pass --heldout)")
    from krmini.data.clean import clean_text

    with open(path, encoding="utf-8") as fh:
        return [clean_text(json.loads(line)["text"]) for line in fh if line.strip()]


def _sentencepiece(texts: list[str], vocab_size: int, workdir: Path):
    try:
        import sentencepiece as spm
    except ImportError:
        raise KrminiError("sentencepiece is not installed: pip install 'krmini[bench]'") from None
    corpus = workdir / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in texts), encoding="utf-8")
    start = time.perf_counter()
    try:
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(workdir / "sp"), vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, character_coverage=0.9995, split_digits=True, num_threads=2,
            # like ours: no NFKC folding, spaces kept as written, so it can be lossless too
            normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            max_sentence_length=1 << 20, input_sentence_size=0, minloglevel=2,
        )
    except RuntimeError as exc:  # e.g. a vocabulary smaller than the corpus's characters
        raise KrminiError(f"--vocab-size {vocab_size}: SentencePiece refused it "
                          f"({str(exc).strip().splitlines()[0][-160:]})") from None
    seconds = time.perf_counter() - start
    return spm.SentencePieceProcessor(model_file=str(workdir / "sp.model")), seconds


def run_benchmark(train_paths: list[str], heldout: Path, vocab_size: int, max_mb: float) -> dict:
    texts = list(sample_texts(train_paths, "text", int(max_mb * 1e6)))
    held = _heldout(heldout)
    chars = sum(len(t) for t in held)
    results = {"train_mb": round(sum(len(t.encode()) for t in texts) / 1e6, 1), "heldout_chars": chars,
               "vocab_size": vocab_size}

    start = time.perf_counter()
    hf = KoTokenizer.train(texts, vocab_size=vocab_size, show_progress=False)
    hf_seconds = time.perf_counter() - start
    hf_ids = hf.encode_batch(held)
    results["tokenizers"] = {
        "train_seconds": round(hf_seconds, 1),
        "chars_per_token": round(chars / sum(map(len, hf_ids)), 3),
        "lossless": all(hf.decode(ids) == t for ids, t in zip(hf_ids, held, strict=True)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        sp, sp_seconds = _sentencepiece(texts, vocab_size, Path(tmp))
        sp_ids = [sp.encode(t) for t in held]
        results["sentencepiece"] = {
            "train_seconds": round(sp_seconds, 1),
            "chars_per_token": round(chars / sum(map(len, sp_ids)), 3),
            "lossless": all(sp.decode(ids) == t for ids, t in zip(sp_ids, held, strict=True)),
        }
    return results


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="SentencePiece vs tokenizers: chars/token, training time",
                              description=__doc__)
    p.add_argument("--train", nargs="+", default=[DEFAULT_TRAIN], help=f"training corpus (default: {DEFAULT_TRAIN})")
    p.add_argument("--heldout", default=DEFAULT_HELDOUT, help=f"held-out JSONL (default: {DEFAULT_HELDOUT})")
    p.add_argument("--vocab-size", type=VOCAB_SIZE, default=32000, help="vocabulary size (default: 32000)")
    p.add_argument("--max-mb", type=POSITIVE_NUMBER, default=200.0, help="MB of training text, > 0 (default: 200)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.json:  # refused before the benchmark runs: a directory, or a file it reads
        check_output(args.json, "file", [*args.train, args.heldout])
    results = run_benchmark(args.train, Path(args.heldout), args.vocab_size, args.max_mb)
    print(f"trained on {results['train_mb']} MB, vocab {results['vocab_size']}; held-out {results['heldout_chars']:,} chars")
    print(f"{'library':<15}{'train s':>9}{'chars/token':>13}{'lossless':>10}")
    for lib in ("tokenizers", "sentencepiece"):
        r = results[lib]
        print(f"{lib:<15}{r['train_seconds']:>9}{r['chars_per_token']:>13}{r['lossless']!s:>10}")
    if args.json:
        write_json_atomic(args.json, results)
    return 0

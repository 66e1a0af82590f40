"""`krmini demo`: the whole path in one command, on a small Korean corpus that ships with KoNLPy.

Default corpus: the Constitution of Korea and ten National Assembly bills from the `konlpy` package
(`konlpy/data/corpus/kolaw`, `kobill`), read as plain text files — no Java needed. Steps: train a
tokenizer → prepare shards → train the demo preset (tiny's shape, the new recipe) → print
continuations of Korean prompts.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from krmini.data.prepare import PrepareConfig, prepare, sample_texts
from krmini.device import pick_device
from krmini.errors import KrminiError
from krmini.infer.generate import SamplingConfig, stream_text
from krmini.infer.load import load_model
from krmini.runs import CHECKPOINTS_DIR, check_output
from krmini.tokenizer.tokenizer import KoTokenizer
from krmini.train.config import load_run_config
from krmini.train.trainer import train

DEFAULT_PROMPTS = ["대한민국은", "모든 국민은", "국회는"]


def konlpy_corpus() -> list[Path]:
    spec = importlib.util.find_spec("konlpy")
    if spec is None or not spec.origin:
        raise KrminiError("konlpy is not installed; install it or pass --corpus PATH")
    root = Path(spec.origin).parent / "data" / "corpus"
    dirs = [root / "kolaw", root / "kobill"]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        raise KrminiError(f"{missing[0]}: KoNLPy's bundled corpus is missing; pass --corpus PATH")
    return dirs


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="전체 과정 데모 / the whole path on a small Korean corpus, in minutes on a CPU",
        description="Train a tokenizer and the demo model (tiny's shape, the new recipe) on KoNLPy's bundled Korean corpus (or --corpus), "
        "then print continuations of Korean prompts. Leaves everything under runs/demo/.",
    )
    p.add_argument("--corpus", nargs="+", help="your own .txt/.jsonl files or directories instead")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--config", default="demo", help="run config or preset (default: demo, the tiny shape with the "
                   "new recipe)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    p.add_argument("--prompt", action="append", help="prompt(s) to continue (default: three Korean prompts)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.set_defaults(func=run)


def run(args) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    if (out / CHECKPOINTS_DIR).exists():
        raise KrminiError(f"{out}: already holds a run; remove it or pass --out to another directory")
    inputs = args.corpus or konlpy_corpus()
    check_output(out, "dir", inputs)  # a file, or a directory holding the corpus, is refused before any work
    cfg = load_run_config(args.config, [*args.overrides, f"train.out_dir={out}", f"train.data_dir={out / 'data'}",
                                        f"train.device={args.device}"])

    print(f"[1/4] tokenizer: BPE {cfg.model.vocab_size} tokens on {', '.join(map(str, inputs))}")
    tokenizer = KoTokenizer.train(sample_texts(inputs, "text", 200_000_000), vocab_size=cfg.model.vocab_size)
    tokenizer_dir = tokenizer.save(out / "tokenizer", cfg.model.max_position_embeddings)

    print("[2/4] prepare: clean, dedupe, split 90/5/5, tokenize")
    # The bundled corpus is small (~20k tokens): hold out 5% + 5% so validation means something.
    split = PrepareConfig(val_fraction=0.05, test_fraction=0.05)
    manifest = prepare(inputs, tokenizer, str(tokenizer_dir), out / "data", split)
    s = manifest["splits"]
    print(f"      train {s['train']['tokens']:,} tokens ({s['train']['documents']} docs), "
          f"val {s['val']['tokens']:,}, test {s['test']['tokens']:,}")

    print(f"[3/4] train: {args.config} preset, {cfg.train.max_steps} steps")
    result = train(cfg)

    print("[4/4] generate")
    loaded = load_model(out, pick_device(args.device))
    sampling = SamplingConfig(max_new_tokens=60, temperature=0.8, top_k=40, top_p=0.95, seed=0)
    for prompt in args.prompt or DEFAULT_PROMPTS:
        text = "".join(stream_text(loaded.model, loaded.tokenizer, prompt, sampling))
        print(f"  ▶ {prompt}{text}")
    print(f"done in {time.perf_counter() - start:.0f}s: val loss {result['val_loss']:.3f}, "
          f"bits/byte {result['val_bpb']:.3f}; outputs in {out}/ (checkpoints/, metrics.jsonl, loss.png)")
    return 0

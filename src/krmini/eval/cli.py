"""`krmini eval ppl|kobest` and `krmini report`.

Every evaluation prints its numbers and saves them as JSON under `<run>/eval/` (or next to the
checkpoint given), where `krmini report` finds them.
"""

from __future__ import annotations

import time
from pathlib import Path

from krmini.argtypes import NON_NEGATIVE_INT, POSITIVE_INT, SEED
from krmini.device import pick_device
from krmini.errors import KrminiError
from krmini.eval.domain import DEFAULT_PROMPTS, default_base, format_domain, measure, plot_domain, read_texts
from krmini.eval.kobest import DEFAULT_KOBEST_DIR, SPLITS, TASKS, evaluate_kobest, parse_tasks
from krmini.eval.ppl import DEFAULT_PPL_DATA, perplexity, read_eval_texts
from krmini.eval.report import format_kobest, register_report
from krmini.eval.results import results_dir, write_json
from krmini.infer.load import load_model
from krmini.runs import check_output, checkpoint_files, resolve_checkpoint, run_dir


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="평가 / evaluate a model: perplexity, bits per byte, KoBEST")
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL", required=True)

    ppl = sub.add_parser("ppl", help="loss, perplexity and bits per byte on held-out text",
                         description="Score held-out documents (.txt/.jsonl, optionally .gz/.bz2) with a sliding "
                         f"window. Default data: {DEFAULT_PPL_DATA} when present.")
    ppl.add_argument("model", metavar="RUN_OR_CKPT")
    ppl.add_argument("--data", nargs="+", help=f"text files or directories (default: {DEFAULT_PPL_DATA})")
    ppl.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    ppl.add_argument("--stride", type=POSITIVE_INT, help="sliding-window step in tokens (default: half the context)")
    ppl.add_argument("--limit", type=POSITIVE_INT, help="score only the first N documents")
    _add_common(ppl)
    ppl.set_defaults(func=run_ppl)

    kb = sub.add_parser("kobest", help="KoBEST macro-F1 and accuracy by log-likelihood, as lm-eval's kobest_* tasks",
                        description="Score KoBEST tasks by comparing the log-likelihood of each answer choice, "
                        "with lm-evaluation-harness's kobest_* prompts, tokenization and metrics. "
                        f"Expects DIR/<task>/<split>.tsv as distributed (default DIR: {DEFAULT_KOBEST_DIR}).")
    kb.add_argument("model", metavar="RUN_OR_CKPT")
    kb.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated (default: {','.join(TASKS)})")
    kb.add_argument("--split", default="dev", choices=SPLITS,
                    help="dev (default; lm-eval's validation), test (the split lm-eval scores and published "
                    "KoBEST figures use; not in the default DIR) or train")
    kb.add_argument("--shots", type=NON_NEGATIVE_INT, default=0,
                    help="solved train examples before each question (default: 0)")
    kb.add_argument("--limit", type=POSITIVE_INT, help="only the first N examples of each task")
    kb.add_argument("--data-dir", default=str(DEFAULT_KOBEST_DIR), help=f"default: {DEFAULT_KOBEST_DIR}")
    kb.add_argument("--seed", type=SEED, default=1234, help="few-shot sampling seed, 0 … 2^64-1 (default: 1234, lm-eval's)")
    _add_common(kb)
    kb.set_defaults(func=run_kobest)

    dom = sub.add_parser("domain", help="domain adaptation, before vs after: bits/byte, chars/token, generations",
                         description="Compare RUN with the run it started from (--base, default: RUN's "
                         "train.init_from) on domain and general held-out text: bits per byte, characters per "
                         "token, and greedy generations on domain prompts. Writes <run>/eval/domain.json and a PNG.")
    dom.add_argument("model", metavar="RUN_OR_CKPT", help="the adapted run")
    dom.add_argument("--base", help="the run before adaptation (default: RUN's train.init_from)")
    dom.add_argument("--domain", nargs="+", required=True, help="domain held-out text: files or directories")
    dom.add_argument("--general", nargs="+", required=True, help="general held-out text: files or directories")
    dom.add_argument("--data", help="only documents that this `krmini prepare` directory put in its test split")
    dom.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    dom.add_argument("--limit", type=POSITIVE_INT, help="score only the first N documents of each kind")
    dom.add_argument("--stride", type=POSITIVE_INT, help="sliding-window step in tokens (default: half the context)")
    dom.add_argument("--prompt", action="append", help="domain prompt(s) for generations (default: three legal)")
    dom.add_argument("--max-new-tokens", type=POSITIVE_INT, default=40, help="tokens per generation (default: 40)")
    _add_common(dom)
    dom.set_defaults(func=run_domain)

    register_report(subparsers)


def _add_common(p) -> None:
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument("--batch-tokens", type=POSITIVE_INT, default=4096, help="tokens per forward batch (default: 4096)")
    p.add_argument("--out", help="JSON file for the results (default: <run>/eval/<name>.json)")


def results_path(args, name: str, reads: list = ()) -> Path:
    """Where the results go (--out, or <run>/eval/NAME), checked before the evaluation runs: a directory,
    a file of the checkpoint or a file the evaluation reads is refused."""
    ckpt = resolve_checkpoint(args.model)
    out = Path(args.out) if args.out else results_dir(args.model, ckpt) / name
    check_output(out, "file", [*checkpoint_files(ckpt), *reads])
    return out


def run_ppl(args) -> int:
    data = args.data
    if not data:
        if not DEFAULT_PPL_DATA.is_file():
            raise KrminiError(f"{DEFAULT_PPL_DATA}: default held-out file not found; pass --data FILE")
        data = [DEFAULT_PPL_DATA]
    name = "ppl-" + "+".join(Path(str(d)).name.split(".")[0] for d in data)[:80] + ".json"
    out = results_path(args, name, data)
    texts = read_eval_texts(data, args.text_field, args.limit)
    loaded = load_model(args.model, pick_device(args.device))
    start = time.perf_counter()
    result = perplexity(loaded.model, loaded.tokenizer, texts, args.stride, args.batch_tokens, progress=True)
    record = {"kind": "ppl", "checkpoint": str(loaded.path), "data": [str(d) for d in data],
              "stride": args.stride or loaded.model.config.max_position_embeddings // 2,
              **result.as_dict(), "seconds": round(time.perf_counter() - start, 1)}
    write_json(out, record)
    print(f"{result.documents} docs, {result.tokens:,} tokens, {result.bytes:,} bytes: loss {result.loss:.4f}, "
          f"perplexity {result.perplexity:.2f}, bits/byte {result.bits_per_byte:.4f}  → {out}")
    return 0


def run_kobest(args) -> int:
    tasks = parse_tasks(args.tasks)
    out = results_path(args, f"kobest-{args.split}-{args.shots}shot.json", [args.data_dir])
    loaded = load_model(args.model, pick_device(args.device))
    start = time.perf_counter()
    result = evaluate_kobest(loaded.model, loaded.tokenizer, tasks, args.data_dir, args.split, args.shots,
                             args.limit, args.seed, args.batch_tokens, progress=True)
    record = {"kind": "kobest", "checkpoint": str(loaded.path), **result,
              "seconds": round(time.perf_counter() - start, 1)}
    write_json(out, record)
    print(format_kobest(record))
    print(f"→ {out}")
    return 0


def run_domain(args) -> int:
    base = args.base or default_base(args.model)
    reads = [*args.domain, *args.general, *([args.data] if args.data else [])]
    out = results_path(args, "domain.json", reads)
    png = out.with_suffix(".png")
    check_output(png, "file", [*checkpoint_files(resolve_checkpoint(args.model)), run_dir(resolve_checkpoint(base)),
                               *reads])
    texts = read_texts(args.domain, args.general, args.text_field, args.limit, args.data)
    device = pick_device(args.device)
    start = time.perf_counter()
    prompts = args.prompt or DEFAULT_PROMPTS
    record = {"kind": "domain", "domain_data": [str(d) for d in args.domain],
              "general_data": [str(g) for g in args.general], "test_split_of": args.data}
    for which, model in (("before", base), ("after", args.model)):
        record[which] = measure(load_model(model, device), texts, prompts, args.max_new_tokens, args.stride,
                                args.batch_tokens)
    record["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out, record)
    plot_domain(record, png)
    print(format_domain(record))
    print(f"→ {out}, {png}")
    return 0

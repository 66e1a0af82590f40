"""`krmini bench prepare`: end-to-end speed of `krmini prepare` (read → clean → filter → near-dedup →
tokenize → write) on ../shared/data/pretrain, with 1 and with N worker processes.

Without --tokenizer a 32k tokenizer is trained on a sample first; that time is not counted. MB/s is
input file bytes (and, separately, document text bytes) per second of wall time; CPU seconds
(this process and its workers) are reported too, since on a shared machine wall time mostly
measures the neighbours. --profile adds a
cProfile of a one-worker run (everything in one process), summed by pipeline stage.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import resource
import tempfile
import time
from pathlib import Path

from krmini.argtypes import POSITIVE_INT, cores
from krmini.data.prepare import PrepareConfig, prepare, sample_texts
from krmini.data.readers import corpus_files
from krmini.runs import check_output, write_json_atomic
from krmini.tokenizer.tokenizer import KoTokenizer

DEFAULT_INPUT = "../shared/data/pretrain"
# Functions whose cumulative time is one stage of the pipeline (none calls another of the list).
STAGES = {
    "read (file, JSON)": ("_jsonl_documents",),
    "clean (NFC, whitespace)": ("clean_text",),
    "filters (Hangul, repetition, boilerplate)": ("text_reason", "strip_boilerplate", "scrub_pii"),
    "tokenize": ("encode_texts",),
    "MinHash signatures": ("signatures", "band_keys", "ngram_hashes", "repeated_ngram_ratio"),
    "dedup index + split + write": ("match_or_add", "write", "split_of", "copies"),
}


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker pool): contention on a
    shared machine stretches wall time, much less the CPU time the work itself needs."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _stage_profile(stats: pstats.Stats, total: float) -> dict[str, float]:
    by_name = {}
    for (_, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        by_name[name] = by_name.get(name, 0.0) + cumulative
    out = {stage: round(sum(by_name.get(f, 0.0) for f in funcs), 2) for stage, funcs in STAGES.items()}
    out["other"] = round(total - sum(out.values()), 2)
    return out


def run_benchmark(inputs: list[str], tokenizer_dir: str | None, workers: list[int], repeats: int, profile: bool) -> dict:
    files = corpus_files(inputs)
    file_mb = sum(f.stat().st_size for f in files) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        if tokenizer_dir is None:
            tok = KoTokenizer.train(sample_texts(inputs, "text", 20_000_000), vocab_size=32000, show_progress=False)
            tokenizer_dir = str(tok.save(Path(tmp) / "tokenizer"))
        tok = KoTokenizer.load(tokenizer_dir)
        results = {"input_mb": round(file_mb, 1), "cpus": os.cpu_count(), "runs": []}
        for _ in range(repeats):
            for w in workers:
                cpu = _cpu_seconds()
                start = time.perf_counter()
                m = prepare(inputs, tok, tokenizer_dir, Path(tmp) / f"out{w}", PrepareConfig.recommended(workers=w), progress=False)
                seconds = time.perf_counter() - start
                cpu = _cpu_seconds() - cpu
                text_mb = sum(s["read"]["bytes"] for s in m["sources"].values()) / 1e6
                results["runs"].append({"workers": w, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                                        "file_mb_s": round(file_mb / seconds, 2), "text_mb_s": round(text_mb / seconds, 2),
                                        "text_mb_per_cpu_s": round(text_mb / cpu, 2)})
                results["documents"] = m["documents"]
                results["removed"] = m["sources"]["input"]["removed"]
        if profile:
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.runcall(prepare, inputs, tok, tokenizer_dir, Path(tmp) / "profile", PrepareConfig.recommended(workers=1),
                             progress=False)
            total = time.perf_counter() - start
            results["profile_seconds"] = round(total, 1)
            results["profile"] = _stage_profile(pstats.Stats(profiler), total)
    return results


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="krmini prepare end to end: MB/s with 1 and N workers, stage profile",
                              description=__doc__)
    p.add_argument("inputs", nargs="*", default=[DEFAULT_INPUT], help=f"corpus (default: {DEFAULT_INPUT})")
    p.add_argument("--tokenizer", help="tokenizer directory (default: train a 32k one on a sample, not timed)")
    p.add_argument("--workers", type=cores(), nargs="+", default=[1, os.cpu_count() or 1],
                   help="worker counts to time (each at most the cores)")
    p.add_argument("--repeats", type=POSITIVE_INT, default=2, help="time each worker count this many times (shared machines vary)")
    p.add_argument("--profile", action="store_true", help="also profile a one-worker run by stage")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.json:  # refused before the benchmark runs: a directory, or a file it reads
        check_output(args.json, "file", [*args.inputs, *([args.tokenizer] if args.tokenizer else [])])
    r = run_benchmark(args.inputs, args.tokenizer, args.workers, args.repeats, args.profile)
    print(f"input {r['input_mb']} MB, {r['cpus']} CPUs")
    print(f"{'workers':>8}{'seconds':>9}{'file MB/s':>11}{'text MB/s':>11}{'CPU s':>8}{'text MB/CPU s':>15}")
    for x in r["runs"]:
        print(f"{x['workers']:>8}{x['seconds']:>9}{x['file_mb_s']:>11}{x['text_mb_s']:>11}{x['cpu_seconds']:>8}"
              f"{x['text_mb_per_cpu_s']:>15}")
    if "profile" in r:
        print(f"\none-worker profile ({r['profile_seconds']} s under cProfile):")
        for stage, seconds in r["profile"].items():
            print(f"  {stage:<45}{seconds:>8.2f} s")
    if args.json:
        write_json_atomic(args.json, r)
    return 0

"""`krmini bench speedrun`: held-out bits per byte at equal parameters and equal training budget.

The protocol (docs/bench/speedrun.md):

1. One tokenizer and one prepared copy of the data mix, made once in the work directory and reused
   (`speedrun_data`).
2. The entries — (a) `baseline`, a transformers GPT-2 trained with nanoGPT's recipe, (b)
   `ours_default`, (c) `ours_new`, and any `--entry` — are checked to have the same parameter count
   within ±5% (the GPT-2 is sized to match).
3. Each entry's budget becomes a number of steps before it trains: with `--flops` by dividing by its
   FLOPs per step; with `--minutes` by timing steps of throwaway copies, in turns (calibration). Its
   learning-rate schedule then runs over exactly that many steps, as an ordinary run's would, and the
   run is reproducible from the printed step counts: a schedule driven by elapsed time would change
   with every neighbour's load on the machine.
4. The entries train in turns, one chunk of `1/--evals` of their steps each, so drift in the
   machine's speed hits all of them alike. All see the same samples in the same order (seeded). Only
   training steps count towards an entry's seconds; after each chunk it is evaluated, untimed, on the
   held-out KorQuAD paragraphs and on the validation split (a fixed token cap each).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from krmini.argtypes import POSITIVE_INT, POSITIVE_NUMBER, SEED, cores
from krmini.bench.speedrun_data import heldout_texts, prepared_data
from krmini.bench.speedrun_entries import (
    BASELINE,
    ENTRY_SYNTAX,
    OURS_DEFAULT,
    OURS_NEW,
    REFERENCE,
    Entry,
    EntryState,
    build_model,
    flops_per_token,
    load_entries,
    match_parameters,
    matmul_count,
    start_entry,
    total_parameters,
    train_steps,
)
from krmini.bench.speedrun_report import plot, summary, table
from krmini.data.loader import split_windows
from krmini.data.prepare import load_data_config
from krmini.device import autocast, pick_device, pick_precision
from krmini.errors import KrminiError
from krmini.eval.ppl import DEFAULT_PPL_DATA, perplexity, read_eval_texts
from krmini.hardware import cpu
from krmini.runs import check_output, write_json_atomic
from krmini.tokenizer.tokenizer import DEFAULT_PRETOKENIZER, PRETOKENIZERS
from krmini.train.evaluation import evaluate
from krmini.train.flops import measure_matmul_peak
from krmini.train.trainer import format_seconds

DEFAULT_MINUTES = 10.0  # per entry: 30 minutes of training for the three entries (plus evaluations) on 2 cores
CALIBRATION_ROUNDS = 5  # at least this many timed steps of each entry
CALIBRATION_S = 10.0  # at least this long (or 2% of the budget, if less) timing a throwaway copy of each entry


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "speedrun", help="품질 대 계산량: 같은 파라미터·예산에서 bits/byte / quality per compute at equal budget",
        description="Train a GPT-2 baseline, our default recipe and our new recipe (and any --entry) at the same "
        "parameter count for the same budget, interleaved in one process; report held-out and validation bits per "
        "byte, the time each needed to reach the baseline's final held-out figure, a table, curves and a PNG.",
    )
    p.add_argument("--data", default="configs/data/speedrun.yaml", help="data config of the training mix "
                   "(default configs/data/speedrun.yaml)")
    p.add_argument("--heldout", default=str(DEFAULT_PPL_DATA), help=f"held-out JSONL text (default {DEFAULT_PPL_DATA})")
    p.add_argument("--out", default="runs/speedrun", help="work directory: the benchmark's tokenizer and data "
                   "(reused while the data config and vocabulary are unchanged) and speedrun.png")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=POSITIVE_NUMBER, help=f"training minutes per entry, > 0 "
                        f"(default {DEFAULT_MINUTES:g})")
    budget.add_argument("--flops", type=POSITIVE_NUMBER, help="training FLOPs per entry, > 0, instead of minutes")
    p.add_argument("--entry", action="append", default=[], metavar=ENTRY_SYNTAX,
                   help="add an entry (a config file or preset, with overrides), or replace a built-in one: "
                   "baseline, ours_default, ours_new; e.g. no_qk=configs/speedrun/new.yaml:model.qk_norm=false")
    p.add_argument("--sweep-baseline-lr", metavar="LR,LR,...", help="instead: train only the baseline, once per "
                   "learning rate, under the same protocol, and report the best on the validation split")
    p.add_argument("--vocab-sizes", metavar="V,V,...", help="instead: train ours_new once per vocabulary size, each "
                   "with its own tokenizer and data (OUT/vocab-V), for the same budget; a bigger vocabulary has a "
                   "bigger head, so parameters are not matched")
    p.add_argument("--pretokenizers", metavar="RULE,RULE,...", help="instead: train ours_new once per "
                   f"pre-tokenisation rule ({', '.join(PRETOKENIZERS)}), each with its own tokenizer and data "
                   "(OUT/pretok-RULE), for the same budget")
    p.add_argument("--evals", type=POSITIVE_INT, default=10, help="evaluation points (and turns) per entry (default 10)")
    p.add_argument("--eval-tokens", type=POSITIVE_INT, default=32768, help="tokens scored per evaluation on each "
                   "held-out set (default 32768)")
    p.add_argument("--seed", type=SEED, default=1337, help="data order and initial weights (default 1337)")
    p.add_argument("--threads", type=cores(), default=2, help="torch threads, at most the cores (default 2)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    p.add_argument("--json", help="write the results to this JSON file")
    p.set_defaults(func=run)


def number_list(text: str, flag: str, kind: type, valid, expected: str) -> list:
    """`A,B,C` → distinct values of `kind` (numbers, or names with `str`) that pass `valid`; one clear line
    otherwise."""
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(valid(v) for v in values) or len(set(values)) != len(values):
        raise KrminiError(f"{flag} {text!r}: expected {expected}")
    return values


def parse_lrs(text: str | None) -> list[float]:
    return [] if text is None else number_list(text, "--sweep-baseline-lr", float, lambda v: math.isfinite(v) and v > 0,
                                               "distinct positive learning rates, e.g. 1e-3,2e-3,4e-3")


def sweep_entries(entries: list[Entry], lrs: list[float]) -> list[Entry]:
    """The baseline once per learning rate (named baseline@lr=…), and the reference it is sized to."""
    base = next(e for e in entries if e.name == BASELINE)
    runs = [replace(base, name=f"{BASELINE}@lr={lr:g}", source=f"{base.source}:train.lr={lr:g}",
                    cfg=replace(base.cfg, train=replace(base.cfg.train, lr=lr))) for lr in lrs]
    return [*runs, next(e for e in entries if e.name == REFERENCE)]


def parse_vocab_sizes(text: str | None) -> list[int]:
    return [] if text is None else number_list(text, "--vocab-sizes", int, lambda v: 256 + 16 <= v <= 262_144,
                                               "distinct vocabulary sizes from 272 to 262144, e.g. 8000,16000,32000")


def parse_pretokenizers(text: str | None) -> list[str]:
    return [] if text is None else number_list(text, "--pretokenizers", str, lambda r: r in PRETOKENIZERS,
                                               f"distinct rules from {', '.join(PRETOKENIZERS)}")


def tokenizer_variants(entries: list[Entry], sizes: list[int], rules: list[str]) -> list[tuple[Entry, str, str]]:
    """ours_new once per vocabulary size (named vocab=…) or pre-tokenisation rule (pretok=…), each with
    the pre-tokenisation rule and the work subdirectory of its own tokenizer and data."""
    if sizes and rules:
        raise KrminiError("--vocab-sizes and --pretokenizers: give one of them (each sweep keeps the other fixed)")
    new = next(e for e in entries if e.name == OURS_NEW)
    by_size = [(replace(new, name=f"vocab={v}", source=f"{new.source}:model.vocab_size={v}",
                        cfg=replace(new.cfg, model=replace(new.cfg.model, vocab_size=v))), DEFAULT_PRETOKENIZER,
                f"vocab-{v}") for v in sizes]
    return by_size + [(replace(new, name=f"pretok={r}", source=f"{new.source} with {r}"), r, f"pretok-{r}")
                      for r in rules]


def calibrate(entries: list[Entry], budget_s: float, seed: int, windows: dict, device: torch.device,
              precisions: dict[str, str]) -> dict[str, float]:
    """Seconds per step of each entry, timed on throwaway copies in turns: one step of each, round after
    round, for at least `CALIBRATION_ROUNDS` rounds and `CALIBRATION_S` (or 2% of the budget) per entry,
    so that a change in the machine's speed falls on every entry alike. Each entry's figure is the median
    of its steps, so one step slowed by a neighbour does not move it."""
    probes = [start_entry(e, seed, device, precisions[e.name]) for e in entries]
    for probe in probes:
        train_steps(probe, windows[probe.entry.name], 1, device)  # first-step costs (allocations, kernels) left out
    limit, times = min(CALIBRATION_S, 0.02 * budget_s), {e.name: [] for e in entries}
    while min(len(v) for v in times.values()) < CALIBRATION_ROUNDS or min(sum(v) for v in times.values()) < limit:
        for probe in probes:
            start = time.perf_counter()
            train_steps(probe, windows[probe.entry.name], 1, device)  # returns a float: the step has finished
            times[probe.entry.name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def plan_steps(entry: Entry, budget_s: float | None, budget_flops: float | None, step_s: float = 0.0) -> None:
    """Set the entry's step count (and warmup, the config's share of its steps) from the budget: FLOPs
    divided by its FLOPs per step, or seconds by its calibrated seconds per step."""
    t = entry.cfg.train
    tokens_per_step = t.batch_size * t.grad_accum * t.seq_len
    if budget_flops is not None:
        steps = int(budget_flops // (flops_per_token(entry) * tokens_per_step))
    else:
        steps = round(budget_s / step_s)
    entry.max_steps = max(1, steps)
    entry.warmup_steps = min(entry.max_steps - 1, round(entry.max_steps * t.warmup_steps / t.max_steps))


class Scorer:
    """Held-out and validation bits per byte of a model, untimed, under its training precision."""

    def __init__(self, tokenizer, texts: list[str], data_dir: Path, eval_tokens: int, seed: int,
                 device: torch.device) -> None:
        self.tokenizer, self.texts, self.data_dir = tokenizer, texts, data_dir
        self.eval_tokens, self.seed, self.device = eval_tokens, seed, device
        self.val: dict[int, tuple] = {}
        self.seconds, self.count = 0.0, 0

    def __call__(self, state: EntryState) -> dict:
        start = time.perf_counter()
        t = state.entry.cfg.train
        if t.seq_len not in self.val:
            self.val[t.seq_len] = split_windows(self.data_dir, "val", t.seq_len, self.seed)
        windows, bytes_per_token = self.val[t.seq_len]
        val = evaluate(state.model, windows, bytes_per_token, replace(t, eval_tokens=self.eval_tokens), self.device,
                       state.precision)
        state.model.eval()
        with autocast(self.device, state.precision):
            held = perplexity(state.model, self.tokenizer, self.texts)
        state.model.train()
        self.seconds += time.perf_counter() - start
        self.count += 1
        return {"step": state.step, "tokens": state.tokens, "seconds": state.seconds,
                "heldout_bpb": held.bits_per_byte, "val_bpb": val["val_bpb"]}


def interleave(states: list[EntryState], windows: dict[str, object], scorers: dict[str, Scorer], evals: int,
               device: torch.device, progress: bool = True) -> list[tuple[str, int]]:
    """Train the entries in turns of 1/`evals` of their steps, each on its training windows and scored by
    its scorer (both by entry name); returns the order of (entry, steps) turns."""
    order = []
    for s in states:
        s.curve.append({**scorers[s.entry.name](s), "train_loss": None})
    unique = list({id(v): v for v in scorers.values()}.values())
    bar = tqdm(total=sum(s.entry.max_steps for s in states), desc="speedrun", unit="step", dynamic_ncols=True,
               disable=not progress)
    for turn in range(1, evals + 1):
        for s in states:
            n = s.entry.max_steps * turn // evals - s.step
            start = time.perf_counter()
            loss = train_steps(s, windows[s.entry.name], n, device) if n else None
            if device.type == "cuda":
                torch.cuda.synchronize()
            s.seconds += time.perf_counter() - start
            order.append((s.entry.name, n))
            s.curve.append({**scorers[s.entry.name](s), "train_loss": loss})
            bar.update(n)
            left = sum((x.entry.max_steps - x.step) * x.seconds / max(x.step, 1) for x in states)
            done = sum(sc.count for sc in unique)
            eta = left + (len(states) * (evals + 1) - done) * sum(sc.seconds for sc in unique) / max(done, 1)
            bar.set_postfix_str(f"turn {turn}/{evals} | {s.entry.name} {s.tokens / max(s.seconds, 1e-9):,.0f} tok/s, "
                                f"held-out {s.curve[-1]['heldout_bpb']:.3f} bpb | ETA {format_seconds(eta)}")
    bar.close()
    return order


def run(args) -> int:
    out = Path(args.out)
    check_output(out, "dir", [args.data, args.heldout])
    if args.json:
        check_output(args.json, "file", [args.data, args.heldout])
    lrs = parse_lrs(args.sweep_baseline_lr)
    device = pick_device(args.device)
    data_config = load_data_config(args.data)
    texts = read_eval_texts([args.heldout])
    entries = load_entries(args.entry)
    if lrs:
        entries = sweep_entries(entries, lrs)
    variants = tokenizer_variants(entries, parse_vocab_sizes(args.vocab_sizes), parse_pretokenizers(args.pretokenizers))
    torch.set_num_threads(args.threads)
    if variants:  # each has its own tokenizer and data; a bigger vocabulary is a bigger head: nothing to match
        entries = [e for e, _, _ in variants]
        counts = {e.name: {"matmul": matmul_count(e), "total": total_parameters(build_model(e))} for e in entries}
        data = {e.name: prepared_data(args.data, data_config, out / sub, e.cfg.model.vocab_size, rule)
                for e, rule, sub in variants}
    else:
        reference = next(e for e in entries if e.name == REFERENCE)
        counts = match_parameters(entries)
        shared = prepared_data(args.data, data_config, out, reference.cfg.model.vocab_size)
        if lrs:  # the reference only sized the baseline
            entries = [e for e in entries if e.name != REFERENCE]
        data = {e.name: shared for e in entries}
    texts = heldout_texts(texts, data[entries[0].name][0], args.eval_tokens)  # the same documents for every entry
    precisions = {e.name: pick_precision(e.cfg.train.precision, device) for e in entries}
    train_windows, scorers, made = {}, {}, {}
    for e in entries:
        tokenizer, data_dir = data[e.name]
        key = (str(data_dir), e.cfg.train.seq_len)
        if key not in made:
            made[key] = split_windows(data_dir, "train", e.cfg.train.seq_len, args.seed)[0]
        if str(data_dir) not in made:
            made[str(data_dir)] = Scorer(tokenizer, texts, data_dir, args.eval_tokens, args.seed, device)
        train_windows[e.name], scorers[e.name] = made[key], made[str(data_dir)]
    budget_s = None if args.flops else 60 * (args.minutes or DEFAULT_MINUTES)
    budget = f"{args.flops:.3g} FLOPs" if args.flops else f"{budget_s / 60:g} min of training steps"
    where = cpu().model if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"speedrun: {len(entries)} entries × {budget} each | {device} ({where}), {args.threads} threads | seed {args.seed} | {args.evals} evaluations of {args.eval_tokens:,} tokens per set")
    step_times = {} if args.flops else calibrate(entries, budget_s, args.seed, train_windows, device, precisions)
    for e in entries:
        step_s = step_times.get(e.name, 0.0)
        plan_steps(e, budget_s, args.flops, step_s)
        shape = (f"GPT-2 {e.gpt2.n_layer} layers × {e.gpt2.n_embd} wide" if e.gpt2 else
                 f"ours {e.cfg.model.num_hidden_layers} layers × {e.cfg.model.hidden_size} wide")
        print(f"  {e.name:<16} {counts[e.name]['matmul']:>11,} params in matmuls ({counts[e.name]['total']:,} in all) | "
              f"{shape} | {precisions[e.name]} | {flops_per_token(e) / 1e6:.1f} MFLOP/token | {e.max_steps:,} steps"
              f" (warmup {e.warmup_steps})" + (f", calibrated at {step_s:.3f} s/step" if step_s else "") + f" | {e.source}")
    peaks = {p: measure_matmul_peak(device, p, size=1024, seconds=0.5) for p in set(precisions.values())}
    print("measured matmul peak (MFU is against it): " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()))
    states = [start_entry(e, args.seed, device, precisions[e.name]) for e in entries]
    interleave(states, train_windows, scorers, args.evals, device)
    record = summary(states, peaks, counts, {e.name: flops_per_token(e) for e in entries})
    print(table(record))
    if "target_heldout_bpb" in record:
        print(f"→base: share of the baseline's {record['entries'][BASELINE]['seconds']:.0f} s an entry needed to "
              f"reach its final held-out {record['target_heldout_bpb']:.4f} bits/byte (interpolated)")
    if "time_to_default_bpb" in record:
        print(f"→default: the same against ours_default's {record['entries'][OURS_DEFAULT]['seconds']:.0f} s and "
              f"{record['entries'][OURS_DEFAULT]['heldout_bpb']:.4f} bits/byte")
    if lrs:
        best_lr, best = min(zip(lrs, record["entries"].values(), strict=True), key=lambda pair: pair[1]["val_bpb"])
        record["sweep"] = {"lrs": lrs, "best_lr": best_lr}
        print(f"best baseline lr: {best_lr:g} (validation {best['val_bpb']:.4f} bits/byte); put it in the baseline "
              "config's train.lr")
    png = plot(record, out / "speedrun.png")
    print(f"curves: {png}")
    if args.json:
        protocol = {"budget_seconds": budget_s, "budget_flops": args.flops, "evals": args.evals,
                    "eval_tokens": args.eval_tokens, "seed": args.seed, "device": str(device), "threads": args.threads,
                    "machine": where, "data": args.data, "heldout": args.heldout, "heldout_documents": len(texts),
                    "vocab_sizes": {n: d[0].vocab_size for n, d in data.items()},
                    "pretokenizers": {e.name: rule for e, rule, _ in variants},
                    "eval_seconds": sum({id(v): v.seconds for v in scorers.values()}.values())}
        write_json_atomic(args.json, {"protocol": protocol, "peaks": peaks, **record})
    return 0

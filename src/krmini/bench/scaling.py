"""`krmini bench scaling`: the new recipe at several depths and FLOP budgets, and the scaling fit that
`krmini plan` sizes models by.

Every run is a speedrun entry (`speedrun_entries`): the same data, tokenizer, held-out sets and
training step, interleaved in one process. Depth d is the plan's dial (`krmini.train.plan`), with
AdamW's lr scaled to the width; each (depth, budget) pair is a whole run whose schedule (WSD) ends at
its budget, so its final bits per byte is what a run of that size and length reaches. Budgets are
FLOPs, so the figures do not depend on the machine's speed or load. The fit of
bpb = E + A / N^α + B / D^β over all runs goes to `--fit-out` (the package's copy is
configs/speedrun/scaling-fit.json), with a PNG of the runs and the fitted curves.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from krmini.argtypes import POSITIVE_INT, SEED, cores
from krmini.bench.speedrun import Scorer, interleave, number_list, plan_steps
from krmini.bench.speedrun_data import heldout_texts, prepared_data
from krmini.bench.speedrun_entries import OURS_NEW, Entry, load_entries, start_entry
from krmini.data.loader import split_windows
from krmini.data.prepare import load_data_config
from krmini.device import pick_device, pick_precision
from krmini.eval.ppl import DEFAULT_PPL_DATA, read_eval_texts
from krmini.hardware import cpu
from krmini.runs import check_output, write_json_atomic
from krmini.train.flops import matmul_parameters, training_flops_per_token
from krmini.train.plan import ScalingFit, depth_lr, model_for_depth

DEFAULT_DEPTHS = "2,3,4,6"
DEFAULT_FLOPS = "5e12,1e13"  # the 8 runs take about 10 minutes on 2 cores
EXPONENTS = np.arange(0.05, 1.5001, 0.01)
METRICS = ("heldout_bpb", "val_bpb")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "scaling", help="스케일링 적합: 깊이·예산별 bits/byte / the scaling fit behind `krmini plan`",
        description="Train the new recipe at several depths, each for several FLOP budgets (interleaved, one "
        "process), and fit bits/byte = E + A/N^alpha + B/D^beta (N: parameters in matmuls, D: tokens) for "
        "`krmini plan`. Writes the fit, a JSON record and a PNG.",
    )
    p.add_argument("--data", default="configs/data/speedrun.yaml", help="data config (default: the speedrun's)")
    p.add_argument("--heldout", default=str(DEFAULT_PPL_DATA), help=f"held-out JSONL text (default {DEFAULT_PPL_DATA})")
    p.add_argument("--out", default="runs/speedrun", help="work directory, shared with `krmini bench speedrun` "
                   "(its tokenizer and data are reused); scaling.png goes there")
    p.add_argument("--config", default="speedrun/new", help="the recipe (default "
                   "configs/speedrun/new.yaml); its shape is replaced by each depth's")
    p.add_argument("--depths", default=DEFAULT_DEPTHS, help=f"depths (the plan's dial; default {DEFAULT_DEPTHS})")
    p.add_argument("--flops", default=DEFAULT_FLOPS, help=f"training FLOPs per run (default {DEFAULT_FLOPS})")
    p.add_argument("--evals", type=POSITIVE_INT, default=2, help="evaluation points per run (default 2)")
    p.add_argument("--eval-tokens", type=POSITIVE_INT, default=32768, help="tokens per held-out evaluation")
    p.add_argument("--seed", type=SEED, default=1337, help="data order and initial weights (default 1337)")
    p.add_argument("--threads", type=cores(), default=2, help="torch threads, at most the cores (default 2)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    p.add_argument("--json", help="write every run and the fit to this JSON file")
    p.add_argument("--fit-out", help="write the fit here (default OUT/scaling-fit.json); "
                   "configs/speedrun/scaling-fit.json is the one `krmini plan` reads")
    p.set_defaults(func=run)


def depth_entries(base: Entry, depths: list[int], budgets: list[float]) -> list[tuple[Entry, float]]:
    """One entry per (depth, budget): the base recipe at the dial's shape and width-scaled lr."""
    runs = []
    for d in depths:
        model = model_for_depth(d, base.cfg.model)
        train = replace(base.cfg.train, lr=depth_lr(model.hidden_size))
        for flops in budgets:
            runs.append((replace(base, name=f"d{d}@{flops:.2g}", source=f"{base.source} at depth {d}",
                                 cfg=replace(base.cfg, model=model, train=train)), flops))
    return runs


def nonnegative_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient ≥ 0, by trying each set of free columns (3 columns: 8 sets)."""
    best, best_sse = np.zeros(x.shape[1]), float(((y) ** 2).sum())
    for mask in range(1, 2 ** x.shape[1]):
        cols = [i for i in range(x.shape[1]) if mask >> i & 1]
        coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
        if (coef < 0).any():
            continue
        full = np.zeros(x.shape[1])
        full[cols] = coef
        sse = float(((x @ full - y) ** 2).sum())
        if sse < best_sse:
            best, best_sse = full, sse
    return best


def fit(points: list[dict], metric: str, source: str) -> ScalingFit:
    """Non-negative least squares of `metric` on [1, N^-α, D^-β] over a grid of exponents (E, A, B ≥ 0)."""
    n = np.array([p["params"] for p in points], dtype=float)
    d = np.array([p["tokens"] for p in points], dtype=float)
    y = np.array([p[metric] for p in points], dtype=float)
    best = None
    for a in EXPONENTS:
        for b in EXPONENTS:
            x = np.stack([np.ones_like(n), n**-a, d**-b], axis=1)
            coef = nonnegative_lstsq(x, y)
            sse = float(((x @ coef - y) ** 2).sum())
            if best is None or sse < best[0]:
                best = (sse, a, b, coef)
    sse, a, b, (e, big_a, big_b) = best
    return ScalingFit(E=float(e), A=float(big_a), alpha=round(float(a), 2), B=float(big_b), beta=round(float(b), 2),
                      n_range=[int(n.min()), int(n.max())], d_range=[int(d.min()), int(d.max())], metric=metric,
                      rmse=math.sqrt(sse / len(y)), source=source)


def plot(points: list[dict], fits: dict[str, ScalingFit], path: Path) -> Path:
    """Bits per byte against training FLOPs: the runs of each depth, the fit through them, and the
    fit's frontier (the lowest over depths at each budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    depths = sorted({p["depth"] for p in points})
    for ax, metric in zip(axes, METRICS, strict=True):
        f = fits[metric]
        lo, hi = min(p["flops"] for p in points), max(p["flops"] for p in points)
        grid = np.geomspace(lo / 2, hi * 4, 60)
        frontier = np.full_like(grid, np.inf)
        for d in depths:
            mine = sorted((p for p in points if p["depth"] == d), key=lambda p: p["flops"])
            line = ax.plot([p["flops"] for p in mine], [p[metric] for p in mine], "o", label=f"depth {d}")[0]
            n, per_token = mine[0]["params"], mine[0]["flops_per_token"]
            curve = np.array([f.predict(n, c / per_token) for c in grid])
            ax.plot(grid, curve, "--", color=line.get_color(), linewidth=1)
            frontier = np.minimum(frontier, curve)
        ax.plot(grid, frontier, color="black", linewidth=1.5, label="fit: best depth")
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(f"{'KorQuAD held-out' if metric == 'heldout_bpb' else 'validation'} bits/byte")
        ax.set_title(f"E {f.E:.3f} + {f.A:.3g}/N^{f.alpha:.2f} + {f.B:.3g}/D^{f.beta:.2f} (rmse {f.rmse:.3f})",
                     fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("scaling: the new recipe at several depths and FLOP budgets")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(args) -> int:
    out = Path(args.out)
    check_output(out, "dir", [args.data, args.heldout])
    fit_out = Path(args.fit_out) if args.fit_out else out / "scaling-fit.json"
    for path in (args.json, fit_out):
        if path:
            check_output(path, "file", [args.data, args.heldout])
    depths = number_list(args.depths, "--depths", int, lambda v: 0 < v <= 32, f"depths from 1 to 32, e.g. {DEFAULT_DEPTHS}")
    budgets = number_list(args.flops, "--flops", float, lambda v: math.isfinite(v) and v > 0,
                          f"positive FLOP budgets, e.g. {DEFAULT_FLOPS}")
    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    base = next(e for e in load_entries([f"{OURS_NEW}={args.config}"]) if e.name == OURS_NEW)
    runs = depth_entries(base, depths, budgets)
    data_config, texts = load_data_config(args.data), read_eval_texts([args.heldout])  # both read before any output
    tokenizer, data_dir = prepared_data(args.data, data_config, out, base.cfg.model.vocab_size)
    texts = heldout_texts(texts, tokenizer, args.eval_tokens)
    seq = base.cfg.train.seq_len
    train_windows = split_windows(data_dir, "train", seq, args.seed)[0]
    precision = pick_precision(base.cfg.train.precision, device)
    where = cpu().model if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"scaling: depths {depths} × budgets {budgets} FLOPs | {device} ({where}), {args.threads} threads | "
          f"{base.source}, AdamW lr scaled to the width")
    for entry, flops in runs:
        plan_steps(entry, None, flops)
        print(f"  {entry.name:<12} {matmul_parameters(entry.cfg.model):>11,} params in matmuls | "
              f"{entry.cfg.model.num_hidden_layers} × {entry.cfg.model.hidden_size} | {entry.max_steps:,} steps")
    states = [start_entry(e, args.seed, device, precision) for e, _ in runs]
    score = Scorer(tokenizer, texts, data_dir, args.eval_tokens, args.seed, device)
    interleave(states, {e.name: train_windows for e, _ in runs}, {e.name: score for e, _ in runs}, args.evals, device)
    points = []
    for s, (entry, flops) in zip(states, runs, strict=True):
        m = entry.cfg.model
        points.append({"name": entry.name, "depth": m.num_hidden_layers, "params": matmul_parameters(m),
                       "tokens": s.tokens, "flops": flops, "flops_per_token": training_flops_per_token(m, seq),
                       "steps": s.step, "seconds": s.seconds, "tokens_per_s": s.tokens / max(s.seconds, 1e-9),
                       "lr": entry.cfg.train.lr, "heldout_bpb": s.curve[-1]["heldout_bpb"],
                       "val_bpb": s.curve[-1]["val_bpb"]})
    protocol = {"depths": depths, "flops": budgets, "seed": args.seed, "device": str(device), "machine": where,
                "threads": args.threads, "data": args.data, "heldout": args.heldout, "config": base.source}
    if args.json:  # the runs first: a fit that goes wrong must not lose them
        write_json_atomic(args.json, {"protocol": protocol, "points": points})
    source = f"{len(points)} runs, depths {min(depths)}–{max(depths)}, {min(budgets):.2g}–{max(budgets):.2g} FLOPs"
    fits = {metric: fit(points, metric, source) for metric in METRICS}
    print(f"{'run':<12}{'params':>11}{'tokens':>11}{'heldout':>9}{'fit':>8}{'val':>8}{'fit':>8}")
    for p in points:
        print(f"{p['name']:<12}{p['params']:>11,}{p['tokens']:>11,}{p['heldout_bpb']:>9.4f}"
              f"{fits['heldout_bpb'].predict(p['params'], p['tokens']):>8.4f}{p['val_bpb']:>8.4f}"
              f"{fits['val_bpb'].predict(p['params'], p['tokens']):>8.4f}")
    for metric, f in fits.items():
        print(f"fit {metric}: {f.E:.4f} + {f.A:.4g}/N^{f.alpha:.2f} + {f.B:.4g}/D^{f.beta:.2f} (rmse {f.rmse:.4f})")
    write_json_atomic(fit_out, {"protocol": protocol, "fits": {k: vars(f) for k, f in fits.items()}})
    print(f"fit: {fit_out} | curves: {plot(points, fits, out / 'scaling.png')}")
    if args.json:
        write_json_atomic(args.json, {"protocol": protocol, "points": points, "fits": {k: vars(f) for k, f in fits.items()}})
    return 0

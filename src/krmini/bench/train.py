"""`krmini bench train`: our training step vs Hugging Face `LlamaForCausalLM`, same config, same process.

Both models get the same weights (HF's is built from ours with `to_hf_model`), the same random
batch, the same AdamW (fused on CPU and CUDA) and the same autocast precision. Runs are
interleaved (ours, HF, ours, HF, …) and the median step time is kept, so a neighbour's load on a
shared machine hits both sides alike. MFU is measured against the matmul peak of this machine in
this process (square matmuls at the same thread count), for fp32 and bf16 separately.
"""

from __future__ import annotations

import statistics
import time

import torch

from krmini.argtypes import POSITIVE_INT, cores
from krmini.device import autocast
from krmini.errors import KrminiError
from krmini.model import LlamaModel
from krmini.runs import check_output, write_json_atomic
from krmini.train.config import TrainConfig, load_run_config
from krmini.train.flops import measure_matmul_peak, training_flops_per_token
from krmini.train.optim import build_optimizer


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="학습 속도: 우리 모델 vs Hugging Face / training tokens/s and MFU against HF Llama",
        description="Time training steps of our model and of transformers.LlamaForCausalLM built from the same "
        "config, for each precision and compile setting; print tokens/s, the ratio and MFU.",
    )
    p.add_argument("--preset", default="small", help="run config YAML or preset name (default: small)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.num_hidden_layers=6")
    p.add_argument("--steps", type=POSITIVE_INT, default=3, help="timed steps per round (default 3)")
    p.add_argument("--rounds", type=POSITIVE_INT, default=3, help="interleaved ours/HF rounds (default 3)")
    p.add_argument("--batch", type=POSITIVE_INT, default=4, help="sequences per step (default 4)")
    p.add_argument("--seq-len", type=POSITIVE_INT, default=256, help="tokens per sequence, at most the context "
                   "(default 256)")
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16, fp16 (default fp32,bf16)")
    p.add_argument("--compile", default="off,on", help="comma list of off, on (default off,on)")
    p.add_argument("--threads", type=cores(), default=2, help="torch threads, at most the cores (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--profile", action="store_true", help="also print where our eager step's time goes")
    p.add_argument("--json", help="write the results to this JSON file")
    p.set_defaults(func=run)


class HFLoss(torch.nn.Module):
    """HF's model behind our (input, target) → (logits, loss) call, so both are timed by one loop (and
    scored by the same evaluation code: `config.max_position_embeddings` is HF's name for the context)."""

    def __init__(self, hf) -> None:
        super().__init__()
        self.hf = hf

    @property
    def config(self):
        return self.hf.config

    def forward(self, x, y=None):
        logits = self.hf(input_ids=x).logits
        if y is None:
            return logits, None
        return logits, torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def _step_fn(model, optimizer, device, precision):
    def step(x, y):
        with autocast(device, precision):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def _timed(step, x, y, n: int, device) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step(x, y).item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _build(cfg, device, precision: str, compiled: bool):
    from krmini.export.hf import to_hf_model

    torch.manual_seed(0)
    ours = LlamaModel(cfg.model).to(device).train()
    hf = HFLoss(to_hf_model(ours).to(device).train())
    train_cfg = TrainConfig()
    pairs = {}
    for name, model in (("ours", ours), ("hf", hf)):
        opt = build_optimizer(model, train_cfg)
        pairs[name] = _step_fn(torch.compile(model) if compiled else model, opt, device, precision)
    return pairs


def _profile(step, x, y) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(x, y).item()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40)


def run(args) -> int:
    if args.json:  # refused before the benchmark runs
        check_output(args.json, "file", [args.preset])
    cfg = load_run_config(args.preset, args.overrides)
    if args.seq_len > cfg.model.max_position_embeddings:
        raise KrminiError(f"--seq-len: {args.seq_len} exceeds the context of {args.preset} "
                          f"(model.max_position_embeddings {cfg.model.max_position_embeddings})")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KrminiError("--device cuda: no CUDA GPU is available")
    precisions = [p.strip() for p in args.precision.split(",")]
    compiles = [c.strip() == "on" for c in args.compile.split(",")]
    torch.set_num_threads(args.threads)
    flops_per_token = training_flops_per_token(cfg.model, args.seq_len)
    tokens = args.batch * args.seq_len
    peaks = {p: measure_matmul_peak(device, p, size=2048, seconds=2.0) for p in precisions}
    n_params = sum(p.numel() for p in LlamaModel(cfg.model).parameters())
    print(f"{args.preset}: {n_params / 1e6:.1f}M parameters | batch {args.batch} × {args.seq_len} | "
          f"{args.threads} threads | {flops_per_token * tokens / 1e9:.1f} GFLOP per step")
    print("measured matmul peak: " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()))
    x = torch.randint(0, cfg.model.vocab_size, (args.batch, args.seq_len), device=device)
    y = torch.randint(0, cfg.model.vocab_size, (args.batch, args.seq_len), device=device)
    rows = []
    for precision in precisions:
        for compiled in compiles:
            steps = _build(cfg, device, precision, compiled)
            first = {name: _timed(step, x, y, 1, device)[0] for name, step in steps.items()}  # compile / warm-up
            times = {name: [] for name in steps}
            for _ in range(args.rounds):
                for name, step in steps.items():
                    times[name] += _timed(step, x, y, args.steps, device)
            row = {"precision": precision, "compile": compiled}
            for name in steps:
                median = statistics.median(times[name])
                row[name] = {"step_s": median, "tokens_per_s": tokens / median, "first_step_s": first[name],
                             "mfu": flops_per_token * tokens / median / peaks[precision]}
            row["ratio"] = row["hf"]["step_s"] / row["ours"]["step_s"]
            rows.append(row)
            print(f"{precision:>4} compile {'on ' if compiled else 'off'} | ours {row['ours']['tokens_per_s']:8.0f} "
                  f"tok/s (MFU {row['ours']['mfu']:.0%}, first step {first['ours']:.1f} s) | HF "
                  f"{row['hf']['tokens_per_s']:8.0f} tok/s (MFU {row['hf']['mfu']:.0%}, first step "
                  f"{first['hf']:.1f} s) | ours/HF {row['ratio']:.2f}×", flush=True)
            if args.profile and not compiled:
                for name, step in steps.items():
                    print(f"profile, {name}, {precision} eager:\n{_profile(step, x, y)}")
            del steps
    if args.json:
        write_json_atomic(args.json, {"preset": args.preset, "overrides": args.overrides, "batch": args.batch,
                                      "seq_len": args.seq_len, "threads": args.threads, "params": n_params,
                                      "peaks": peaks, "rows": rows})
    return 0

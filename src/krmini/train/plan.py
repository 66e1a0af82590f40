"""Compute-aware sizing: from a budget (minutes, hours or FLOPs) to a model and a run.

`krmini plan --budget 30m` and `krmini train --budget 30m` use it. One dial sets the model, as
nanochat's `--depth` does: depth d gives d layers of width 64·d (heads of 32 up to d = 8, then of
64; half as many KV heads where the count is even; a SwiGLU width of 2.75× rounded to 64). Depth 4 is the chat-demo model.

Which depth? The one that trains on about 20 tokens per parameter (Hoffmann et al.'s compute-optimal
ratio, nanochat's default): a budget in FLOPs buys D = FLOPs / (FLOPs per token) at each depth, and the
depth whose D / N is nearest 20 wins. Our own scaling fit, bpb(N, D) = E + A / N^α + B / D^β (N the
parameters in matmuls, D the training tokens; `krmini bench scaling`, configs/speedrun/scaling-fit.json,
docs/bench/scaling.md), gives the bits per byte to expect. It does not choose the depth: fitted on
minute-long runs on 2 cores, where every run was limited by its tokens, it found no size term (A = 0),
and minimising it would always pick the smallest model.

A time budget becomes FLOPs through the device's measured speed: the matmul peak at an assumed
utilisation picks a first depth, a few timed training steps of that model give its real rate, and
the depth is chosen again at that rate (and timed again if it changed). The step count then comes
from the timed seconds per step, so the plan fits the budget on this machine.

The rest follows the new recipe (configs/speedrun/new.yaml), as the fit measured it: an untied head,
zero-initialised output projections, Muon for the blocks (its lr and the WSD decay fraction from the base
config: chat-demo's 0.01 and 40%, measured on its 3,600-step run; the fit was made at 0.02 and 20%), AdamW for
embeddings, head and norms at 2e-3 · sqrt(256 / width) (the lr measured at width 256, scaled as
nanochat scales it), warmup–stable–decay with 5% warmup. The batch is the largest power of two in
tokens that still leaves 2,000 steps, from 16 sequences up to 2^19 tokens (nanochat's batch).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import yaml

from krmini.config import apply_overrides, from_dict, load_yaml
from krmini.device import autocast, pick_device, pick_precision
from krmini.errors import KrminiError
from krmini.model import LlamaModel, ModelConfig
from krmini.train.config import PRESETS_DIR, RunConfig, resolve_config_path
from krmini.train.flops import matmul_parameters, measure_matmul_peak, training_flops_per_token
from krmini.train.optim import build_optimizers, optimizer_step

FIT_PATH = PRESETS_DIR / "speedrun" / "scaling-fit.json"
PLAN_FILE = "plan.yaml"  # `krmini train --budget` writes the planned config into the run directory
DEPTHS = range(1, 33)
TOKENS_PER_PARAMETER = 20  # Hoffmann et al.'s compute-optimal ratio, nanochat's default
ASSUMED_MFU = 0.3  # only for the first guess of a time budget's depth; the plan uses the measured rate
MIN_STEPS = 2000
MIN_BATCH_SEQUENCES, MAX_BATCH_TOKENS = 16, 2**19
BASE_LR, BASE_WIDTH = 2e-3, 256
WARMUP_SHARE = 0.05
RECIPE_MODEL = {"tie_word_embeddings": False, "zero_init_proj": True}  # the new recipe's model switches, as fitted
UNITS = {"s": 1, "m": 60, "h": 3600}
BUDGET_RE = re.compile(r"^(\d+(?:\.\d+)?)([smh])$")


@dataclass
class ScalingFit:
    """bpb(N, D) = E + A / N^alpha + B / D^beta, and the range of N and D it was fitted on."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    n_range: list[int]
    d_range: list[int]
    metric: str = "heldout_bpb"
    rmse: float = 0.0
    source: str = ""

    def predict(self, n: float, d: float) -> float:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def covers(self, n: float, d: float) -> bool:
        return self.n_range[0] <= n <= self.n_range[1] and self.d_range[0] <= d <= self.d_range[1]


@dataclass
class Budget:
    seconds: float | None = None
    flops: float | None = None

    def __str__(self) -> str:
        return f"{self.flops:.3g} FLOPs" if self.flops else f"{self.seconds / 60:g} min"


@dataclass
class Plan:
    depth: int
    model: ModelConfig
    params: int  # in matmuls: the N of the fit and of 6·N FLOPs per token
    flops_per_token: float
    tokens: int
    steps: int
    warmup_steps: int
    batch_size: int
    grad_accum: int
    seq_len: int
    lr: float
    muon_lr: float
    flops: float
    seconds: float | None  # expected wall time of the steps (time budgets; measured rate)
    step_s: float | None
    expected: dict[str, float]  # metric → expected bpb from the fit
    extrapolated: bool


def parse_budget(text: str) -> Budget:
    """`30m`, `2h`, `90s` (wall time of training steps) or a FLOP count such as `1e17`."""
    m = BUDGET_RE.match(text.strip())
    if m:
        seconds = float(m.group(1)) * UNITS[m.group(2)]
        if seconds > 0:
            return Budget(seconds=seconds)
    try:
        flops = float(text)
    except ValueError:
        flops = 0.0
    if not (math.isfinite(flops) and flops >= 1e9):
        raise KrminiError(f"--budget {text!r}: expected a time such as 30m, 2h or 90s, or FLOPs such as 1e17 (≥ 1e9)")
    return Budget(flops=flops)


def load_fits(path: Path = FIT_PATH) -> dict[str, ScalingFit]:
    """The fitted curves by metric (held-out KorQuAD bpb, validation bpb)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return {k: from_dict(ScalingFit, v, f"{path}: fits.{k}") for k, v in data["fits"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KrminiError(f"{path}: not a scaling fit written by `krmini bench scaling` ({e})") from None


def model_for_depth(depth: int, base: ModelConfig) -> ModelConfig:
    """The dial: d layers of 64·d, heads of 32 (64 past depth 8), KV heads half the heads (all of an odd
    number), SwiGLU 2.75× rounded to 64; the rest (vocabulary, context, RoPE, tying, init) from `base`."""
    width = 64 * depth
    heads = width // (32 if depth <= 8 else 64)
    intermediate = max(64, round(2.75 * width / 64) * 64)
    cfg = replace(base, hidden_size=width, intermediate_size=intermediate, num_hidden_layers=depth,
                  num_attention_heads=heads, num_key_value_heads=heads // 2 if heads % 2 == 0 else heads,
                  head_dim=None)
    cfg.validate(f"depth {depth}")
    return cfg


def depth_lr(width: int) -> float:
    return BASE_LR * math.sqrt(BASE_WIDTH / width)


def best_depth(flops: float, base: ModelConfig, seq_len: int) -> int:
    """The depth whose tokens per parameter, at `flops`, come nearest 20 (at least one batch of tokens)."""
    def distance(d: int) -> float:
        c = model_for_depth(d, base)
        tokens = flops / training_flops_per_token(c, seq_len)
        if tokens < MIN_BATCH_SEQUENCES * seq_len:
            return math.inf
        return abs(math.log(tokens / matmul_parameters(c) / TOKENS_PER_PARAMETER))
    best = min(DEPTHS, key=distance)
    if distance(best) == math.inf:
        raise KrminiError(f"budget of {flops:.3g} FLOPs: too small for one batch of the smallest model; give more")
    return best


def batch_for(tokens: float, seq_len: int, device: torch.device) -> tuple[int, int]:
    """(micro-batch sequences, gradient accumulation) for a run of `tokens`: ≥ 2,000 steps where it can."""
    target = max(MIN_BATCH_SEQUENCES * seq_len, min(MAX_BATCH_TOKENS, tokens / MIN_STEPS))
    sequences = max(MIN_BATCH_SEQUENCES, 2 ** int(math.log2(target / seq_len)))
    micro = min(sequences, 16 if device.type == "cpu" else 32)
    return micro, sequences // micro


def time_step(model_cfg: ModelConfig, run: RunConfig, batch: int, device: torch.device, precision: str,
              steps: int = 3) -> float:
    """Seconds per optimizer step of a fresh model on random tokens (micro-batch `batch`; one step of
    warm-up left out), with the recipe's optimizers."""
    t = replace(run.train, batch_size=batch, grad_accum=1, optimizer="muon")
    model = LlamaModel(model_cfg).to(device).train()
    optimizers = build_optimizers(model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    x = torch.randint(0, model_cfg.vocab_size, (batch, t.seq_len + 1), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(steps + 1):
        if i == 1:
            sync()
            start = time.perf_counter()
        with autocast(device, precision):
            _, loss = model(x[:, :-1], x[:, 1:])
        scaler.scale(loss).backward()
        optimizer_step(model, optimizers, scaler, t.grad_clip)
    sync()
    return (time.perf_counter() - start) / steps


def make_plan(budget: Budget, run: RunConfig, fits: dict[str, ScalingFit], device: torch.device,
              precision: str, say=print) -> Plan:
    """Choose the depth and the run for `budget`, keeping `run`'s vocabulary, context and precision."""
    base, seq_len = replace(run.model, **RECIPE_MODEL), run.train.seq_len
    fit = fits["heldout_bpb"]
    step_s = None
    if budget.flops:
        depth = best_depth(budget.flops, base, seq_len)
        flops = budget.flops
    else:
        rate = measure_matmul_peak(device, precision, size=1024, seconds=0.5) * ASSUMED_MFU
        depth, tried = best_depth(budget.seconds * rate, base, seq_len), {}
        while depth not in tried:  # time the chosen depth, choose again at its measured rate
            c = model_for_depth(depth, base)
            micro, _ = batch_for(budget.seconds * rate / training_flops_per_token(c, seq_len), seq_len, device)
            tried[depth] = time_step(c, run, micro, device, precision) / (micro * seq_len)  # seconds per token
            rate = training_flops_per_token(c, seq_len) / tried[depth]
            say(f"  timed depth {depth}: {1 / tried[depth]:,.0f} tokens/s, {rate / 1e9:,.1f} GFLOP/s")
            depth = best_depth(budget.seconds * rate, base, seq_len)
        step_s = tried[depth]  # per token until the batch is known
        flops = budget.seconds / step_s * training_flops_per_token(model_for_depth(depth, base), seq_len)
    model = model_for_depth(depth, base)
    per_token = training_flops_per_token(model, seq_len)
    micro, accum = batch_for(flops / per_token, seq_len, device)
    tokens_per_step = micro * accum * seq_len
    steps = max(1, int(flops / per_token // tokens_per_step))
    seconds = None
    if step_s is not None:
        step_s *= tokens_per_step
        steps = max(1, int(budget.seconds // step_s))
        seconds = steps * step_s
    params, tokens = matmul_parameters(model), steps * tokens_per_step
    warmup = max(1, round(WARMUP_SHARE * steps))
    return Plan(depth, model, params, per_token, tokens, steps, warmup, micro, accum, seq_len, depth_lr(model.hidden_size),
                run.train.muon_lr, tokens * per_token, seconds, step_s,
                {k: f.predict(params, tokens) for k, f in fits.items()}, not fit.covers(params, tokens))


def plan_overrides(plan: Plan) -> list[str]:
    """The plan as `key=value` overrides of a run config: its model shape and the new recipe (untied head,
    zero-initialised projections, Muon, WSD, the plan's lrs and schedule); the config's other settings
    (vocabulary, context, precision, data, evaluation) stay."""
    m = plan.model
    shape = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"]
    return [*(f"model.{k}={getattr(m, k)}" for k in shape), "model.head_dim=null",
            *(f"model.{k}={str(v).lower()}" for k, v in RECIPE_MODEL.items()),
            f"train.batch_size={plan.batch_size}", f"train.grad_accum={plan.grad_accum}",
            f"train.max_steps={plan.steps}", f"train.warmup_steps={plan.warmup_steps}",
            f"train.lr={plan.lr:.4g}", "train.optimizer=muon", f"train.muon_lr={plan.muon_lr:g}", "train.schedule=wsd"]


def planned_yaml(config: str, overrides: list[str], plan: Plan, origin: str) -> str:
    """The config file with the user's overrides and the plan's applied: a run config for `krmini train`."""
    data = apply_overrides(load_yaml(resolve_config_path(config)), [*overrides, *plan_overrides(plan)])
    return f"# planned by `{origin}` from {config}\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def describe(plan: Plan, budget: Budget, fits: dict[str, ScalingFit]) -> list[str]:
    m = plan.model
    lines = [f"plan for {budget}: depth {plan.depth} — {m.num_hidden_layers} layers × {m.hidden_size} wide, "
             f"{m.num_attention_heads} heads ({m.num_key_value_heads} KV), SwiGLU {m.intermediate_size}, vocab "
             f"{m.vocab_size}, context {m.max_position_embeddings}",
             f"  {plan.params:,} parameters in matmuls | {plan.flops_per_token / 1e6:,.1f} MFLOP/token | "
             f"{plan.tokens:,} tokens ({plan.tokens / plan.params:.1f} per parameter) | {plan.flops:.3g} FLOPs",
             f"  {plan.steps:,} steps × {plan.batch_size} × {plan.grad_accum} × {plan.seq_len} tokens | "
             f"lr {plan.lr:.2e} (AdamW), muon_lr {plan.muon_lr:g} | wsd, warmup {plan.warmup_steps}"]
    if plan.seconds is not None:
        lines.append(f"  {plan.step_s:.3f} s/step measured here → {plan.seconds / 60:.1f} min of training steps "
                     "(evaluations and checkpoints add to it)")
    fit = fits["heldout_bpb"]
    expect = ", ".join(f"{k.replace('_bpb', '')} {v:.3f}" for k, v in plan.expected.items())
    lines.append(f"  expected bits/byte (our scaling fit, {fit.source}): {expect}")
    if plan.extrapolated:
        lines.append(f"  note: outside the fitted range (N {fit.n_range[0]:,}–{fit.n_range[1]:,}, D "
                     f"{fit.d_range[0]:,}–{fit.d_range[1]:,} tokens): an extrapolation, and the fit is for its "
                     "8k-token tokenizer and the speedrun mix")
    return lines


def plan_record(plan: Plan) -> dict:
    return {**asdict(plan), "model": asdict(plan.model)}


def plan_run(budget_text: str, run: RunConfig, device_name: str) -> tuple[Budget, Plan, dict[str, ScalingFit]]:
    """`krmini plan` and `krmini train --budget`: parse the budget, load the fit, plan for `run` on the device."""
    budget = parse_budget(budget_text)
    device = pick_device(device_name)
    fits = load_fits()
    precision = pick_precision(run.train.precision, device)
    print(f"planning for {budget} on {device} ({precision})")
    return budget, make_plan(budget, run, fits, device, precision), fits

"""The entries of `krmini bench speedrun`: what each one trains, at what size, and its training step.

An entry is a run config (a YAML file or preset with `model:` and `train:`) plus `key=value`
overrides. One with a `gpt2:` section (n_layer, n_head) is a `transformers.GPT2LMHeadModel` —
learned positions, GELU, LayerNorm, tied head — whose width is fitted so its parameter count
matches the reference entry's; its `model:` section gives only the vocabulary and the context.

Parameters are compared as the weights that take part in a matmul (`krmini.train.flops`): every
linear layer and the LM head, not embedding lookups (token or learned position tables). That count
sets the compute per token, and it does not change when a recipe unties the head, which only adds a
lookup table. The total is printed beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch

from krmini.config import apply_overrides, from_dict, load_yaml
from krmini.device import autocast
from krmini.errors import KrminiError
from krmini.model import LlamaModel
from krmini.train.config import PRESETS_DIR, RunConfig, TrainConfig, resolve_config_path
from krmini.train.flops import flops_per_token as flops_per_token_of
from krmini.train.flops import matmul_parameters, training_flops_per_token
from krmini.train.optim import build_optimizers, optimizer_step, set_step

BASELINE, OURS_DEFAULT, OURS_NEW = "baseline", "ours_default", "ours_new"
BUILT_IN = {BASELINE: "speedrun/baseline.yaml", OURS_DEFAULT: "speedrun/default.yaml", OURS_NEW: "speedrun/new.yaml"}
REFERENCE = OURS_DEFAULT  # the entry whose parameter count the others match
PARAM_TOLERANCE = 0.05
ENTRY_SYNTAX = "NAME=CONFIG[:key=value,key=value,...]"
NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]+$")


@dataclass
class Gpt2Shape:
    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 0  # 0: fitted to the reference entry's parameter count


@dataclass
class Entry:
    name: str
    source: str  # the config file or preset, with its overrides, as given
    cfg: RunConfig
    gpt2: Gpt2Shape | None = None
    max_steps: int = 0  # set by the budget
    warmup_steps: int = 0


@dataclass
class EntryState:
    """An entry during the benchmark: its model, optimizer and what it has used of its budget."""

    entry: Entry
    model: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]  # AdamW, or Muon + AdamW (train.optimizer)
    scaler: torch.amp.GradScaler
    precision: str
    step: int = 0
    seconds: float = 0.0
    tokens: int = 0
    curve: list[dict] = field(default_factory=list)


def parse_entry(spec: str) -> tuple[str, str, list[str]]:
    """`NAME=CONFIG[:key=value,...]` → (name, config, overrides); one clear line when malformed."""
    name, eq, rest = spec.partition("=")
    source, colon, overrides = rest.partition(":")
    pairs = overrides.split(",") if colon else []
    if not eq or not name or not NAME_RE.match(name) or not source or any("=" not in p or p.startswith("=")
                                                                           for p in pairs):
        raise KrminiError(f"--entry {spec!r}: expected {ENTRY_SYNTAX}, e.g. "
                          "no_qk=configs/speedrun/new.yaml:model.qk_norm=false")
    return name, source, pairs


def load_entry(name: str, source: str, overrides: list[str]) -> Entry:
    path = resolve_config_path(source)
    if not path.is_file():
        raise KrminiError(f"{path}: entry {name}: no such config file")
    data = apply_overrides(load_yaml(path), overrides)
    where = f"{path}{' with ' + ','.join(overrides) if overrides else ''}:"
    gpt2_section = data.pop("gpt2", None)
    gpt2 = from_dict(Gpt2Shape, gpt2_section, f"{where} gpt2") if gpt2_section is not None else None
    cfg = from_dict(RunConfig, data, where)
    cfg.model.validate(f"{where} model")
    cfg.train.validate(f"{where} train")
    cfg.validate(where)
    for key, value in (("train.compile", cfg.train.compile), ("train.init_from", cfg.train.init_from),
                       ("lora", cfg.lora)):
        if value:
            raise KrminiError(f"{where} {key}: not used by the speedrun (every entry trains eagerly, from scratch, "
                              "all of its weights); remove it")
    if gpt2 is not None and (min(gpt2.n_layer, gpt2.n_head) <= 0 or gpt2.n_embd < 0 or gpt2.n_embd % gpt2.n_head):
        raise KrminiError(f"{where} gpt2: n_layer and n_head must be positive and n_embd 0 (fitted) or a multiple of n_head, got {gpt2}")
    label = source + (":" + ",".join(overrides) if overrides else "")
    return Entry(name, label, cfg, gpt2)


def load_entries(specs: list[str]) -> list[Entry]:
    """The three built-in entries (each replaceable by an `--entry` of its name), then the extra ones."""
    parsed = [parse_entry(s) for s in specs]
    names = [p[0] for p in parsed]
    if len(set(names)) != len(names):
        raise KrminiError(f"--entry: names must be unique, got {names}")
    given = {name: (source, over) for name, source, over in parsed}
    entries = []
    for name in [*BUILT_IN, *(n for n in names if n not in BUILT_IN)]:
        if name in given:
            entries.append(load_entry(name, *given[name]))
        else:  # shipped with the package (configs/ in a clone is the same directory)
            entries.append(replace(load_entry(name, str(PRESETS_DIR / BUILT_IN[name]), []),
                                   source=f"configs/{BUILT_IN[name]}"))
    return entries


# ---- parameter counts ---------------------------------------------------------------------------

def gpt2_matmul_parameters(shape: Gpt2Shape, vocab: int) -> int:
    """Linear weights and biases of GPT-2's blocks (c_attn, c_proj, c_fc, mlp c_proj with a 4× MLP)
    plus the tied LM head; the token and position tables are lookups."""
    d = shape.n_embd
    return shape.n_layer * (12 * d * d + 9 * d) + vocab * d


def fit_gpt2(shape: Gpt2Shape, vocab: int, target: int) -> Gpt2Shape:
    """The width (a multiple of n_head, so heads divide it) whose count is nearest `target`."""
    if shape.n_embd:
        return shape
    widths = range(shape.n_head, 64 * shape.n_head * 8 + 1, shape.n_head)
    best = min(widths, key=lambda d: abs(gpt2_matmul_parameters(replace(shape, n_embd=d), vocab) - target))
    return replace(shape, n_embd=best)


def matmul_count(entry: Entry) -> int:
    if entry.gpt2 is not None:
        return gpt2_matmul_parameters(entry.gpt2, entry.cfg.model.vocab_size)
    return matmul_parameters(entry.cfg.model)


def flops_per_token(entry: Entry) -> float:
    """Training FLOPs per token, `krmini.train.flops`'s formula (6·N + 12·L·T·d) for either model."""
    t = entry.cfg.train.seq_len
    if entry.gpt2 is None:
        return training_flops_per_token(entry.cfg.model, t)
    return flops_per_token_of(matmul_count(entry), entry.gpt2.n_layer, t, entry.gpt2.n_embd)


def match_parameters(entries: list[Entry]) -> dict[str, dict[str, int]]:
    """Fit GPT-2 entries to the reference's count and check every entry is within ±5% of it, with the
    reference's vocabulary (the benchmark tokenizer's size)."""
    ref = next((e for e in entries if e.name == REFERENCE), entries[0])
    target = matmul_count(ref)
    for e in entries:
        if e.cfg.model.vocab_size != ref.cfg.model.vocab_size:
            raise KrminiError(f"entry {e.name} ({e.source}): model.vocab_size {e.cfg.model.vocab_size} differs from "
                              f"{ref.name}'s {ref.cfg.model.vocab_size}, the benchmark tokenizer's size")
        if e.gpt2 is not None:
            e.gpt2 = fit_gpt2(e.gpt2, e.cfg.model.vocab_size, target)
    counts = {e.name: {"matmul": matmul_count(e), "total": total_parameters(build_model(e))} for e in entries}
    off = [f"{n} {c['matmul']:,}" for n, c in counts.items() if abs(c["matmul"] / target - 1) > PARAM_TOLERANCE]
    if off:
        raise KrminiError(f"entries must have the parameter count of {ref.name} ({target:,} in matmuls) within "
                          f"±{PARAM_TOLERANCE:.0%}; off: {', '.join(off)}")
    return counts


def total_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ---- models and the training step ---------------------------------------------------------------

def build_model(entry: Entry) -> torch.nn.Module:
    """A fresh model: our LlamaModel, or GPT-2 behind the same (input, target) → (logits, loss) call."""
    if entry.gpt2 is None:
        return LlamaModel(entry.cfg.model)
    from transformers import GPT2Config, GPT2LMHeadModel

    from krmini.bench.train import HFLoss

    s, m = entry.gpt2, entry.cfg.model
    config = GPT2Config(vocab_size=m.vocab_size, n_positions=m.max_position_embeddings, n_embd=s.n_embd,
                        n_layer=s.n_layer, n_head=s.n_head, n_inner=4 * s.n_embd, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=None,
                        eos_token_id=None)
    return HFLoss(GPT2LMHeadModel(config))


def start_entry(entry: Entry, seed: int, device: torch.device, precision: str) -> EntryState:
    """Model and optimizer from `seed`: every entry (and every rebuild of one) starts the same way."""
    torch.manual_seed(seed)
    model = build_model(entry).to(device).train()
    return EntryState(entry, model, build_optimizers(model, entry.cfg.train),
                      torch.amp.GradScaler(device.type, enabled=precision == "fp16"), precision)


def schedule(entry: Entry) -> TrainConfig:
    """The entry's train config with the budget's step count; warmup keeps the config's share of its steps."""
    return replace(entry.cfg.train, max_steps=entry.max_steps, warmup_steps=entry.warmup_steps)


def train_steps(state: EntryState, windows, n: int, device: torch.device) -> float:
    """`n` optimizer steps as the trainer takes them (scheduled lr, gradient accumulation, autocast,
    clipping); returns the mean training loss. Sample i of the run is the same for every entry."""
    t = schedule(state.entry)
    losses = torch.zeros((), device=device)
    for _ in range(n):
        set_step(state.optimizers, state.step, t)
        for micro in range(t.grad_accum):
            x, y = windows.batch((state.step * t.grad_accum + micro) * t.batch_size, t.batch_size, device)
            with autocast(device, state.precision):
                _, loss = state.model(x, y)
            state.scaler.scale(loss / t.grad_accum).backward()
            losses += loss.detach() / t.grad_accum
        optimizer_step(state.model, state.optimizers, state.scaler, t.grad_clip)
        state.step += 1
        state.tokens += t.batch_size * t.grad_accum * t.seq_len
    return losses.item() / max(n, 1)


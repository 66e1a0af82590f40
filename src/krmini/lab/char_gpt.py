"""Step 7: a character-level GPT in PyTorch, small enough to train on a laptop CPU.

    tokens → token embedding + learned position embedding
           → N × [x + Attn(LN(x)); x + MLP(LN(x))] → LN → logits (output matrix tied to the embedding)

The recipe follows nanoGPT's CPU baseline for Tiny Shakespeare (block 64, batch 12, 4 layers,
4 heads, 128 wide, no dropout, AdamW at 1e-3 with 100 warm-up steps and a cosine decay to 1e-4 by
iteration 2000, gradient clipping at 1.0) so our validation loss can be compared with its ≈ 1.88.
The same model trains on Korean text: a Hangul syllable is one character, so the vocabulary is
larger (a couple of thousand symbols) but nothing else changes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from krmini.argtypes import SEED_LIMIT
from krmini.config import from_dict
from krmini.errors import KrminiError
from krmini.lab.chardata import CharVocab
from krmini.lab.plotting import plot_attention
from krmini.runs import read_json, staged_file, write_json_atomic

WEIGHTS_FILE = "model.safetensors"
SETUP_FILE = "model.json"  # GPTConfig and the vocabulary (characters in id order)


@dataclass
class GPTConfig:
    vocab: int = 65
    block: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, keep_weights: list | None = None) -> torch.Tensor:
        """Fused attention for training; with `keep_weights` the same math written out, so the
        (B, heads, T, T) probabilities can be appended there for plotting."""
        b, t, c = x.shape
        q, k, v = (
            z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in self.qkv(x).split(c, -1)
        )
        if keep_weights is None:
            drop = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            future = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
            weights = scores.masked_fill(future, float("-inf")).softmax(-1)
            keep_weights.append(weights)
            y = weights @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep_weights: list | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), keep_weights))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab, bias=False)
        self.head.weight = self.tok.weight  # reading and writing a token share one vector
        self.apply(self._init)
        # Each residual branch adds to the stream; shrinking their last layer by 1/√(2·layers)
        # keeps the stream's variance from growing with depth at initialisation.
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, keep_weights: list | None = None) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos))
        for block in self.blocks:
            x = block(x, keep_weights)
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n: int, temperature: float = 1.0, generator=None) -> torch.Tensor:
        for _ in range(n):
            logits = self(idx[:, -self.cfg.block :])[:, -1] / temperature
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


@dataclass
class TrainConfig:
    iters: int = 2000
    batch: int = 12
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_batches: int = 200
    seed: int = 1337


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up, then a half cosine from lr down to min_lr at the last iteration."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    progress = min(1.0, (step - tc.warmup) / max(1, tc.iters - tc.warmup))
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.lr - tc.min_lr)


def make_optimizer(model: CharGPT, tc: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only; biases and LayerNorm gains are left free."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.99))


def get_batch(
    data: torch.Tensor, block: int, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(len(data) - block, (batch,), generator=gen)
    x = torch.stack([data[s : s + block] for s in starts])
    y = torch.stack([data[s + 1 : s + 1 + block] for s in starts])
    return x, y


@torch.no_grad()
def estimate_loss(model: CharGPT, data: torch.Tensor, tc: TrainConfig, gen: torch.Generator) -> float:
    model.eval()
    total = 0.0
    for _ in range(tc.eval_batches):
        x, y = get_batch(data, model.cfg.block, tc.batch, gen)
        total += F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    model.train()
    return total / tc.eval_batches


def train(text: str, cfg: GPTConfig, tc: TrainConfig, out: Path, log=print) -> dict:
    """Train on the first 90% of `text`, evaluate on the rest; write checkpoint, metrics, a sample
    and one attention PNG per layer and head under `out`. Returns the metrics."""
    vocab = CharVocab(text)
    cfg.vocab = len(vocab)
    data = torch.from_numpy(vocab.encode(text))
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    if len(val_data) <= cfg.block + 1:
        raise KrminiError(f"text: expected well over {10 * (cfg.block + 1)} characters, got {len(data)}")
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    eval_gen = torch.Generator()
    model = CharGPT(cfg)
    opt = make_optimizer(model, tc)
    history = []
    start = time.perf_counter()
    for step in range(tc.iters + 1):
        if step % tc.eval_interval == 0 or step == tc.iters:
            eval_gen.manual_seed((tc.seed + 1) % SEED_LIMIT)  # the same batches every time, so evals are comparable
            losses = {
                "step": step,
                "train": estimate_loss(model, train_data, tc, eval_gen),
                "val": estimate_loss(model, val_data, tc, eval_gen),
            }
            history.append(losses)
            log(
                f"step {step:5d}: train {losses['train']:.4f}, val {losses['val']:.4f}, {time.perf_counter() - start:.0f}s"
            )
        if step == tc.iters:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        x, y = get_batch(train_data, cfg.block, tc.batch, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
    seconds = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    save_char_gpt(model, vocab, out)
    prompt = val_data[: cfg.block][None]
    model.eval()
    sample = vocab.decode(model.generate(prompt[:, :1], 300, generator=torch.Generator().manual_seed(0))[0])
    (out / "sample.txt").write_text(sample, encoding="utf-8")
    pngs = save_attention_maps(model, vocab, prompt[:, :32], out)
    metrics = {
        "train_loss": history[-1]["train"],
        "val_loss": history[-1]["val"],
        "wall_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": len(vocab),
        "model": asdict(cfg),
        "train": asdict(tc),
        "history": history,
        "attention_pngs": [p.name for p in pngs],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    return metrics


def save_char_gpt(model: CharGPT, vocab: CharVocab, out: Path) -> None:
    """Weights as safetensors (the tied output matrix stored once), config and vocabulary as JSON."""
    with staged_file(out / WEIGHTS_FILE, force=True) as tmp:
        save_model(model, str(tmp))
    write_json_atomic(out / SETUP_FILE, {"model": asdict(model.cfg), "chars": vocab.chars})


def load_char_gpt(directory: str | Path) -> tuple[CharGPT, CharVocab]:
    """The model and vocabulary `train` saved in `directory`, in eval mode."""
    setup_path, weights = Path(directory) / SETUP_FILE, Path(directory) / WEIGHTS_FILE
    setup = read_json(setup_path, "not found; expected a directory written by `krmini lab char-gpt`")
    model = CharGPT(from_dict(GPTConfig, setup.get("model"), f"{setup_path}: model"))
    chars = setup.get("chars")
    if not isinstance(chars, list) or len(chars) != model.cfg.vocab:
        raise KrminiError(f"{setup_path}: chars: expected a list of {model.cfg.vocab} characters")
    if not weights.is_file():
        raise KrminiError(f"{weights}: not found; expected a directory written by `krmini lab char-gpt`")
    try:
        load_model(model, str(weights))
    except (SafetensorError, RuntimeError) as exc:
        raise KrminiError(f"{weights}: does not fit {setup_path} ({str(exc).splitlines()[0]})") from None
    return model.eval(), CharVocab("".join(chars))


@torch.no_grad()
def save_attention_maps(model: CharGPT, vocab: CharVocab, prompt: torch.Tensor, out: Path) -> list[Path]:
    weights: list[torch.Tensor] = []
    model(prompt, keep_weights=weights)
    tokens = list(vocab.decode(prompt[0]))
    paths = []
    for layer, w in enumerate(weights):
        for head in range(w.shape[1]):
            path = out / f"attention_l{layer}_h{head}.png"
            paths.append(
                plot_attention(w[0, head : head + 1].numpy(), tokens, path, f"layer {layer}, head {head}")
            )
    return paths

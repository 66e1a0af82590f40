"""`krmini model-info`: parameter counts and training memory of a run config.

The numbers come from `krmini.model.info`, which needs only a ModelConfig; the command reads a
whole run config (the `train:` section gives the batch, sequence length and precision, and is
checked as strictly as by `krmini train`), so it lives in `train`, the layer that defines run configs.
"""

from __future__ import annotations

from krmini.model.info import count_parameters, estimate_memory, human_bytes
from krmini.train.config import load_run_config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "model-info", help="파라미터 수·메모리 추정 / parameters and estimated memory of a config",
        description="Print parameter counts and estimated training memory (weights, gradients, optimizer state: "
        "AdamW's, or Muon's for the blocks with train.optimizer=muon, activations) for a run config, without building "
        "the model.",
    )
    p.add_argument("config", help="run config YAML (e.g. configs/small.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.num_hidden_layers=6")
    p.add_argument("--batch", type=int, help="micro-batch size (default: the config's train.batch_size; "
                   "checked as train.batch_size is)")
    p.add_argument("--seq-len", type=int, help="sequence length, at most the model's context (default: the "
                   "config's train.seq_len; checked as train.seq_len is)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="activation precision")
    p.set_defaults(func=run)


def run(args) -> int:
    sizes = {"train.batch_size": args.batch, "train.seq_len": args.seq_len}
    cfg = load_run_config(args.config, [*args.overrides, *(f"{k}={v}" for k, v in sizes.items() if v is not None)])
    m = cfg.model
    batch, seq_len = cfg.train.batch_size, cfg.train.seq_len
    precision = args.precision or ("fp32" if cfg.train.precision in ("auto", "fp32") else cfg.train.precision)
    counts = count_parameters(m)
    mem = estimate_memory(m, batch, seq_len, precision, cfg.train.optimizer)
    print(f"config: {args.config}")
    print(f"  vocab {m.vocab_size}, hidden {m.hidden_size}, layers {m.num_hidden_layers}, heads "
          f"{m.num_attention_heads} (kv {m.num_key_value_heads}, head_dim {m.head_dim}), SwiGLU "
          f"{m.intermediate_size}, context {m.max_position_embeddings}, tied {m.tie_word_embeddings}")
    print("parameters:")
    for name, n in counts.items():
        print(f"  {name:<12} {n:>15,}  ({n / 1e6:.1f}M)")
    print(f"memory, training at batch {batch} × {seq_len} tokens, {precision} activations:")
    for name in ("weights", "gradients", "optimizer", "activations", "step_temporaries", "runtime"):
        note = f"  ({cfg.train.optimizer})" if name == "optimizer" else ""
        print(f"  {name:<16} {human_bytes(getattr(mem, name)):>12}{note}")
    print(f"  {'peak':<16} {human_bytes(mem.training):>12}  (weights + gradients + optimizer + "
          "max(activations, step_temporaries) + runtime)")
    print(f"inference weights: fp32 {human_bytes(counts['total'] * 4)}, bf16 {human_bytes(counts['total'] * 2)}, "
          f"int8 {human_bytes(counts['total'])}")
    return 0

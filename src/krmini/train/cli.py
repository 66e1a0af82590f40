"""`krmini train`."""

from __future__ import annotations

import json

from krmini.train.config import load_run_config
from krmini.train.trainer import train


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="사전학습 / pretrain a model from a run config",
        description="Pretrain the Llama-style model. The config is a YAML file (or a preset name: tiny, small, "
        "medium, large) with `model:` and `train:` sections; key=value arguments override it, e.g. "
        "train.lr=1e-3 train.data_dir=runs/x/data.",
    )
    p.add_argument("--config", required=True, help="run config YAML or preset name")
    p.add_argument("overrides", nargs="*", help="key=value overrides (section.key=value)")
    p.add_argument("--data", help="shorthand for train.data_dir=…")
    p.add_argument("--out", help="shorthand for train.out_dir=…")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    p.set_defaults(func=run)


def run(args) -> int:
    overrides = list(args.overrides)
    for flag, key in ((args.data, "train.data_dir"), (args.out, "train.out_dir"), (args.device, "train.device")):
        if flag:
            overrides.append(f"{key}={flag}")
    cfg = load_run_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}, ensure_ascii=False))
    return 0

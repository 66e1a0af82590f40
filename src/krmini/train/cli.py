"""`krmini train` (and `python -m krmini.train`, the entry point torchrun starts on every rank)."""

from __future__ import annotations

import argparse
import json
import os

from krmini.argtypes import Parser, cores
from krmini.errors import exit_code
from krmini.runs import check_output
from krmini.train.config import load_run_config
from krmini.train.distributed import launch
from krmini.train.trainer import train

DESCRIPTION = (
    "Pretrain the Llama-style model. The config is a YAML file (or a preset name: tiny, small, "
    "medium, large) with `model:` and `train:` sections; key=value arguments override it, e.g. "
    "train.lr=1e-3 train.data_dir=runs/x/data. With --nproc N (or under torchrun) it trains "
    "data-parallel: train.strategy=ddp replicates the model, fsdp shards it."
)


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="사전학습 / pretrain a model from a run config", description=DESCRIPTION)
    add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    """`python -m krmini.train …`: the arguments of `krmini train …`, without the rest of the CLI."""
    parser = Parser(prog="python -m krmini.train", description=DESCRIPTION)
    add_arguments(parser)
    return exit_code(run, parser.parse_args(argv))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config YAML or preset name")
    p.add_argument("overrides", nargs="*", help="key=value overrides (section.key=value)")
    p.add_argument("--data", help="shorthand for train.data_dir=…")
    p.add_argument("--out", help="shorthand for train.out_dir=…")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in out_dir (a damaged newer one is skipped)")
    p.add_argument("--nproc", type=cores(),
                   help="processes on this machine (one per GPU, at most one per core); launches torchrun for you")
    p.set_defaults(func=run)


def run(args) -> int:
    overrides = list(args.overrides)
    for flag, key in ((args.data, "train.data_dir"), (args.out, "train.out_dir"), (args.device, "train.device")):
        if flag:
            overrides.append(f"{key}={flag}")
    cfg = load_run_config(args.config, overrides)  # check the config before starting any process
    check_output(cfg.train.out_dir, "dir", [cfg.train.data_dir] if cfg.train.data_dir else [])
    if args.nproc and "WORLD_SIZE" not in os.environ:
        return launch(args.nproc, ["--config", args.config, *overrides] + (["--resume"] if args.resume else []))
    result = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
                         ensure_ascii=False))
    return 0

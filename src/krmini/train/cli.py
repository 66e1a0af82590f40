"""`krmini train` (and `python -m krmini.train`, the entry point torchrun starts on every rank)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from krmini.argtypes import Parser, cores
from krmini.errors import KrminiError, exit_code
from krmini.runs import check_output, run_dir, write_text_atomic
from krmini.train.config import load_run_config
from krmini.train.continued import DEFAULT_CONFIG, continued_config
from krmini.train.distributed import launch
from krmini.train.lora import parse_lora_spec
from krmini.train.plan import PLAN_FILE, describe, plan_overrides, plan_run, planned_yaml
from krmini.train.trainer import train

DESCRIPTION = (
    "Pretrain the Llama-style model. The config is a YAML file (or a preset name: tiny, small, "
    "medium, large) with `model:` and `train:` sections; key=value arguments override it, e.g. "
    "train.lr=1e-3 train.data_dir=runs/x/data. With --nproc N (or under torchrun) it trains "
    "data-parallel: train.strategy=ddp replicates the model, fsdp shards it. With --init-from RUN it "
    f"continues from RUN's weights (ours or imported) with a fresh optimizer and schedule; the model "
    f"comes from RUN and the config has a train section only (default: the {DEFAULT_CONFIG} preset)."
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
    p.add_argument("--config", help=f"run config YAML or preset name (required without --init-from; with it, "
                   f"train section only, default: {DEFAULT_CONFIG})")
    p.add_argument("overrides", nargs="*", help="key=value overrides (section.key=value)")
    p.add_argument("--init-from", metavar="RUN",
                   help="start from this run's or checkpoint's weights (ours or imported; never written to): "
                   "fresh optimizer, schedule and step, own --out")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="with --init-from: move the run to this extension of RUN's tokenizer (`krmini tokenizer "
                   "extend`); new rows start as the mean of their old pieces. The data must be tokenized with it")
    p.add_argument("--lora", metavar="SPEC",
                   help="with --init-from: train LoRA adapters only, e.g. r=16,alpha=32 (domain tuning of a large "
                   "imported model)")
    p.add_argument("--budget", metavar="BUDGET",
                   help="size the model and run for a budget: 30m, 2h, 90s of training steps or FLOPs such as 1e17 "
                   "(`krmini plan`: depth, width, tokens, batch and lrs at about 20 tokens per parameter; vocabulary, "
                   "context and the rest from --config)")
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
    # check the config before starting any process
    if args.budget and (args.init_from or args.resume):
        raise KrminiError(f"--budget: sizes a new model, not with {'--init-from' if args.init_from else '--resume'}; "
                          "resume a planned run with --config OUT/plan.yaml --resume")
    if args.init_from:
        lora = parse_lora_spec(args.lora) if args.lora else None
        cfg = continued_config(args.init_from, args.config, args.tokenizer, overrides, lora)
    elif args.config is None:
        raise KrminiError("--config: required (a run config YAML or preset name), unless --init-from is given")
    elif args.tokenizer or args.lora:
        raise KrminiError(f"{'--tokenizer' if args.tokenizer else '--lora'}: only with --init-from RUN")
    elif args.budget:
        if args.nproc or "WORLD_SIZE" in os.environ:
            raise KrminiError("--budget: plans one device; with several, write the plan once (`krmini plan --budget "
                              f"{args.budget} --config {args.config} --write plan.yaml`) and train --config plan.yaml")
        budget, plan, fits = plan_run(args.budget, load_run_config(args.config, overrides), args.device or "auto")
        print("\n".join(describe(plan, budget, fits)))
        planned = planned_yaml(args.config, overrides, plan, f"krmini train --budget {args.budget}")
        cfg = load_run_config(args.config, [*overrides, *plan_overrides(plan)])
    else:
        cfg = load_run_config(args.config, overrides)
    reads = [p for p in (cfg.train.data_dir, cfg.train.tokenizer) if p]
    if cfg.train.init_from:
        reads.append(run_dir(Path(cfg.train.init_from)))  # the source run is only read
    check_output(cfg.train.out_dir, "dir", reads)
    if args.budget:  # the plan depends on a measurement: keep it, so the run can be resumed as planned
        write_text_atomic(Path(cfg.train.out_dir) / PLAN_FILE, planned)
    if args.nproc and "WORLD_SIZE" not in os.environ:
        given = [(flag, value) for flag, value in (("--config", args.config), ("--init-from", args.init_from),
                                                   ("--tokenizer", args.tokenizer), ("--lora", args.lora)) if value]
        return launch(args.nproc, [x for pair in given for x in pair] + overrides + (["--resume"] if args.resume else []))
    result = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
                         ensure_ascii=False))
    return 0

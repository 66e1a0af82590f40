"""`krmini plan`: the model and run a time or FLOP budget buys on this device (`krmini.train.plan`)."""

from __future__ import annotations

from krmini.runs import check_output, write_json_atomic, write_text_atomic
from krmini.train.config import load_run_config
from krmini.train.plan import describe, plan_record, plan_run, planned_yaml

DEFAULT_BASE = "chat-demo"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="예산에 맞는 모델·학습 설계 / size a model and run for a time or FLOP budget",
        description="From a budget (30m, 2h, 90s of training steps, or FLOPs such as 1e17) and this device's "
        "measured speed, choose depth, width, heads, tokens, batch and learning rates (about 20 tokens per parameter), and "
        "print the plan with the bits per byte our scaling fit expects. The vocabulary, context, precision and data come from "
        f"--config (default: the {DEFAULT_BASE} preset). `krmini train --budget` trains the same plan.",
    )
    p.add_argument("--budget", required=True, help="30m, 2h, 90s (training-step time) or a FLOP count, e.g. 1e17")
    p.add_argument("--config", default=DEFAULT_BASE, help=f"run config or preset to plan for (default {DEFAULT_BASE})")
    p.add_argument("overrides", nargs="*", help="key=value overrides of that config, e.g. train.seq_len=512")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps: where it will train")
    p.add_argument("--write", metavar="PATH", help="write the planned run config (YAML) for `krmini train --config`")
    p.add_argument("--json", metavar="PATH", help="write the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    for path in (args.write, args.json):
        if path:
            check_output(path, "file", [])
    budget, plan, fits = plan_run(args.budget, load_run_config(args.config, args.overrides), args.device)
    print("\n".join(describe(plan, budget, fits)))
    if args.write:
        write_text_atomic(args.write, planned_yaml(args.config, args.overrides, plan, f"krmini plan --budget {args.budget}"))
        print(f"config: {args.write} (train it with `krmini train --config {args.write} --data … --out …`)")
    else:
        print("train it: krmini train --config " + args.config + " --budget " + args.budget + " --data … --out …")
    if args.json:
        write_json_atomic(args.json, {"budget": args.budget, **plan_record(plan)})
    return 0

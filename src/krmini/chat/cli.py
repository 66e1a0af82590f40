"""`krmini sft` and `krmini chat`.

Layers above this one add options and /commands to `krmini chat` (`--memo`): the top-level CLI passes
their modules in as `more`, each with `add_chat_args(parser)` and `chat_commands(args, stack)` (the
/commands for `ChatSession.commands`; what they hold open joins `stack`, closed when the REPL ends).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from contextlib import ExitStack
from types import ModuleType

from krmini.argtypes import number
from krmini.chat.load import load_chat_model
from krmini.chat.repl import ChatSession, repl
from krmini.chat.sft import run_sft
from krmini.chat.template import stop_ids
from krmini.device import pick_device, pick_dtype
from krmini.infer.build import build_engine
from krmini.infer.cli import add_device_args, add_sampling_args, sampling_from_args
from krmini.train.lora import parse_lora_spec


def register(subparsers, more: Iterable[ModuleType] = ()) -> None:
    s = subparsers.add_parser(
        "sft", help="지시 학습 / instruction-tune a pretrained run on chat data",
        description="Fine-tune a pretrained run on chat JSONL ({\"messages\": [{\"role\", \"content\"}, …]}), "
        "learning only the assistant's tokens. Uses the pretraining trainer: same logging, checkpoints, "
        "--resume. With --lora only small adapters train and are also saved alone in OUT/adapter/.",
    )
    s.add_argument("--base", required=True, help="pretrained run or checkpoint directory")
    s.add_argument("--data", nargs="+", required=True, help="chat JSONL files")
    s.add_argument("--out", required=True, help="output run directory")
    s.add_argument("--config", default="sft", help="SFT config YAML with a train: section (default: sft)")
    s.add_argument("--lora", metavar="SPEC", help="train LoRA adapters, e.g. r=16,alpha=32,targets=q,k,v,o,gate,up,down")
    s.add_argument("--val-fraction", type=number(0, 1, low_open=True, high_open=True), default=0.02,
                   help="share of conversations held out, between 0 and 1 (default: 0.02)")
    s.add_argument("--device", help="auto (default), cpu, cuda or mps")
    s.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=200")
    s.set_defaults(func=run_sft_command)

    c = subparsers.add_parser(
        "chat", help="대화하기 / chat with a tuned model in the terminal",
        description="Stream replies in the terminal, keeping the conversation (oldest turns are dropped when "
        "the context is full). Commands: /reset, /system TEXT, /temp X, /exit.",
    )
    c.add_argument("model", metavar="RUN", help="SFT run or checkpoint directory")
    c.add_argument("--adapter", help="LoRA adapter directory to load onto RUN (a base model)")
    c.add_argument("--system", default="", help="system prompt")
    add_device_args(c)
    add_sampling_args(c)
    more = tuple(more)
    for module in more:
        module.add_chat_args(c)
    c.set_defaults(func=functools.partial(run_chat, more=more))


def run_sft_command(args) -> int:
    overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    lora = parse_lora_spec(args.lora) if args.lora else None
    result = run_sft(args.base, args.data, args.out, args.config, overrides, lora, resume=args.resume,
                     val_fraction=args.val_fraction)
    result.pop("report", None)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}, ensure_ascii=False))
    return 0


def chat_engine(args):
    """The chat model of `args` (RUN, --adapter, --device, --dtype, --compile) as an engine that stops
    where a reply ends; shared by `krmini chat` and `krmini serve`."""
    device = pick_device(args.device)
    loaded = load_chat_model(args.model, device, args.adapter, pick_dtype(args.dtype, device))
    return build_engine(loaded, compile=args.compile, stop_ids=stop_ids(loaded.tokenizer))


def run_chat(args, more: tuple[ModuleType, ...] = ()) -> int:
    sampling = sampling_from_args(args)
    sampling.validate()
    with ExitStack() as stack:
        commands = {}
        for module in more:  # before the model loads: a wrong --memo index fails at once
            commands.update(module.chat_commands(args, stack))
        repl(ChatSession(chat_engine(args), sampling, system=args.system, commands=commands))
    return 0

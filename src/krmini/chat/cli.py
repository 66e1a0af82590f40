"""`krmini sft` and `krmini chat`.

`krmini chat RUN` talks to a model loaded here; `krmini chat --backend openai:URL` to any
OpenAI-compatible server (`krmini.chat.remote`), through the same REPL. Give one of the two.

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
from krmini.chat.backend import Backend, LocalBackend
from krmini.chat.jinja import parse_template_options
from krmini.chat.load import load_chat_model
from krmini.chat.remote import OPENAI_PREFIX, add_remote_args, check_remote_sampling, open_remote
from krmini.chat.repl import ChatSession, repl
from krmini.chat.sft import run_sft
from krmini.chat.tasks import FIELDS, TASKS, task, with_task
from krmini.chat.template import stop_ids
from krmini.device import pick_device, pick_dtype
from krmini.errors import KrminiError
from krmini.infer.build import build_engine
from krmini.infer.cli import add_device_args, add_sampling_args, sampling_from_args
from krmini.runs import resolve_checkpoint
from krmini.train.lora import parse_lora_spec

REMOTE_ONLY = {"served_model": "--model", "api_key": "--api-key", "context": "--context"}


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
        "the context is full). Commands: /reset, /system TEXT, /temp X, /task NAME, /exit. The model is RUN, "
        "loaded here, or a server: --backend openai:URL (Ollama, llama.cpp's server, vLLM, krmini serve).",
    )
    c.add_argument("model", metavar="RUN", nargs="?", help="SFT run or checkpoint directory (or give --backend)")
    c.add_argument("--backend", metavar="openai:URL", help="chat with an OpenAI-compatible server instead of RUN, "
                   "e.g. openai:http://127.0.0.1:11434/v1 (Ollama); replies stream as they arrive")
    add_remote_args(c, model_help="with --backend, the model name (default: the first of the server's /v1/models)")
    c.add_argument("--adapter", help="LoRA adapter directory to load onto RUN (a base model)")
    c.add_argument("--system", default="", help="system prompt (default: the --task preset's, else none)")
    c.add_argument("--task", choices=tuple(TASKS), help="작업 프리셋 / a task preset: a Korean system prompt and "
                   "sampling settings (flags given here win): " + ", ".join(TASKS))
    c.add_argument("--template-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a variable for the chat template (repeatable), e.g. enable_thinking=false for Qwen3: an "
                   "imported model's Jinja template gets it; a server gets it as chat_template_kwargs")
    add_device_args(c)
    add_sampling_args(c)
    standard = {name: c.get_default(name) for name in FIELDS}
    c.set_defaults(**dict.fromkeys(FIELDS))  # None: not given, so a --task preset may set it
    more = tuple(more)
    for module in more:
        module.add_chat_args(c)
    c.set_defaults(func=functools.partial(run_chat, more=more, standard=standard))


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


def chat_sampling(args, standard: dict) -> tuple:
    """The sampling settings and the system prompt: the --task preset's, unless given on the command line."""
    given = frozenset(name for name in FIELDS if getattr(args, name) is not None)
    for name in FIELDS:
        if name not in given:
            setattr(args, name, standard[name])
    sampling = sampling_from_args(args)
    system = args.system
    if args.task:
        sampling = with_task(sampling, args.task, keep=given)
        system = system or task(args.task).system
    sampling.validate()
    return sampling, system


def chat_backend(args, options: dict) -> Backend:
    """RUN loaded here, or the server of --backend openai:URL (reached now, so a dead port or a wrong key is
    one line before the first message)."""
    if args.backend is None:
        if args.model is None:
            raise KrminiError("RUN: expected a chat run or checkpoint directory, or --backend openai:URL")
        resolve_checkpoint(args.model)  # a wrong RUN is named before the options that need a server
        given = [flag for dest, flag in REMOTE_ONLY.items() if getattr(args, dest) is not None]
        if given:
            raise KrminiError(f"{given[0]}: only with --backend openai:URL (RUN is a model loaded here)")
        return LocalBackend(chat_engine(args), options)
    if args.model is not None:
        raise KrminiError(f"RUN {args.model} and --backend: give one (RUN is a model loaded here, --backend a server)")
    if not args.backend.startswith(OPENAI_PREFIX):
        raise KrminiError(f"--backend {args.backend}: expected openai:URL, e.g. openai:http://127.0.0.1:8000/v1 "
                          "(a model run is the RUN argument)")
    if args.adapter is not None:
        raise KrminiError("--adapter: only with a RUN loaded here (a server serves its own weights)")
    return open_remote(args.backend, args, options)


def run_chat(args, standard: dict, more: tuple[ModuleType, ...] = ()) -> int:
    sampling, system = chat_sampling(args, standard)
    options = parse_template_options(args.template_option)
    if args.backend is not None:
        check_remote_sampling(sampling)
    with ExitStack() as stack:
        commands = {}
        for module in more:  # before the model loads: a wrong --memo index fails at once
            commands.update(module.chat_commands(args, stack))
        repl(ChatSession(chat_backend(args, options), sampling, system=system, commands=commands))
    return 0

"""`krmini generate`."""

from __future__ import annotations

import sys

from krmini.device import pick_device
from krmini.infer.generate import SamplingConfig, stream_text
from krmini.infer.load import load_model


def add_sampling_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default: 128)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 or less = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")


def sampling_from_args(args) -> SamplingConfig:
    return SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="텍스트 생성 / generate a continuation of a prompt",
        description="Load a run (its latest checkpoint) or a checkpoint directory and stream a continuation.",
    )
    p.add_argument("model", metavar="RUN_OR_CKPT", help="run directory or checkpoint directory")
    p.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for several prompts")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    loaded = load_model(args.model, pick_device(args.device))
    cfg = sampling_from_args(args)
    for prompt in args.prompt:
        sys.stdout.write(prompt)
        for piece in stream_text(loaded.model, loaded.tokenizer, prompt, cfg):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0

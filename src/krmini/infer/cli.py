"""`krmini generate` and `krmini quantize`."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from krmini.config import from_dict
from krmini.infer.build import build_engine
from krmini.infer.engine import PromptTooLong
from krmini.infer.fast.quantize import quantize_model, save_int8
from krmini.infer.load import load_model
from krmini.infer.sampling import TRUNCATE_MODES, SamplingConfig
from krmini.runs import MODEL_FILE, check_output, checkpoint_files, read_state, resolve_checkpoint


def add_device_args(p) -> None:
    """--device, --dtype and --compile for the commands that generate (generate, chat, serve)."""
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument("--dtype", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="weights/activations (default: fp32; bf16 halves memory and is faster on CPUs with "
                   "native bf16; auto: bf16 where it is native, `krmini doctor` tells)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step: faster tokens after a one-time compile (CPU, CUDA)")


def add_sampling_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128,
                   help="tokens to generate, capped at the context (default: 128)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 or less = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 avoids repeats (default: 1 = off)")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="per repeat of a generated token")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="once a token has been generated")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); not printed")
    p.add_argument("--truncate", choices=TRUNCATE_MODES, default="error",
                   help="prompt longer than the context: error (default) or keep its last tokens (left)")


def sampling_from_args(args) -> SamplingConfig:
    return SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                          repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
                          presence_penalty=args.presence_penalty, stop=tuple(args.stop), truncate=args.truncate)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="텍스트 생성 / generate a continuation of a prompt",
        description="Load a run (its latest checkpoint), a checkpoint or a quantized directory and continue "
        "each prompt. One prompt streams; several run together as one batch.",
    )
    p.add_argument("model", metavar="RUN_OR_CKPT", help="run directory or checkpoint directory")
    p.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for several prompts")
    add_device_args(p)
    add_sampling_args(p)
    p.set_defaults(func=run_generate)

    q = subparsers.add_parser(
        "quantize", help="int8 양자화 / weight-only int8 copy of a run",
        description="Write a weight-only int8 copy (per-output-channel scales, safetensors) of a run's latest "
        "checkpoint and report its size and validation perplexity against the float model.",
    )
    q.add_argument("model", metavar="RUN_OR_CKPT", help="run directory or checkpoint directory")
    q.add_argument("--int8", action="store_true", required=True, help="weight-only int8 (the one method)")
    q.add_argument("--out", help="output directory (default: RUN_OR_CKPT/int8)")
    q.add_argument("--no-eval", action="store_true", help="skip the validation perplexity comparison")
    q.set_defaults(func=run_quantize)


def run_generate(args) -> int:
    cfg = sampling_from_args(args)
    cfg.validate()  # before the model loads: a bad value costs nothing
    engine = build_engine(args.model, args.device, args.dtype, args.compile)
    try:
        return _generate(engine, args.prompt, cfg)
    except PromptTooLong as exc:
        raise exc.worded("--truncate left") from None


def _generate(engine, prompts: list[str], cfg: SamplingConfig) -> int:
    if len(prompts) == 1:
        pieces = engine.stream(prompts[0], cfg)  # checks the request before anything is printed
        sys.stdout.write(prompts[0])
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    failed = 0
    completions = engine.generate_batch([(p, cfg) for p in prompts])
    for i, (prompt, done) in enumerate(zip(prompts, completions, strict=True), 1):
        if done.error is not None:  # it failed alone: the other prompts' continuations still print
            failed += 1
            print(f"krmini: error: prompt {i} failed: {type(done.error).__name__}: {done.error}", file=sys.stderr)
            continue
        sys.stdout.write(f"{prompt}{done.texts[0]}\n")
    return 1 if failed else 0


def val_perplexity(model, state: dict, device: torch.device) -> dict | None:
    """Validation loss/perplexity on the run's val shards, as the trainer computes it; None without data."""
    from krmini.data.loader import split_windows
    from krmini.train.config import RunConfig
    from krmini.train.evaluation import evaluate

    if "run_config" not in state:
        return None
    cfg = from_dict(RunConfig, state["run_config"], "state.json:run_config").train
    if not (Path(cfg.data_dir) / "manifest.json").is_file():
        return None
    windows, bytes_per_token = split_windows(cfg.data_dir, "val", cfg.seq_len, cfg.seed)
    return evaluate(model, windows, bytes_per_token, cfg, device, "fp32")


def run_quantize(args) -> int:
    source = resolve_checkpoint(args.model)
    out = Path(args.out) if args.out else Path(args.model) / "int8"
    check_output(out, "dir", checkpoint_files(source))  # replacing the source (or a file) is refused up front
    device = torch.device("cpu")
    loaded = load_model(source, device)
    state = read_state(source, verify=False)
    before = None if args.no_eval else val_perplexity(loaded.model, state, device)
    model = quantize_model(loaded.model)
    save_int8(model, source, state, out)
    size_in, size_out = ((d / MODEL_FILE).stat().st_size for d in (source, out))
    print(f"wrote {out}: {size_out / 1e6:.2f} MB (fp32 {size_in / 1e6:.2f} MB, {size_in / size_out:.2f}x smaller)")
    if args.no_eval:
        return 0
    if before is None:
        print("no validation shards found (run_config.train.data_dir); perplexity not compared")
        return 0
    after = val_perplexity(model, state, device)
    delta = math.exp(after["val_loss"] - before["val_loss"]) - 1
    print(f"val perplexity on {after['val_tokens']:,} tokens: fp32 {before['val_ppl']:.3f} → int8 "
          f"{after['val_ppl']:.3f} ({delta:+.2%}); bits/byte {before['val_bpb']:.4f} → {after['val_bpb']:.4f}")
    return 0

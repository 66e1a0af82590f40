"""`krmini lab <step>`: run one step of the learning path and print what it measured.

Each handler is a thin shell around the step's module: parse, run, report. Outputs go under
runs/lab/<step>/ unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

from krmini.argtypes import POSITIVE_INT, POSITIVE_NUMBER, SEED, cores
from krmini.errors import KrminiError
from krmini.runs import check_output

STEPS = {
    "autograd": "스칼라 자동미분을 torch와 비교 / scalar autograd checked against torch",
    "mlp": "Value로 만든 MLP가 XOR 학습 / a Value MLP learns XOR",
    "digits": "NumPy 분류기로 8×8 숫자 인식 / NumPy classifier on 8x8 digits",
    "attention": "한국어 문장의 어텐션 히트맵 / attention heat-map of a Korean sentence",
    "transformer": "인코더–디코더로 수열 뒤집기 / encoder-decoder learns sequence reversal",
    "numpy-lm": "역전파를 손으로 쓴 NumPy 언어모델 / NumPy LM with hand-written backward",
    "char-gpt": "문자 단위 GPT (Tiny Shakespeare, 한국어) / character GPT",
}
WRITES = ("attention", "char-gpt")  # the steps that write files (figures, checkpoints); the others only print


def register(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser(
        "lab",
        help="학습 경로: 자동미분부터 문자 GPT까지 / the learning path",
        description=__doc__.splitlines()[0],
    )
    steps = lab.add_subparsers(dest="step", metavar="STEP", required=True)
    parsers = {name: steps.add_parser(name, help=text, description=text) for name, text in STEPS.items()}
    for name, parser in parsers.items():
        parser.add_argument("--seed", type=SEED, default=0, help="난수 시드 (0 … 2^64-1) / random seed")
        if name in WRITES:
            parser.add_argument("--out", type=Path, default=Path("runs/lab") / name, help="출력 폴더 / output folder")
        parser.add_argument("--threads", type=cores(), default=None,
                            help="torch·BLAS 스레드 수 (최대 코어 수) / thread count (at most the cores)")

    p = parsers["autograd"]
    p.add_argument("--graphs", type=POSITIVE_INT, default=20, help="무작위 식 그래프 수 / random graphs to check")
    p.add_argument("--depth", type=POSITIVE_INT, default=10_000, help="깊은 사슬의 길이 / length of the deep chain")
    p.set_defaults(func=run_autograd)

    p = parsers["mlp"]
    p.add_argument("--steps", type=POSITIVE_INT, default=200, help="경사 하강 횟수 / gradient steps")
    p.add_argument("--hidden", type=POSITIVE_INT, default=8, help="은닉 뉴런 수 / hidden neurons")
    p.add_argument("--lr", type=POSITIVE_NUMBER, default=0.1, help="학습률 (> 0) / learning rate")
    p.set_defaults(func=run_mlp)

    p = parsers["digits"]
    p.add_argument("--epochs", type=POSITIVE_INT, default=30, help="에폭 수 / epochs")
    p.add_argument("--hidden", type=POSITIVE_INT, default=64, help="은닉층 폭 / hidden width")
    p.set_defaults(func=run_digits)

    p = parsers["attention"]
    p.add_argument("--text", default="나는 오늘 학교에 간다.", help="문장 / sentence to attend over")
    p.add_argument("--heads", type=POSITIVE_INT, default=4, help="헤드 수 / attention heads")
    p.add_argument("--dim", type=POSITIVE_INT, default=32, help="모델 폭 / model width")
    p.add_argument("--bidirectional", action="store_true", help="인과 마스크 없이 / no causal mask")
    p.set_defaults(func=run_attention)

    p = parsers["transformer"]
    p.add_argument("--steps", type=POSITIVE_INT, default=300, help="학습 스텝 / training steps")
    p.add_argument("--length", type=POSITIVE_INT, default=8, help="수열 길이 / sequence length")
    p.add_argument(
        "--pre-norm", action="store_true", help="pre-norm (기본은 논문의 post-norm / default post-norm)"
    )
    p.set_defaults(func=run_transformer)

    p = parsers["numpy-lm"]
    p.add_argument(
        "--data", type=Path, default=None, help="텍스트/JSONL (기본: 내장 한국어 문단) / text or JSONL"
    )
    p.add_argument("--field", default="text", help="JSONL 필드 / JSONL field")
    p.add_argument("--max-chars", type=POSITIVE_INT, default=20_000, help="읽을 최대 글자 수 / characters to read")
    p.add_argument("--steps", type=POSITIVE_INT, default=300, help="Adam 스텝 / Adam steps")
    p.add_argument(
        "--activation", choices=["gelu", "relu"], default="gelu", help="FFN 활성화 / FFN activation"
    )
    p.set_defaults(func=run_numpy_lm)

    p = parsers["char-gpt"]
    p.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data/tinyshakespeare/input.txt"),
        help="텍스트/JSONL / text or JSONL",
    )
    p.add_argument("--field", default="text", help="JSONL 필드 / JSONL field")
    p.add_argument("--max-chars", type=POSITIVE_INT, default=None, help="읽을 최대 글자 수 / characters to read")
    p.add_argument("--iters", type=POSITIVE_INT, default=2000, help="학습 반복 / training iterations")
    p.add_argument("--eval-interval", type=POSITIVE_INT, default=250, help="평가 간격 / evaluate every N iterations")
    p.add_argument("--eval-batches", type=POSITIVE_INT, default=200, help="평가 배치 수 / batches per evaluation")
    p.set_defaults(func=run_char_gpt)


def set_threads(n: int | None):
    """Pin torch and BLAS to n threads (on a busy shared CPU one thread can be many times faster)."""
    if n is None:
        return nullcontext()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    return threadpool_limits(limits=n)


def run_autograd(args) -> int:
    import random

    from krmini.lab.autograd import Value
    from krmini.lab.checks import autograd_vs_torch

    worst = autograd_vs_torch(args.graphs, args.seed)
    print(f"random graphs: {args.graphs}, worst relative gradient error vs torch (float64): {worst:.2e}")
    x = Value(random.Random(args.seed).uniform(-1, 1))
    y = x
    for _ in range(args.depth):
        y = (y * 0.5).tanh() + y * 0.5
    y.backward()
    print(f"chain of {len(y.topo_order())} nodes: backward ok, dy/dx = {x.grad:.6g}")
    return 0


def run_mlp(args) -> int:
    from krmini.lab.nn import train_xor, xor_accuracy

    model, losses = train_xor(args.hidden, args.steps, args.lr, args.seed)
    print(f"XOR: loss {losses[0]:.4f} → {losses[-1]:.4f}, accuracy {xor_accuracy(model):.0%}")
    return 0


def run_digits(args) -> int:
    from krmini.lab.numpy_ops import train_digits

    with set_threads(args.threads):
        result = train_digits(hidden=args.hidden, epochs=args.epochs, seed=args.seed)
    print(f"digits: train loss {result.train_loss[0]:.4f} → {result.train_loss[-1]:.4f}")
    print(f"test accuracy {result.test_accuracy:.2%}")
    return 0


def run_attention(args) -> int:
    from krmini.lab.attention import sentence_heatmap

    if not args.text:
        raise KrminiError("--text: expected a non-empty sentence")
    if args.dim % args.heads:
        raise KrminiError(f"--dim: expected a multiple of --heads ({args.heads}), got {args.dim}")
    check_output(args.out, "dir")
    path = sentence_heatmap(
        args.text, args.out / "attention.png", args.heads, args.dim, not args.bidirectional, args.seed
    )
    print(f"wrote {path}")
    return 0


def run_transformer(args) -> int:
    from krmini.lab.transformer import TransformerConfig, train_reversal

    with set_threads(args.threads):
        _, result = train_reversal(
            TransformerConfig(pre_norm=args.pre_norm), steps=args.steps, length=args.length, seed=args.seed
        )
    norm = "pre-norm" if args.pre_norm else "post-norm"
    print(
        f"reversal ({norm}): loss {result.losses[0]:.4f} → {result.losses[-1]:.4f} in {result.seconds:.1f}s"
    )
    print(
        f"greedy decoding: token accuracy {result.token_accuracy:.2%}, sequence accuracy {result.sequence_accuracy:.2%}"
    )
    return 0


def run_numpy_lm(args) -> int:
    from krmini.lab.chardata import KOREAN_SAMPLE, load_text
    from krmini.lab.numpy_lm import LMConfig, train_char_lm

    text = KOREAN_SAMPLE if args.data is None else load_text(args.data, args.field, args.max_chars)
    start = time.perf_counter()
    with set_threads(args.threads):
        result = train_char_lm(
            text, steps=args.steps, cfg=LMConfig(vocab=0, activation=args.activation), seed=args.seed
        )
    print(f"vocabulary {len(result.vocab)} characters, {len(text)} characters of text")
    print(
        f"fixed windows of the training text: loss {result.initial_eval:.4f} → {result.final_eval:.4f} ({time.perf_counter() - start:.1f}s)"
    )
    return 0


def run_char_gpt(args) -> int:
    from krmini.lab.char_gpt import SETUP_FILE, WEIGHTS_FILE, GPTConfig, TrainConfig, train
    from krmini.lab.chardata import load_text

    check_output(args.out, "dir")
    text = load_text(args.data, args.field, args.max_chars)
    tc = TrainConfig(
        iters=args.iters, eval_interval=args.eval_interval, eval_batches=args.eval_batches, seed=args.seed
    )
    with set_threads(args.threads):
        metrics = train(text, GPTConfig(), tc, args.out)
    print(
        f"val loss {metrics['val_loss']:.4f}, train loss {metrics['train_loss']:.4f}, {metrics['wall_seconds']}s"
    )
    print(
        f"wrote {args.out}/{WEIGHTS_FILE}, {SETUP_FILE}, metrics.json, sample.txt, "
        f"{len(metrics['attention_pngs'])} attention PNGs"
    )
    return 0

"""`krmini bench`: one sub-command per benchmark module in `BENCH_MODULES`.

Each module exports `register(subparsers)`, like the top-level commands.
"""

from __future__ import annotations

import importlib

BENCH_MODULES = [
    "krmini.bench.tokenizer",
    "krmini.bench.prepare",
    "krmini.bench.export",
    "krmini.bench.generate",
    "krmini.bench.train",
]


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="벤치마크 / benchmarks (speed and quality figures)")
    sub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).register(sub)

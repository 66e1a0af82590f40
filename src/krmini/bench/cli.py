"""`krmini bench`: one sub-command per benchmark module in `BENCH_MODULES`.

Each module exports `register(subparsers)`, like the top-level commands. Benchmarks of the layer
above this one (apps, e.g. `bench memo`) are passed in by the top-level CLI as `more`: bench does
not import them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

BENCH_MODULES = [
    "krmini.bench.tokenizer",
    "krmini.bench.prepare",
    "krmini.bench.export",
    "krmini.bench.generate",
    "krmini.bench.train",
    "krmini.bench.speedrun",
    "krmini.bench.scaling",
]


def register(subparsers, more: Iterable[ModuleType] = ()) -> None:
    p = subparsers.add_parser("bench", help="벤치마크 / benchmarks (speed and quality figures)")
    sub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for module in [*(importlib.import_module(name) for name in BENCH_MODULES), *more]:
        module.register(sub)

"""The `krmini` command line: one sub-command per stage, each registered by its own package.

Each module in `COMMAND_MODULES` has `register(subparsers)`, which adds its parser and sets
`func` to a handler taking the parsed args and returning an exit code. Any `KrminiError` becomes
one line on stderr and exit code 1 (`krmini.errors.exit_code`); a value the parser refuses (numbers are
checked as they are parsed, `krmini.argtypes`) is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import warnings

from krmini import __version__
from krmini.argtypes import Parser
from krmini.errors import exit_code

COMMAND_MODULES = [
    "krmini.demo",
    "krmini.doctor",
    "krmini.data.cli",
    "krmini.data.download",
    "krmini.data.tokenizer_cli",
    "krmini.train.info_cli",
    "krmini.train.plan_cli",
    "krmini.train.cli",
    "krmini.infer.cli",
    "krmini.lab.cli",
    "krmini.bench.cli",
    "krmini.eval.cli",
    "krmini.export.cli",
    "krmini.chat.cli",
    "krmini.chat.merge",
    "krmini.serve.cli",
    "krmini.apps.memo.cli",
]
# Benchmarks, chat /commands and server routes of the apps layer join `krmini bench`, `krmini chat` and
# `krmini serve`, which sit below apps and so do not import them.
APP_BENCH_MODULES = ["krmini.apps.memo.bench"]
APP_CHAT_MODULES = ["krmini.apps.memo.cli"]
APP_SERVE_MODULES = ["krmini.apps.memo.cli"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="krmini",
        description="kr-mini-llm: 한국어 소형 LLM을 처음부터 끝까지 / build a small Korean LLM end to end",
    )
    parser.add_argument("--version", action="version", version=f"krmini {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        if name == "krmini.bench.cli":
            module.register(subparsers, [importlib.import_module(m) for m in APP_BENCH_MODULES])
        elif name == "krmini.chat.cli":
            module.register(subparsers, [importlib.import_module(m) for m in APP_CHAT_MODULES])
        elif name == "krmini.serve.cli":
            module.register(subparsers, [importlib.import_module(m) for m in APP_SERVE_MODULES])
        else:
            module.register(subparsers)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings a user sees (a fallback, a skipped checkpoint) as one line, without source lines."""
    return f"krmini: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return exit_code(args.func, args)

"""Command-line numbers checked where they are parsed, and the parser whose errors are one line.

Every numeric option names its rule with one of these types (`type=POSITIVE_INT`, `type=cores()`), so a
bad value (NaN, inf, 0 where a count is meant, 2^64 threads) is refused before anything loads or runs:
`krmini CMD: error: argument --threads: expected an integer from 1 to 8 (this machine's cores), got '0'`
and exit code 2. Checks that need more than the one value (a fraction pair, a value against a model's
context) stay with the config or command that has the other value, as `KrminiError`s.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

SEED_LIMIT = 2**64  # seeds are 0 … 2^64-1: what torch.Generator.manual_seed takes


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line (the usage is one `--help` away); sub-parsers
    made with `add_subparsers` are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def integer(low: int, high: int | None = None, what: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` (inclusive; None = no upper bound)."""
    rule = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    rule += f" ({what})" if what else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        return value

    parse.number = int  # what the value is, for tests and tools walking the parser
    parse.__name__ = "integer"
    return parse


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float, optionally bounded (`low_open`/`high_open`: bound excluded)."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    rule = "a finite number" + (f" {' and '.join(parts)}" if parts else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or (
                high is not None and (value >= high if high_open else value > high)):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        return value

    parse.number = float
    parse.__name__ = "number"
    return parse


def cores(low: int = 1) -> Callable[[str], int]:
    """Processes or threads: `low` to this machine's CPU count (2^64 threads is no request to honour)."""
    return integer(low, os.cpu_count() or 1, "this machine's cores")


POSITIVE_INT = integer(1)
NON_NEGATIVE_INT = integer(0)
SEED = integer(0, SEED_LIMIT - 1)
FRACTION = number(0, 1, high_open=True)
POSITIVE_NUMBER = number(0, low_open=True)
SHARE = number(0, 1)  # a share from 0 to 1, both included

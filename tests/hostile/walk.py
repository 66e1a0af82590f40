"""The command line as data: every command's parser, its numeric options and its path arguments,
read from `krmini.cli.build_parser()` so a new command or option is covered without editing a list."""

from __future__ import annotations

import argparse
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from krmini import cli
from krmini.cli import build_parser

# dests that name a file or directory (an input read, or an output written)
PATH_DEST = re.compile(r"^(model|run|src|base|adapter|config|preset|data|data_dir|out|tokenizer|corpus|inputs?|"
                       r"train|heldout|json|memo|init_from|domain|general)$")


def commands() -> dict[str, argparse.ArgumentParser]:
    """'lab mlp' → its parser, for every leaf command."""
    found = {}

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and path:
            found[" ".join(path)] = parser
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, [*path, name])

    walk(parser(), [])
    return found


def number_kind(action: argparse.Action) -> type | None:
    """int or float for an option that takes a number (plain int/float, or a `krmini.argtypes` type)."""
    kind = getattr(action.type, "number", action.type)
    return kind if kind in (int, float) else None


@dataclass(frozen=True)
class Option:
    command: str
    flag: str  # '--top-p'
    dest: str
    kind: type
    nargs: object

    @property
    def id(self) -> str:
        return f"{self.command} {self.flag}"

    def names(self) -> set[str]:
        """How an error line may name this option: the flag, its dest, or a config field it sets."""
        bare = self.flag.lstrip("-")
        return {self.flag, self.dest, bare, bare.replace("-", "_"), self.dest.replace("_", ".")}


def numeric_options() -> list[Option]:
    return [Option(name, a.option_strings[-1], a.dest, number_kind(a), a.nargs)
            for name, parser in commands().items() for a in parser._actions
            if a.option_strings and number_kind(a)]


@functools.cache
def parser() -> argparse.ArgumentParser:
    """One parser for all cases (building it costs more than most refusals); parsing leaves it unchanged."""
    return build_parser()


def path_arguments() -> set[tuple[str, str]]:
    """(command, dest) of every argument that names a file or directory."""
    return {(name, a.dest) for name, parser in commands().items() for a in parser._actions
            if PATH_DEST.match(a.dest) and a.nargs != 0 and not a.choices}


def run_cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `krmini.cli.main(ARGV)` in this process; argparse's exits count too."""
    monkeypatch.setattr(cli, "build_parser", parser)
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> str:
    """The single error line of a refused command (exit 1 or 2, no traceback)."""
    assert code in (1, 2), f"exit code {code}; stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert re.match(r"^krmini( [\w-]+)*: error: ", lines[0]), lines[0]
    return lines[0]


def snapshot(path) -> dict[str, bytes | None]:
    """Relative path → bytes (None for a directory) of everything under `path`."""
    root = Path(path)
    if not root.exists():
        return {}
    if root.is_file():
        return {".": root.read_bytes()}
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


"""Stream documents out of corpus files without loading them whole.

Supported: `.txt` (documents separated by blank lines), `.jsonl` (one JSON object per line, text in
a configurable field), either of them compressed as `.gz` or `.bz2`, and directories of such files
(read in sorted order so runs are reproducible).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from krmini.errors import KrminiError

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")


@dataclass(frozen=True)
class Document:
    source: str  # the file it came from
    line: int  # 1-based line where it starts
    text: str


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    return path.open("rb")


def _base_suffix(path: Path) -> str:
    return Path(path.stem).suffix if path.suffix in (".gz", ".bz2") else path.suffix


def corpus_files(paths: list[str | Path]) -> list[Path]:
    """Expand files and directories into the sorted list of corpus files to read."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _base_suffix(f) in TEXT_SUFFIXES)
            if not found:
                raise KrminiError(f"{p}: directory has no .txt/.jsonl(.gz/.bz2) files")
            files.extend(found)
        elif p.is_file():
            if _base_suffix(p) not in TEXT_SUFFIXES:
                raise KrminiError(f"{p}: unsupported corpus file; expected .txt, .jsonl, optionally .gz/.bz2")
            files.append(p)
        else:
            raise KrminiError(f"{p}: corpus file not found")
    return files


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs. Lines are decoded one by one so an error names its line."""
    lineno = 0
    try:
        with _open_binary(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                yield lineno, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KrminiError(f"{path}: not valid UTF-8 (line {lineno}, byte {exc.start + 1} of the line); "
                          "re-encode it as UTF-8") from None
    except (OSError, EOFError) as exc:
        raise KrminiError(f"{path}: cannot read ({exc})") from None


def _txt_documents(path: Path) -> Iterator[Document]:
    buf: list[str] = []
    start = 1
    for lineno, line in _lines(path):
        if line.strip():
            if not buf:
                start = lineno
            buf.append(line)
        elif buf:
            yield Document(str(path), start, "".join(buf))
            buf = []
    if buf:
        yield Document(str(path), start, "".join(buf))


def _jsonl_documents(path: Path, text_field: str) -> Iterator[Document]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KrminiError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise KrminiError(f"{path}:{lineno}: expected an object with a string field {text_field!r}")
        yield Document(str(path), lineno, record[text_field])


def read_documents(paths: list[str | Path], text_field: str = "text") -> Iterator[Document]:
    """Yield every document of every corpus file, in order."""
    for path in corpus_files(paths):
        if _base_suffix(path) == ".txt":
            yield from _txt_documents(path)
        else:
            yield from _jsonl_documents(path, text_field)

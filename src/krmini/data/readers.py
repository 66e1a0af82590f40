"""Stream documents out of corpus files without loading them whole.

Supported: `.txt` (documents separated by blank lines), `.jsonl` (one JSON object per line, text in
a configurable field), either of them compressed as `.gz` or `.bz2`, and directories of such files
(read in sorted order so runs are reproducible). Wikipedia dumps and Hugging Face datasets have
their own readers (wikipedia.py, hf_source.py) yielding the same `Document`s.

Real corpora have bad records. A line that is not JSON, bytes that are not UTF-8, a compressed file
cut short: by default the record is skipped and counted in `ReadProblems` (the manifest lists them
with file and line); with `strict` the first one stops the run with that one-line message.
"""

from __future__ import annotations

import bz2
import gzip
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from krmini.errors import KrminiError

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")
MAX_EXAMPLES = 20


@dataclass(frozen=True)
class Document:
    source: str  # the file (or dataset) it came from
    line: int  # 1-based line (or record number) where it starts
    text: str
    skip: str | None = None  # set by a reader that already knows the document is unwanted (e.g. a redirect)
    wikitext: bool = False  # text is MediaWiki markup still to be converted


@dataclass
class ReadProblems:
    """Unreadable records: counted by kind with the first few locations, or fatal when strict."""

    strict: bool = False
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def report(self, kind: str, where: str, what: str, action: str) -> None:
        if self.strict:
            raise KrminiError(f"{where}: {what} (stopped: --strict)")
        self.counts[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {what}; {action}")

    def as_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": list(self.examples)}


def open_binary(path: Path) -> BinaryIO:
    raw = path.open("rb")
    if path.suffix == ".gz":
        return gzip.GzipFile(fileobj=raw)
    if path.suffix == ".bz2":
        return bz2.BZ2File(raw)
    return raw


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
                raise KrminiError(f"{p}: unsupported corpus file; expected .txt, .jsonl, optionally .gz/.bz2 "
                                  "(Wikipedia dumps: --source wikipedia)")
            files.append(p)
        else:
            raise KrminiError(f"{p}: corpus file not found")
    return files


def _lines(path: Path, problems: ReadProblems) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs; undecodable lines and a cut-off compressed stream are reported."""
    lineno, offset = 0, 0
    try:
        fh = open_binary(path)
    except OSError as exc:  # not even openable (no read permission): the file is the problem, not a record
        raise KrminiError(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        with fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    problems.report("invalid_utf8", f"{path}:{lineno}", f"not valid UTF-8 at byte {offset + exc.start}",
                                    "line skipped")
                offset += len(raw)
    except (OSError, EOFError, zlib.error) as exc:
        problems.report("unreadable", f"{path}:{lineno + 1}", f"cannot read past byte {offset} ({exc})",
                        "rest of the file skipped")


def _txt_documents(path: Path, problems: ReadProblems) -> Iterator[Document]:
    buf: list[str] = []
    start = 1
    for lineno, line in _lines(path, problems):
        if line.strip():
            if not buf:
                start = lineno
            buf.append(line)
        elif buf:
            yield Document(str(path), start, "".join(buf))
            buf = []
    if buf:
        yield Document(str(path), start, "".join(buf))


def _jsonl_documents(path: Path, text_field: str, problems: ReadProblems) -> Iterator[Document]:
    for lineno, line in _lines(path, problems):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.report("invalid_json", f"{path}:{lineno}", f"not valid JSON ({exc.msg}, column {exc.colno})",
                            "line skipped")
            continue
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            problems.report("missing_field", f"{path}:{lineno}", f"expected an object with a string field {text_field!r}",
                            "line skipped")
            continue
        yield Document(str(path), lineno, record[text_field])


def read_documents(paths: list[str | Path], text_field: str = "text",
                   problems: ReadProblems | None = None) -> Iterator[Document]:
    """Yield every document of every corpus file, in order. Without `problems`, bad records are fatal."""
    problems = problems if problems is not None else ReadProblems(strict=True)
    for path in corpus_files(paths):
        if _base_suffix(path) == ".txt":
            yield from _txt_documents(path, problems)
        else:
            yield from _jsonl_documents(path, text_field, problems)

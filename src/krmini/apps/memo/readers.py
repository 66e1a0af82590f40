"""Notes on disk → `Note`s: text lines with the numbers a citation points at.

    .md .markdown .txt   UTF-8 (a BOM is fine) or CP949 (older Korean Windows files); line = line in the file
    .pdf                 pypdf text per page; line = line within the page (cited as p.N:L)
    .docx                python-docx paragraphs and table rows in order; line = block number (¶N);
                         Heading N / 제목 N styles become headings
    .jsonl               one note per record {id, title, text} (title optional); line = the record's line

A file that cannot be used raises `Skip` with the reason the status shows: binary, oversized,
unreadable, undecodable, a broken PDF/DOCX, no text, or a library that is not installed.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

SUFFIXES = (".md", ".markdown", ".txt", ".pdf", ".docx", ".jsonl")
INSTALL = "pip install 'krmini[memo]'"


class Skip(Exception):
    """This file is not indexed; the message is the reason."""


@dataclass(frozen=True)
class Line:
    no: int  # what a citation shows: line in the file, line within the page, block number or record line
    text: str
    level: int = 0  # heading level (1-6) where the reader knows it is a heading
    page: int | None = None


@dataclass
class Note:
    title: str  # the note's own title (a JSONL title, a file name); headings come from lines
    lines: list[Line]
    note_id: str | None = None  # a JSONL record's id
    problems: list[str] = field(default_factory=list)


def decode_text(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise Skip("binary file (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp949")
    except UnicodeDecodeError:
        raise Skip("not UTF-8 or CP949 text") from None


_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _markdown(text: str) -> list[Line]:
    lines, fenced = [], False
    for no, raw in enumerate(text.splitlines(), 1):
        if _FENCE.match(raw):
            fenced = not fenced
        m = None if fenced else _HEADING.match(raw)
        lines.append(Line(no, m.group(2), len(m.group(1))) if m else Line(no, raw))
    return lines


def _pdf(data: bytes) -> list[Line]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise Skip(f"PDF needs pypdf: {INSTALL}") from None
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Skip("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise Skip(f"broken PDF ({type(exc).__name__}: {str(exc)[:80]})") from None
    return [Line(no, raw, page=p) for p, text in enumerate(pages, 1) for no, raw in enumerate(text.splitlines(), 1)]


def _docx_level(style: str) -> int:
    m = re.match(r"(?:heading|제목)\s*(\d)$", style.strip().lower())
    if m:
        return min(int(m.group(1)), 6)
    return 1 if style.strip().lower() in ("title", "제목") else 0


def _docx(data: bytes) -> list[Line]:
    try:
        import docx
        from docx.table import Table
    except ImportError:
        raise Skip(f"DOCX needs python-docx: {INSTALL}") from None
    try:
        document = docx.Document(io.BytesIO(data))
        lines = []
        for no, block in enumerate(document.iter_inner_content(), 1):
            if isinstance(block, Table):
                for row in block.rows:
                    lines.append(Line(no, " | ".join(cell.text.strip() for cell in row.cells)))
            else:
                style = block.style.name if block.style is not None else ""
                lines.append(Line(no, block.text, _docx_level(style)))
    except Exception as exc:  # python-docx raises zipfile, lxml and KeyError alike for a damaged file
        raise Skip(f"broken DOCX ({type(exc).__name__}: {str(exc)[:80]})") from None
    return lines


def _jsonl(text: str) -> list[Note]:
    notes, problems = [], []
    for no, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"line {no}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            problems.append(f"line {no}: expected an object with a string field 'text'")
            continue
        title = record.get("title")
        note_id = record.get("id")
        notes.append(Note(title.replace("_", " ") if isinstance(title, str) else "",
                          [Line(no, t) for t in record["text"].splitlines()],
                          str(note_id) if note_id is not None else str(no)))
    if not notes:
        raise Skip("no JSONL record with a string 'text'" + (f" ({problems[0]})" if problems else ""))
    notes[0].problems = problems
    return notes


def read_notes(path: Path, data: bytes) -> list[Note]:
    """The notes in one file, from its bytes (read once: they are also what is hashed)."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        lines = _pdf(data)
    elif suffix == ".docx":
        lines = _docx(data)
    elif suffix == ".jsonl":
        return _jsonl(decode_text(data))
    elif suffix in (".md", ".markdown"):
        lines = _markdown(decode_text(data))
    elif suffix == ".txt":
        lines = [Line(no, raw) for no, raw in enumerate(decode_text(data).splitlines(), 1)]
    else:
        raise Skip(f"unsupported file type {suffix or '(none)'}; expected {', '.join(SUFFIXES)}")
    if not any(line.text.strip() for line in lines):
        raise Skip("no text" + (" (a scanned PDF? there is no OCR)" if suffix == ".pdf" else ""))
    return [Note(path.stem, lines)]

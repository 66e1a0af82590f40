"""A note → chunks by headings and paragraphs, each with its heading path and line range.

A heading closes the chunk before it and opens a section (its path: the note's title, then the
headings above it, `제목 > 1장 > 1.2`). Inside a section, paragraphs (blank-line separated) are
packed into one chunk up to `max_chars`; a paragraph longer than that is cut at line ends, and a
line longer than that at sentence ends (a JSONL record is one line: every piece cites that line).
A PDF chunk never spans two pages. Heading lines are not chunk text: the path is stored and
indexed with the chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from krmini.apps.memo.readers import Line, Note

CHUNK_CHARS = 1500
SEPARATOR = " > "
_SENTENCE_END = re.compile(r"(?<=[.!?。])\s+")


@dataclass(frozen=True)
class Chunk:
    heading: str
    line_start: int
    line_end: int
    text: str
    page: int | None = None
    note_id: str | None = None


def _cut_line(line: Line, max_chars: int) -> list[list[Line]]:
    pieces, current = [], ""
    for sentence in _SENTENCE_END.split(line.text.strip()):
        while len(sentence) > max_chars:  # no sentence end in sight: a hard cut
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:max_chars])
            sentence = sentence[max_chars:]
        if current and len(current) + 1 + len(sentence) > max_chars:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}" if current else sentence
    if current:
        pieces.append(current)
    return [[Line(line.no, piece, page=line.page)] for piece in pieces]


def _cut_paragraph(paragraph: list[Line], max_chars: int) -> list[list[Line]]:
    """A paragraph as pieces of at most `max_chars` characters, cut at line ends (then sentence ends)."""
    pieces: list[list[Line]] = []
    current: list[Line] = []
    size = 0
    for line in paragraph:
        if len(line.text) > max_chars:
            if current:
                pieces.append(current)
                current, size = [], 0
            pieces += _cut_line(line, max_chars)
            continue
        if current and size + 1 + len(line.text) > max_chars:
            pieces.append(current)
            current, size = [], 0
        current.append(line)
        size += len(line.text) + 1
    if current:
        pieces.append(current)
    return pieces


def chunk_note(note: Note, max_chars: int = CHUNK_CHARS) -> list[Chunk]:
    chunks: list[Chunk] = []
    stack: list[tuple[int, str]] = []  # (level, heading text) of the open sections
    packed: list[list[Line]] = []  # paragraphs of the chunk being built
    paragraph: list[Line] = []

    def heading() -> str:
        return SEPARATOR.join([p for p in [note.title, *(text for _, text in stack)] if p])

    def size() -> int:
        return sum(len(line.text) + 1 for p in packed for line in p)

    def close_chunk() -> None:
        if packed:
            text = "\n\n".join("\n".join(line.text for line in p) for p in packed)
            first, last = packed[0][0], packed[-1][-1]
            chunks.append(Chunk(heading(), first.no, last.no, text, first.page, note.note_id))
            packed.clear()

    def close_paragraph() -> None:
        if not paragraph:
            return
        length = sum(len(line.text) + 1 for line in paragraph)
        if packed and size() + length > max_chars:
            close_chunk()
        if length > max_chars:
            for piece in _cut_paragraph(paragraph, max_chars):
                packed.append(piece)
                close_chunk()
        else:
            packed.append(list(paragraph))
        paragraph.clear()

    for line in note.lines:
        if (paragraph or packed) and line.page != (paragraph or packed[-1])[-1].page:
            close_paragraph()
            close_chunk()
        if line.level:
            close_paragraph()
            close_chunk()
            while stack and stack[-1][0] >= line.level:
                stack.pop()
            stack.append((line.level, line.text.strip()))
        elif not line.text.strip():
            close_paragraph()
        else:
            paragraph.append(line)
    close_paragraph()
    close_chunk()
    return chunks

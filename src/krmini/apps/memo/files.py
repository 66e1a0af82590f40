"""A cited note read back for the server, and nothing else: never a file outside the indexed folders.

A client names a file as sources cite it, `notes/회의/3월.md`: an indexed folder's name, then the
path inside it (`display`). That name is only ever looked up, never joined blindly to a folder:

    refused (400)   a NUL byte, an absolute path, an empty, `.` or `..` part (after the URL's one decoding)
    not found (404) no indexed folder of that name holds it as a file in the index (state `indexed`:
                    skipped files, such as links that lead out, are never served), or its real path
                    (links resolved now, not when it was indexed) lies outside every indexed folder

The lines come from the same reader the indexer used, so they carry the numbers citations use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from krmini.apps.memo.readers import Line, Skip, read_notes
from krmini.apps.memo.store import Store


class Refused(Exception):
    """Not served; `status` 400 (a name that can never be a note) or 404 (no indexed note)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class NoteFile:
    path: Path  # the file's real path, inside an indexed folder
    cited: str
    sha256: str  # as indexed


def _parts(cited: str) -> tuple[str, ...]:
    if "\x00" in cited:
        raise Refused(400, "path: expected a file name without NUL bytes")
    if cited.startswith("/"):
        raise Refused(400, "path: expected the file as a source names it (notes/a.md), not an absolute path")
    parts = cited.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise Refused(400, "path: expected the file as a source names it (notes/a.md), without empty, '.' or '..' parts")
    return tuple(parts)


def find(store: Store, cited: str) -> NoteFile:
    """The indexed file `cited` names (see the module's docstring), or `Refused`."""
    parts = _parts(cited)
    roots = store.roots()
    real_roots = [Path(r).resolve() for r in roots]
    for root in roots:
        base = Path(root)
        if base.name != parts[0]:
            continue
        candidate = base.joinpath(*parts[1:])
        row = store.conn.execute("SELECT sha256 FROM files WHERE path = ? AND root = ? AND state = 'indexed'",
                                 (str(candidate), root)).fetchone()
        if row is None:
            continue
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):  # gone since it was indexed, or a loop of links
            continue
        if real.is_file() and any(real == r or real.is_relative_to(r) for r in real_roots):
            return NoteFile(real, cited, row[0])
    raise Refused(404, f"path: {cited!r} is no indexed note")


def lines(note: NoteFile, start: int, end: int, page: int | None) -> tuple[list[Line], bool]:
    """The note's lines numbered `start`..`end` (of `page`), and whether the file changed since it was indexed."""
    try:
        data = note.path.read_bytes()
        notes = read_notes(note.path, data)
    except OSError as exc:
        raise Refused(404, f"path: {note.cited!r} cannot be read now ({exc.strerror or exc})") from None
    except Skip as exc:
        raise Refused(404, f"path: {note.cited!r} is no longer a readable note ({exc})") from None
    changed = hashlib.sha256(data).hexdigest() != note.sha256
    found = [line for n in notes for line in n.lines if start <= line.no <= end and (page is None or line.page == page)]
    return found, changed

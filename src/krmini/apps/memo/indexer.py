"""Incremental indexing: only what changed is read again, and nothing stale stays.

A run scans the index's folders (those given now plus those indexed before). For each file:

    same size and mtime as stored      unchanged, not read
    read, same SHA-256 as stored       unchanged (mtime updated)
    read, new or different content     its chunks are replaced, in one transaction
    stored but gone from disk          its chunks are removed (a rename is a removal plus a new file,
                                       reported as a rename when the content hash matches)

Files that cannot be used (binary, oversized, unreadable, undecodable, broken PDF/DOCX, no text) are
stored as skipped with the reason, so `status` shows them and they are not retried until they change.
Hidden files and folders (.git, .obsidian) and unsupported types are not notes and are not listed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from krmini.apps.memo.chunks import chunk_note
from krmini.apps.memo.readers import SUFFIXES, Skip, read_notes
from krmini.apps.memo.store import FileRow, Store
from krmini.apps.memo.units import chunk_units, parse_kinds
from krmini.errors import KrminiError

MAX_MB = 50.0
STATES = ("indexed", "changed", "new", "deleted", "skipped")


@dataclass(frozen=True)
class Found:
    path: str
    root: str
    size: int
    mtime_ns: int
    skip: str | None = None  # known before reading (a link out of the folders, an unsupported file given)


def display(path: str, root: str) -> str:
    """How a file is shown and cited: from its folder's name down (`notes/회의/3월.md`)."""
    p, r = Path(path), Path(root)
    if p == r:
        return p.name
    return str(Path(r.name) / p.relative_to(r))


def scan(roots: list[str]) -> dict[str, Found]:
    found: dict[str, Found] = {}
    resolved_roots = [Path(r).resolve() for r in roots]

    def add(path: Path, root: str, skip: str | None = None) -> None:
        try:
            st = path.stat()
        except OSError as exc:
            found[str(path)] = Found(str(path), root, 0, 0, f"unreadable ({exc.strerror or exc})")
            return
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device named like a note would block or never end
            skip = "not a regular file"
        elif path.is_symlink():
            target = path.resolve()
            if not any(target == r or target.is_relative_to(r) for r in resolved_roots):
                skip = "link to a file outside the indexed folders"
        found[str(path)] = Found(str(path), root, st.st_size, st.st_mtime_ns, skip)

    for root in roots:
        base = Path(root)
        if base.is_file():
            add(base, root, None if base.suffix.lower() in SUFFIXES else
                f"unsupported file type {base.suffix or '(none)'}; expected {', '.join(SUFFIXES)}")
            continue
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES:
                    add(Path(folder) / name, root)
    return found


@dataclass
class Summary:
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    renamed: list[tuple[str, str]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason (short) → files
    notes: int = 0
    chunks: int = 0
    seconds: float = 0.0

    @property
    def touched(self) -> bool:
        return bool(self.new or self.changed or self.deleted or sum(self.skipped.values()))

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        why = f" ({', '.join(f'{r}: {n}' for r, n in self.skipped.most_common())})" if skipped else ""
        rate = f", {self.notes / self.seconds:.0f} notes/s" if self.notes and self.seconds > 0 else ""
        return (f"{self.new} new, {self.changed} changed, {len(self.renamed)} renamed, {self.deleted} deleted, "
                f"{self.unchanged} unchanged, {skipped} skipped{why} — {self.notes} notes, {self.chunks} chunks "
                f"indexed in {self.seconds:.2f} s{rate}")


def _short(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0].split(";")[0]


def configure(store: Store, units: str | None) -> tuple[str, ...]:
    """The index's unit kinds: fixed when it is created (`--units`), the same for every later run."""
    stored = store.get("units")
    if stored is None:
        kinds = parse_kinds(units or "bigram")
        store.set("units", "+".join(kinds))
        return kinds
    if units is not None and parse_kinds(units) != parse_kinds(stored):
        raise KrminiError(f"{store.path}: this index uses --units {stored}; to change it pass --rebuild")
    return parse_kinds(stored)


def check_notes(notes: list[str]) -> None:
    """Every folder or file of notes named exists (before an index file is made for them)."""
    for given in notes:
        if not Path(given).exists():
            raise KrminiError(f"{given}: no such file or folder of notes")


def add_roots(store: Store, notes: list[str]) -> list[str]:
    """The folders (and files) the index covers: the stored ones plus `notes`, as absolute paths."""
    check_notes(notes)
    roots = set(store.roots()) | {str(Path(given).absolute()) for given in notes}
    kept = sorted(roots)
    # a root inside another is covered by it
    kept = [r for r in kept if not any(r != o and Path(r).is_relative_to(o) for o in kept)]
    if kept != store.roots():
        store.set_roots(kept)
    return kept


def index(store: Store, kinds: tuple[str, ...], max_mb: float = MAX_MB, progress: bool = True,
          log: Callable[[str], None] | None = None) -> Summary:
    """Bring the index up to date with its folders."""
    start = time.perf_counter()
    s = Summary()
    roots = [r for r in store.roots() if Path(r).exists()]
    if len(roots) != len(store.roots()):
        store.set_roots(roots)  # a folder that is gone: its files are removed below
    found, stored = scan(roots), store.files()
    gone = {p: row for p, row in stored.items() if p not in found}
    work = [f for p, f in sorted(found.items())
            if p not in stored or (stored[p].size, stored[p].mtime_ns) != (f.size, f.mtime_ns)]
    s.unchanged = len(found) - len(work)
    gone_by_hash = {row.sha256: p for p, row in gone.items() if row.sha256}
    bar = tqdm(total=sum(f.size for f in work), unit="B", unit_scale=True, desc="memo index", dynamic_ncols=True,
               disable=None if progress and work else True, leave=False)
    with store.batch() as tick:
        for path in sorted(gone):
            store.remove(path)
        # a folder added above an indexed one now holds its files: they are cited from the new folder
        store.move_roots([(f.root, p) for p, f in found.items() if p in stored and stored[p].root != f.root])
        for done, f in enumerate(work, 1):
            _one(store, f, stored.get(f.path), kinds, max_mb, gone_by_hash, s, log)
            tick()
            bar.update(f.size)
            bar.set_postfix_str(f"{done}/{len(work)} files, {s.notes} notes")
    bar.close()
    s.deleted = len(gone) - len(s.renamed)
    s.seconds = time.perf_counter() - start
    return s


def _one(store: Store, f: Found, before: FileRow | None, kinds: tuple[str, ...], max_mb: float,
         gone_by_hash: dict[str, str], s: Summary, log: Callable[[str], None] | None) -> None:
    outcome = _index_file(store, f, kinds, before.sha256 if before else None, max_mb)
    if outcome == "same":
        s.unchanged += 1
        return
    kind, sha, notes, chunks, reason = outcome
    if reason and kind == "skipped":
        s.skipped[_short(reason)] += 1
    if before is None and sha in gone_by_hash:
        s.renamed.append((gone_by_hash.pop(sha), f.path))
    elif before is None:
        s.new += 1
    else:
        s.changed += 1
    s.notes += notes
    s.chunks += chunks
    if log:
        log(f"{'skipped' if kind == 'skipped' else 'indexed'} {display(f.path, f.root)}"
            + (f" ({reason})" if reason else f" ({notes} notes, {chunks} chunks)"))


def _index_file(store: Store, f: Found, kinds: tuple[str, ...], old_sha: str | None, max_mb: float):
    """'same', or (state, sha256, notes, chunks, reason)."""
    def skip(reason: str, sha: str = ""):
        store.skip(f.path, f.root, f.size, f.mtime_ns, sha, reason)
        return "skipped", sha, 0, 0, reason

    if f.skip:
        return skip(f.skip)
    if f.size > max_mb * 1e6:
        return skip(f"oversized ({f.size / 1e6:.1f} MB > --max-mb {max_mb:g})")
    try:
        data = Path(f.path).read_bytes()
    except OSError as exc:
        return skip(f"unreadable ({exc.strerror or exc})")
    sha = hashlib.sha256(data).hexdigest()
    if sha == old_sha:
        store.touch(f.path, f.size, f.mtime_ns)
        return "same"
    try:
        notes = read_notes(Path(f.path), data)
    except Skip as exc:
        return skip(str(exc), sha)
    chunks = [c for note in notes for c in chunk_note(note)]
    units = {kind: chunk_units(kind, [c.heading for c in chunks], [c.text for c in chunks]) for kind in kinds}
    problems = [p for note in notes for p in note.problems]
    reason = f"{len(problems)} bad lines skipped (first: {problems[0]})" if problems else None
    store.put(f.path, f.root, f.size, f.mtime_ns, sha, chunks, units, len(notes), reason)
    return "indexed", sha, len(notes), len(chunks), reason


@dataclass(frozen=True)
class FileState:
    path: str
    root: str
    state: str
    reason: str | None = None
    notes: int = 0
    chunks: int = 0


def status(store: Store) -> list[FileState]:
    """Each file's state without changing anything: indexed, changed, new, deleted or skipped."""
    found, stored = scan([r for r in store.roots() if Path(r).exists()]), store.files()
    out = []
    for path in sorted(set(found) | set(stored)):
        row, f = stored.get(path), found.get(path)
        if row is None:
            out.append(FileState(path, f.root, "new"))
        elif f is None:
            out.append(FileState(path, row.root, "deleted"))
        elif f.skip:  # known without reading it (a FIFO is never read)
            out.append(FileState(path, row.root, "skipped", f.skip))
        elif (row.size, row.mtime_ns) != (f.size, f.mtime_ns) and _sha(path) != row.sha256:
            out.append(FileState(path, row.root, "changed"))
        else:
            out.append(FileState(path, row.root, row.state, row.reason, row.notes, row.chunks))
    return out


def _sha(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def watch(store: Store, kinds: tuple[str, ...], report: Callable[[Summary], None], stop: threading.Event,
          poll: float | None = None, max_mb: float = MAX_MB) -> None:
    """Keep the index current until `stop` is set: on file events (watchfiles), or every `poll` seconds
    (also when watchfiles is not installed)."""
    def update() -> None:
        summary = index(store, kinds, max_mb, progress=False)
        if summary.touched or summary.renamed:
            report(summary)

    try:
        import watchfiles
    except ImportError:
        watchfiles = None
    if poll is None and watchfiles is not None:
        roots = [r for r in store.roots() if Path(r).exists()]

        def notes_only(change, path: str) -> bool:
            return Path(path).suffix.lower() in SUFFIXES or Path(path).is_dir()

        for _ in watchfiles.watch(*roots, watch_filter=notes_only, stop_event=stop, debounce=300, rust_timeout=500,
                                  yield_on_timeout=False):
            update()
        return
    while not stop.wait(poll or 2.0):
        update()

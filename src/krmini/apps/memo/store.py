"""The memo index: one SQLite file (stdlib `sqlite3`) holding files, chunks, terms and postings.

    files     path, root folder, size, mtime, SHA-256, state (indexed | skipped) and reason
    chunks    text, heading path, line range (page), the JSONL note id, and the chunk's term keys
              (so removing it touches only its own postings)
    lengths   units per chunk and kind (narrow: BM25 reads it for every posting it scores)
    terms     term key (a hash of kind and unit, `term_key`) → document frequency
    postings  (term, chunk) → term frequency, clustered by term: a query reads only its terms' rows
    vectors   chunk → its embedding (float32, unit length) for dense search (vectors.py); a chunk's
              vector goes with it, and a file written again keeps the vectors of its unchanged chunks

BM25 is computed inside SQLite from these tables (search.py), so any k1/b/weighting works, nothing is
loaded into memory first, and a reader in another process sees a consistent index while an indexer
writes (WAL). Why not FTS5 or an in-memory BM25: docs/memo.md, with the measurements.

Every change to a file is all or nothing (a transaction, or a savepoint inside a batch of them): a
reader sees a file's old chunks or all its new ones.
A file that is not this index (another program's database, a damaged or foreign file) is refused in
one line that says how to rebuild it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from krmini.apps.memo.chunks import Chunk
from krmini.errors import KrminiError

APPLICATION_ID = 0x6B6D656D  # "kmem"
SCHEMA_VERSION = 2  # 2: the vectors table (an index of schema 1 gets it when opened)
SQLITE_MAGIC = b"SQLite format 3\x00"
BATCH_SECONDS = 1.0

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE roots(path TEXT PRIMARY KEY);
CREATE TABLE files(id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, root TEXT NOT NULL, size INTEGER NOT NULL,
                   mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
                   notes INTEGER NOT NULL DEFAULT 0, chunks INTEGER NOT NULL DEFAULT 0, indexed_at REAL NOT NULL);
CREATE TABLE chunks(id INTEGER PRIMARY KEY, file INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
                    ord INTEGER NOT NULL, note_id TEXT, heading TEXT NOT NULL, line_start INTEGER NOT NULL,
                    line_end INTEGER NOT NULL, page INTEGER, text TEXT NOT NULL, term_keys BLOB NOT NULL);
CREATE INDEX chunks_file ON chunks(file);
CREATE TABLE lengths(chunk INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
                     bigram INTEGER NOT NULL, kiwi INTEGER NOT NULL);
CREATE TABLE terms(key INTEGER PRIMARY KEY, df INTEGER NOT NULL);
CREATE TABLE postings(term INTEGER NOT NULL, chunk INTEGER NOT NULL, tf INTEGER NOT NULL,
                      PRIMARY KEY(term, chunk)) WITHOUT ROWID;
"""
VECTORS = "CREATE TABLE vectors(chunk INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE, vec BLOB NOT NULL)"


@lru_cache(maxsize=1 << 20)
def term_key(kind: str, unit: str) -> int:
    """A unit's key: 48 bits of BLAKE2b of (kind, unit). The index stores keys, not unit text (a third of
    the size, no lookup pass when indexing); two units of 10 million share a key with odds ~1e-6."""
    return int.from_bytes(hashlib.blake2b(f"{kind}\x1f{unit}".encode(), digest_size=6).digest(), "big")


def rebuild_hint(path: Path) -> str:
    return f"rebuild it with `krmini memo index NOTES --db {path} --rebuild`"


def damaged(path: Path, exc: sqlite3.Error) -> KrminiError:
    """The one line for an SQLite error met while using the index."""
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return KrminiError(f"{path}: the memo index is busy (another indexer holds it); try again")
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
        return KrminiError(f"{path}: cannot open the memo index ({exc}); check the path and its permissions")
    return KrminiError(f"{path}: damaged memo index ({exc}); {rebuild_hint(path)}")


@dataclass(frozen=True)
class FileRow:
    id: int
    path: str
    root: str
    size: int
    mtime_ns: int
    sha256: str
    state: str
    reason: str | None
    notes: int
    chunks: int


class Store:
    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self.conn = conn
        self._batched = False
        self._pending: list[tuple[list[tuple[int, int, int]], Counter]] = []  # postings, df of a batch

    # --- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, create: bool = False, rebuild: bool = False) -> Store:
        path = Path(path)
        if path.is_dir():
            raise KrminiError(f"{path}: is a directory; --db takes a file path (e.g. {path / 'memo.db'})")
        if rebuild:
            for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                stale.unlink(missing_ok=True)
        exists = path.is_file() and path.stat().st_size > 0
        if not exists and not create:
            raise KrminiError(f"{path}: no memo index here; create it with `krmini memo index NOTES --db {path}`")
        if exists:
            try:
                with open(path, "rb") as fh:
                    magic = fh.read(len(SQLITE_MAGIC))
            except OSError as exc:
                raise KrminiError(f"{path}: cannot read the memo index ({exc.strerror or exc})") from None
            if magic != SQLITE_MAGIC:
                raise KrminiError(f"{path}: not a memo index (not an SQLite database); {rebuild_hint(path)}")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            app, version = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("application_id", "user_version"))
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app == 0 and tables == 0 and create:
                _create_schema(conn)
            elif app != APPLICATION_ID:
                raise KrminiError(f"{path}: another program's SQLite database, not a memo index; {rebuild_hint(path)}")
            elif version == 1:
                _add_vectors(conn)
            elif version != SCHEMA_VERSION:
                raise KrminiError(f"{path}: memo index of schema {version}, this krmini reads {SCHEMA_VERSION}; "
                                  f"{rebuild_hint(path)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: large first runs insert many postings
        except sqlite3.Error as exc:
            conn.close()
            raise damaged(path, exc) from None
        except KrminiError:
            conn.close()
            raise
        return cls(path, conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One change, all or nothing: its own transaction, or a savepoint inside a `batch`."""
        if not self._batched:
            with _transaction(self.conn):
                yield self.conn
            return
        self.conn.execute("SAVEPOINT change")
        pending = len(self._pending)
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK TO change")
            self.conn.execute("RELEASE change")
            del self._pending[pending:]
            raise
        self.conn.execute("RELEASE change")

    @contextmanager
    def batch(self, seconds: float = BATCH_SECONDS) -> Iterator[Callable[[], None]]:
        """Changes share transactions, each committed after about `seconds` (call the yielded function
        between changes). One note's postings land all over the postings tree, so a transaction per
        note rewrites pages again and again (35 notes/s for 10,000 small files); a batch gathers the
        postings of its notes and writes them in key order just before it commits. A reader still
        sees whole files: a change never spans two commits."""
        self.conn.execute("BEGIN IMMEDIATE")
        self._batched, began = True, time.monotonic()

        def commit() -> None:
            self._flush()
            self.conn.execute("COMMIT")

        def tick() -> None:
            nonlocal began
            if time.monotonic() - began >= seconds:
                commit()
                self.conn.execute("BEGIN IMMEDIATE")
                began = time.monotonic()

        try:
            yield tick
            commit()
        except BaseException:
            self.conn.execute("ROLLBACK")
            self._pending.clear()
            raise
        finally:
            self._batched = False

    def _flush(self) -> None:
        """Write the batch's gathered postings and document frequencies, in key order."""
        if not self._pending:
            return
        postings = sorted(p for batch, _ in self._pending for p in batch)
        df = Counter()
        for _, counts in self._pending:
            df.update(counts)
        self._pending.clear()
        _write_postings(self.conn, postings, df)

    # --- settings and roots ------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                      (key, value))

    def roots(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT path FROM roots ORDER BY path")]

    def set_roots(self, roots: list[str]) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM roots")
            c.executemany("INSERT INTO roots(path) VALUES(?)", [(r,) for r in roots])

    # --- files -------------------------------------------------------------------------------------
    def files(self) -> dict[str, FileRow]:
        rows = self.conn.execute("SELECT id, path, root, size, mtime_ns, sha256, state, reason, notes, chunks FROM files")
        return {r[1]: FileRow(*r) for r in rows}

    def touch(self, path: str, size: int, mtime_ns: int) -> None:
        """Same content, new mtime (a `touch`, a save without edits): nothing is re-indexed."""
        with self.transaction() as c:
            c.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?", (size, mtime_ns, path))

    def move_roots(self, moves: list[tuple[str, str]]) -> None:
        """(new root, path) pairs: files now found under another indexed folder."""
        with self.transaction() as c:
            c.executemany("UPDATE files SET root = ? WHERE path = ?", moves)

    def remove(self, path: str) -> None:
        with self.transaction():
            self._drop(path)

    def _drop(self, path: str) -> None:
        row = self.conn.execute("SELECT id FROM files WHERE path = ?", (path,)).fetchone()
        if row is not None:
            self._flush()  # its postings may still be gathered in this batch
            _drop_file(self.conn, row[0])

    def put(self, path: str, root: str, size: int, mtime_ns: int, sha256: str, chunks: list[Chunk],
            units: dict[str, list[list[str]]], notes: int, reason: str | None = None) -> None:
        """Replace everything stored for `path` by these chunks (and their units per kind), in one transaction."""
        self._write(path, root, size, mtime_ns, sha256, "indexed", reason, chunks, units, notes)

    def skip(self, path: str, root: str, size: int, mtime_ns: int, sha256: str, reason: str) -> None:
        self._write(path, root, size, mtime_ns, sha256, "skipped", reason, [], {}, 0)

    def _write(self, path, root, size, mtime_ns, sha256, state, reason, chunks, units, notes) -> None:
        with self.transaction() as c:
            kept = dict(c.execute("SELECT k.heading || char(31) || k.text, v.vec FROM files f "
                                  "JOIN chunks k ON k.file = f.id JOIN vectors v ON v.chunk = k.id "
                                  "WHERE f.path = ?", (path,)))
            self._drop(path)
            file_id = c.execute(
                "INSERT INTO files(path, root, size, mtime_ns, sha256, state, reason, notes, chunks, indexed_at) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (path, root, size, mtime_ns, sha256, state, reason, notes, len(chunks), time.time())).lastrowid
            if chunks:
                ids, postings, df = _insert_chunks(c, file_id, chunks, units)
                # an unchanged chunk (same heading and text) keeps its vector: only what changed is embedded again
                c.executemany("INSERT INTO vectors(chunk, vec) VALUES(?, ?)",
                              [(i, kept[key]) for i, ch in zip(ids, chunks, strict=True)
                               if (key := f"{ch.heading}\x1f{ch.text}") in kept])
                if self._batched:
                    self._pending.append((postings, df))
                else:
                    _write_postings(c, sorted(postings), df)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")  # not inside a transaction
    with _transaction(conn):
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            return  # another process created it first
        for statement in [*SCHEMA.split(";"), VECTORS]:
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _add_vectors(conn: sqlite3.Connection) -> None:
    """Schema 1 → 2: the vectors table, empty (an older index keeps working, lexical only)."""
    with _transaction(conn):
        if conn.execute("PRAGMA user_version").fetchone()[0] == 1:  # not upgraded by another process meanwhile
            conn.execute(VECTORS)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _drop_file(c: sqlite3.Connection, file_id: int) -> None:
    pairs, freed = [], Counter()
    for chunk_id, blob in c.execute("SELECT id, term_keys FROM chunks WHERE file = ?", (file_id,)):
        keys = array("q", blob)
        pairs += [(t, chunk_id) for t in keys]
        freed.update(keys)
    c.executemany("DELETE FROM postings WHERE term = ? AND chunk = ?", pairs)
    c.executemany("UPDATE terms SET df = df - ? WHERE key = ?", [(n, t) for t, n in freed.items()])
    c.executemany("DELETE FROM terms WHERE key = ? AND df <= 0", [(t,) for t in freed])
    c.execute("DELETE FROM files WHERE id = ?", (file_id,))  # its chunks, lengths, vectors go (ON DELETE CASCADE)


def _insert_chunks(c: sqlite3.Connection, file_id: int, chunks: list[Chunk],
                   units: dict[str, list[list[str]]]) -> tuple[list[int], list[tuple[int, int, int]], Counter]:
    """Insert the chunks and their lengths; their ids, postings (term, chunk, tf) and df counts are returned."""
    counts = {kind: [{term_key(kind, u): n for u, n in Counter(per).items()} for per in per_chunk]
              for kind, per_chunk in units.items()}
    df = Counter(t for per_chunk in counts.values() for cnt in per_chunk for t in cnt)
    ids, postings = [], []
    for ord_, chunk in enumerate(chunks):
        mine = [(t, n) for kind in counts for t, n in counts[kind][ord_].items()]
        chunk_id = c.execute(
            "INSERT INTO chunks(file, ord, note_id, heading, line_start, line_end, page, text, term_keys) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (file_id, ord_, chunk.note_id, chunk.heading, chunk.line_start, chunk.line_end, chunk.page, chunk.text,
             array("q", [t for t, _ in mine]).tobytes()),
        ).lastrowid
        lens = {kind: sum(counts[kind][ord_].values()) for kind in counts}
        c.execute("INSERT INTO lengths(chunk, bigram, kiwi) VALUES(?, ?, ?)",
                  (chunk_id, lens.get("bigram", 0), lens.get("kiwi", 0)))
        postings += [(t, chunk_id, n) for t, n in mine]
        ids.append(chunk_id)
    return ids, postings, df


def _write_postings(c: sqlite3.Connection, postings: list[tuple[int, int, int]], df: Counter) -> None:
    """`postings` sorted by key: the clustered index then grows at a few places, not all over."""
    c.executemany("INSERT INTO terms(key, df) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET df = df + excluded.df",
                  sorted(df.items()))
    c.executemany("INSERT INTO postings(term, chunk, tf) VALUES(?, ?, ?)", postings)


def document_frequencies(c: sqlite3.Connection, keys: list[int]) -> dict[int, int]:
    """key → df for the keys some chunk holds."""
    marks = ",".join("?" * len(keys))
    return dict(c.execute(f"SELECT key, df FROM terms WHERE key IN ({marks}) AND df > 0", keys)) if keys else {}

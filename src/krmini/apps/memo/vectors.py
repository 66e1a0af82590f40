"""Vectors for dense search: one embedding per chunk in the index file, added incrementally.

    vectors          chunk id → float32 little-endian row of unit length (store.py; it goes with its
                     chunk: ON DELETE CASCADE)
    meta 'embedder'  the model that made them: kind, name, dimension and the spec that opens it again

`embed_missing` embeds only the chunks without a vector, in batches that are committed one by one (an
interrupted run keeps what it finished). When a file is indexed again, its chunks whose heading and
text did not change keep their vectors (store.py), so editing one record of a JSONL file of 961 notes
embeds that record's chunks only; a deleted or renamed file's vectors go with its chunks.

A passage is its heading path and its text (the heading path carries the note's title). Dense ranking
is brute force: one matrix-vector product over every row (numpy; the timing is in docs/memo-dense.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from krmini.apps.memo.embed import Embedder, Identity
from krmini.apps.memo.store import Store
from krmini.errors import KrminiError

WRITE_BATCH = 256  # chunks embedded and committed together


def passage(heading: str, text: str) -> str:
    return f"{heading}\n{text}" if heading else text


def stored_identity(store: Store) -> Identity | None:
    raw = store.get("embedder")
    return Identity(**json.loads(raw)) if raw else None


def counts(store: Store) -> tuple[int, int]:
    """(chunks with a vector, chunks)."""
    return store.conn.execute("SELECT (SELECT count(*) FROM vectors), (SELECT count(*) FROM chunks)").fetchone()


def check(store: Store, embedder: Embedder) -> None:
    """One line when `embedder` is not the model the index's vectors come from."""
    have = stored_identity(store)
    if have is not None and not have.same_model(embedder.identity):
        raise KrminiError(f"{embedder.identity.spec}: this index's vectors come from {have}, not "
                          f"{embedder.identity}; vectors of two models do not compare: search with that one "
                          f"(without --embed, the index reopens it) or re-embed with `krmini memo index "
                          f"--db {store.path} --embed {embedder.identity.spec} --reembed`")


def configure(store: Store, embedder: Embedder, reembed: bool = False) -> None:
    """The index's embedder: set by its first embedding; `reembed` drops every vector for a new one."""
    if reembed:
        with store.transaction() as c:
            c.execute("DELETE FROM vectors")
            c.execute("DELETE FROM meta WHERE key = 'embedder'")
    check(store, embedder)
    identity = embedder.identity
    store.set("embedder", json.dumps({"kind": identity.kind, "name": identity.name, "dim": identity.dim,
                                      "spec": identity.spec}, ensure_ascii=False))


@dataclass
class Embedded:
    embedded: int
    with_vectors: int
    chunks: int
    seconds: float
    identity: Identity

    def line(self) -> str:
        rate = f", {self.embedded / self.seconds:.0f} chunks/s" if self.embedded and self.seconds > 0 else ""
        return (f"embedded {self.embedded} chunks with {self.identity} in {self.seconds:.2f} s{rate} — "
                f"{self.with_vectors} of {self.chunks} chunks have vectors")


def embed_missing(store: Store, embedder: Embedder, progress: bool = True) -> Embedded:
    """Embed the chunks that have no vector (only those), committing every `WRITE_BATCH`."""
    start = time.perf_counter()
    todo = store.conn.execute("SELECT k.id, k.heading, k.text FROM chunks k LEFT JOIN vectors v ON v.chunk = k.id "
                              "WHERE v.chunk IS NULL ORDER BY k.id").fetchall()
    dim = embedder.identity.dim
    bar = tqdm(total=len(todo), unit="chunk", desc="memo embed", dynamic_ncols=True, leave=False,
               disable=None if progress and todo else True)
    done = 0
    for i in range(0, len(todo), WRITE_BATCH):
        part = todo[i:i + WRITE_BATCH]
        rows = embedder.embed([passage(heading, text) for _, heading, text in part])
        if rows.shape != (len(part), dim):
            raise KrminiError(f"{embedder.identity.spec}: {rows.shape[0]}×{rows.shape[1]} embeddings for "
                              f"{len(part)} passages of dimension {dim}")
        with store.transaction() as c:  # a chunk removed meanwhile (another indexer) gets no vector
            c.executemany("INSERT INTO vectors(chunk, vec) SELECT ?, ? WHERE EXISTS (SELECT 1 FROM chunks WHERE id = ?) "
                          "ON CONFLICT(chunk) DO NOTHING",
                          [(cid, row.astype("<f4").tobytes(), cid) for (cid, _, _), row in zip(part, rows, strict=True)])
        done += len(part)
        bar.update(len(part))
        bar.set_postfix_str(f"{done}/{len(todo)} chunks")
    bar.close()
    with_vectors, chunks = counts(store)
    return Embedded(len(todo), with_vectors, chunks, time.perf_counter() - start, embedder.identity)


class Matrix:
    """The index's vectors in memory (read once, again only after the file changed), ranked by dot product."""

    def __init__(self, store: Store, dim: int):
        self.store, self.dim = store, dim
        self.version: tuple[int, int] | None = None
        self.ids = np.zeros(0, dtype=np.int64)
        self.rows = np.zeros((0, dim), dtype=np.float32)

    def _fresh(self) -> None:
        c = self.store.conn
        version = (c.execute("PRAGMA data_version").fetchone()[0], c.total_changes)  # others' commits, our own
        if version == self.version:
            return
        pairs = c.execute("SELECT chunk, vec FROM vectors ORDER BY chunk").fetchall()
        if any(len(blob) != 4 * self.dim for _, blob in pairs):
            raise KrminiError(f"{self.store.path}: a stored vector is not {self.dim} float32 numbers; "
                              f"re-embed with `krmini memo index --db {self.store.path} --embed SPEC --reembed`")
        self.ids = np.fromiter((cid for cid, _ in pairs), dtype=np.int64, count=len(pairs))
        self.rows = np.frombuffer(b"".join(blob for _, blob in pairs), dtype="<f4").reshape(len(pairs), self.dim)
        self.version = version

    def __len__(self) -> int:
        self._fresh()
        return len(self.ids)

    def rank(self, query: np.ndarray, depth: int) -> list[tuple[int, float]]:
        """The `depth` chunks most similar to `query` (a unit row), best first, with their cosines."""
        self._fresh()
        if not len(self.ids):
            return []
        scores = self.rows @ query.astype(np.float32)
        depth = min(depth, len(scores))
        top = np.argpartition(-scores, depth - 1)[:depth]
        top = top[np.lexsort((self.ids[top], -scores[top]))]  # best first; ties by chunk id
        return [(int(self.ids[i]), float(scores[i])) for i in top]

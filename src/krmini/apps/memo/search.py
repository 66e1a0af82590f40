"""Search: BM25 per unit kind inside SQLite, embeddings, their fusion; hits cite file and lines.

Three modes, always said (`Results.describe`):

    lexical   BM25 over the index's unit kinds (no model involved; works offline with nothing downloaded)
    dense     the question's embedding against every chunk's (vectors.py), by cosine
    hybrid    both rankings fused (`fuse`); the default when the index has vectors

For each unit kind of the index, the question's distinct units score every chunk holding any of them:

    score(chunk) = Σ idf(u) · tf·(k1+1) / (tf + k1·(1 − b + b·len/avglen)),  idf(u) = ln(1 + (N − df + ½)/(df + ½))

with k1 = 0.5, b = 0.75 (tuned on the KorQuAD dev set, docs/memo.md). With two kinds (bigram+kiwi)
the scores are fused: each kind's scores divided by its best one, weighted (`FUSION_WEIGHTS`) and
summed. Reciprocal-rank fusion was measured too and lost: two lexical rankings agree so often that
its sums tie, and breaking the ties by either list gives back that list (docs/memo.md).

Hybrid adds the dense ranking, min-max scaled and weighted, to the lexical scores (`fuse`; RRF lost here
too: docs/memo-dense.md).
An optional reranker (a CrossEncoder) reorders the top `RERANK_DEPTH` hits of any mode.

`coverage` is the share of the question's units (bigrams and whole words, not word pairs; weighted
by idf, and a unit found in no note counts with the largest idf) that a hit contains: 1.0 when every
unit is in it. `ask` refuses to answer from hits below a threshold, whatever the mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from krmini.apps.memo import vectors
from krmini.apps.memo.embed import DENSE_WEIGHT, MODES, RERANK_DEPTH, Embedder, Reranker, open_asked_or_stored
from krmini.apps.memo.indexer import display
from krmini.apps.memo.store import Store, document_frequencies, term_key
from krmini.apps.memo.units import analyze, kiwi_available, parse_kinds
from krmini.errors import KrminiError

K1, B = 0.5, 0.75
FUSION_WEIGHTS = {"bigram": 1.0, "kiwi": 0.5}
DEPTH = 100  # each ranked list that fusion sees


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    path: str
    root: str
    heading: str
    line_start: int
    line_end: int
    page: int | None
    note_id: str | None
    text: str
    score: float
    coverage: float

    @property
    def where(self) -> str:
        """`notes/a.md:12-18`, `notes/b.pdf p.3:4-9`, `notes/c.docx ¶5-7`, `dev.jsonl:57 (id 0-3)`."""
        name = display(self.path, self.root)
        span = f"{self.line_start}" if self.line_start == self.line_end else f"{self.line_start}-{self.line_end}"
        if name.lower().endswith(".docx"):
            return f"{name} ¶{span}"
        if self.page is not None:
            return f"{name} p.{self.page}:{span}"
        return f"{name}:{span}" + (f" (id {self.note_id})" if self.note_id is not None else "")


@dataclass(frozen=True)
class Results:
    hits: list[Hit]
    kinds: tuple[str, ...]
    chunks: int  # chunks in the index
    fallback: str | None = None  # why a kind of the index was not used
    mode: str = "lexical"
    embedder: str | None = None  # dense and hybrid: the model the question was embedded with
    vectors: int = 0  # chunks with a vector
    reranker: str | None = None
    dense_weight: float = DENSE_WEIGHT

    def describe(self) -> str:
        lexical = "+".join(self.kinds) + (", score fusion" if len(self.kinds) > 1 else "")
        how = {"lexical": lexical, "dense": self.embedder,
               "hybrid": f"{'+'.join(self.kinds)} + {self.embedder}; score fusion, dense weight {self.dense_weight:g}"
               }[self.mode]
        notes = [f"{self.vectors} of {self.chunks} chunks have vectors"] if (
            self.mode != "lexical" and self.vectors < self.chunks) else []
        notes += [f"reranked top {RERANK_DEPTH} by {self.reranker}"] if self.reranker else []
        notes += [self.fallback] if self.fallback else []
        return f"mode: {self.mode} ({'; '.join([how, *notes])})"


def index_kinds(store: Store) -> tuple[str, ...]:
    stored = store.get("units")
    if stored is None:
        raise KrminiError(f"{store.path}: the memo index is empty; run `krmini memo index NOTES --db {store.path}`")
    return parse_kinds(stored)


def _idf(n: int, df: int) -> float:
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def fuse(lexical: list[tuple[int, float]], dense: list[tuple[int, float]],
         weight: float = DENSE_WEIGHT) -> list[tuple[int, float]]:
    """Hybrid: lexical scores divided by the best one, plus `weight` times the cosines min-max scaled
    over the dense list (a chunk missing from a list gets 0 from it), best first. The dense list moves a
    chunk by at most `weight` against the lexical best's 1, which bounds what a weak embedder can spoil."""
    fused: dict[int, float] = {}
    if lexical:
        top = lexical[0][1] or 1.0
        for chunk, score in lexical:
            fused[chunk] = score / top
    if dense:
        high, low = dense[0][1], dense[-1][1]
        for chunk, score in dense:
            fused[chunk] = fused.get(chunk, 0.0) + weight * ((score - low) / (high - low) if high > low else 1.0)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


class Searcher:
    """Searches one index; `kinds` (default: every kind it has) must be among the index's.

    `mode` (default: hybrid with an `embedder`, else lexical): dense and hybrid need the embedder the
    index's vectors come from; `dense_weight` is hybrid's (`fuse`); `reranker` reorders the top hits."""

    def __init__(self, store: Store, kinds: tuple[str, ...] | None = None, mode: str | None = None,
                 embedder: Embedder | None = None, reranker: Reranker | None = None,
                 dense_weight: float = DENSE_WEIGHT):
        self.store, self.dense_weight = store, dense_weight
        have = index_kinds(store)
        asked = kinds or have
        missing = [k for k in asked if k not in have]
        if missing:
            raise KrminiError(f"--units {'+'.join(asked)}: the index has only {'+'.join(have)} "
                              "(rebuild it with --units to add more)")
        self.fallback = None
        if "kiwi" in asked and len(asked) > 1 and not kiwi_available():
            asked = tuple(k for k in asked if k != "kiwi")
            self.fallback = "kiwi units not installed: pip install 'krmini[memo]'"
        self.kinds = asked
        self.mode = mode or ("hybrid" if embedder is not None else "lexical")
        if self.mode not in MODES:
            raise KrminiError(f"--mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        self.embedder, self.reranker, self.matrix = embedder, reranker, None
        if self.mode != "lexical":
            identity = vectors.stored_identity(store)
            if identity is None or not vectors.counts(store)[0]:
                raise KrminiError(f"--mode {self.mode}: {store.path} has no vectors; embed its chunks with "
                                  f"`krmini memo index --db {store.path} --embed st:MODEL|openai:URL`")
            if embedder is None:
                raise KrminiError(f"--mode {self.mode}: needs an embedder (the index's is {identity})")
            vectors.check(store, embedder)
            self.matrix = vectors.Matrix(store, identity.dim)

    def _known(self, kind: str, units: list[str], n: int) -> dict[str, tuple[int, float]]:
        """unit → (key, idf) of the units some chunk holds."""
        keys = {u: term_key(kind, u) for u in set(units)}
        df = document_frequencies(self.store.conn, sorted(set(keys.values())))
        return {u: (key, _idf(n, df[key])) for u, key in keys.items() if key in df}

    def _ranked(self, kind: str, known: dict[str, tuple[int, float]], depth: int) -> list[tuple[int, float]]:
        """The chunks holding any of the `known` units, best first."""
        if not known:
            return []
        c = self.store.conn
        avg = c.execute(f"SELECT avg({kind}) FROM lengths").fetchone()[0] or 1.0
        weights = dict(known.values())
        values = ",".join("(?, ?)" for _ in weights)
        sql = (f"WITH q(term, w) AS (VALUES {values}) "
               f"SELECT p.chunk, SUM(q.w * p.tf * {K1 + 1} / (p.tf + {K1} * ({1 - B} + {B} * l.{kind} / ?))) AS s "
               "FROM q JOIN postings p ON p.term = q.term JOIN lengths l ON l.chunk = p.chunk "
               "GROUP BY p.chunk ORDER BY s DESC, p.chunk LIMIT ?")
        params = [x for item in weights.items() for x in item] + [avg, depth]
        return list(c.execute(sql, params))

    def _lexical(self, query: str, n: int, depth: int) -> tuple[list[tuple[int, float]], dict]:
        """The lexical ranking (the kinds' scores fused; none in dense mode) and, for coverage, the first
        kind's single units (not word pairs) → (key, idf), None for a unit no chunk holds."""
        lists, words = [], {}
        for i, kind in enumerate(self.kinds):
            units = analyze(kind, [query], query=True)[0]
            known = self._known(kind, units, n)
            if i == 0:
                words = {u: known.get(u) for u in units if " " not in u}
            if self.mode != "dense":
                lists.append(self._ranked(kind, known, max(depth, DEPTH) if len(self.kinds) > 1 else depth))
        if len(lists) <= 1:
            return (lists[0] if lists else []), words
        fused: dict[int, float] = {}
        for kind, ranked in zip(self.kinds, lists, strict=True):
            top = ranked[0][1] if ranked else 1.0
            for chunk, score in ranked:
                fused[chunk] = fused.get(chunk, 0.0) + FUSION_WEIGHTS[kind] * score / top
        return sorted(fused.items(), key=lambda item: (-item[1], item[0])), words

    def search(self, query: str, k: int = 10) -> Results:
        c = self.store.conn
        n = c.execute("SELECT count(*) FROM lengths").fetchone()[0]
        wanted = max(k, RERANK_DEPTH) if self.reranker else k
        depth = max(wanted, DEPTH) if self.mode == "hybrid" else wanted
        lexical, words = self._lexical(query, n, depth)
        dense = [] if self.matrix is None else self.matrix.rank(self.embedder.embed([query], query=True)[0], depth)
        order = (lexical if self.mode == "lexical" else dense if self.mode == "dense"
                 else fuse(lexical, dense, self.dense_weight))
        weights = {v[0]: v[1] for v in words.values() if v is not None}
        total = sum(weights.values()) + sum(v is None for v in words.values()) * _idf(n, 0)
        hits = [self._hit(chunk, score, weights, total) for chunk, score in order[:wanted]]
        if self.reranker and hits:
            scores = self.reranker.scores(query, [vectors.passage(h.heading, h.text) for h in hits])
            ranked = sorted(zip(scores, range(len(hits)), hits, strict=True), key=lambda t: (-t[0], t[1]))
            hits = [replace(h, score=s) for s, _, h in ranked]
        identity = self.embedder.identity if self.embedder is not None and self.mode != "lexical" else None
        return Results(hits[:k], self.kinds, n, self.fallback, self.mode,
                       f"{identity.kind}:{identity.name}, {identity.dim}-dim" if identity else None,
                       len(self.matrix) if self.matrix is not None else 0,
                       self.reranker.name if self.reranker else None, self.dense_weight)

    def _hit(self, chunk: int, score: float, weights: dict[int, float], total: float) -> Hit:
        c = self.store.conn
        row = c.execute("SELECT f.path, f.root, k.heading, k.line_start, k.line_end, k.page, k.note_id, k.text "
                        "FROM chunks k JOIN files f ON f.id = k.file WHERE k.id = ?", (chunk,)).fetchone()
        matched = 0.0
        if weights and total > 0:
            marks = ",".join("?" * len(weights))
            have = c.execute(f"SELECT term FROM postings WHERE chunk = ? AND term IN ({marks})", (chunk, *weights))
            matched = sum(weights[t] for (t,) in have) / total
        return Hit(chunk, *row, score=score, coverage=matched)


def open_searcher(store: Store, args, embedder: Embedder | None = None) -> Searcher:
    """The searcher a command's options ask for: `--units`, `--mode` (default: hybrid when the index has
    vectors, else lexical), `--embed` (default: the index's own embedder, reopened; or `embedder`, opened
    already), `--rerank`. An embedder that cannot be opened is an error, never a quiet lexical search:
    `--mode lexical` is the way."""
    kinds = parse_kinds(args.units) if getattr(args, "units", None) else None
    identity = vectors.stored_identity(store)
    has = identity is not None and vectors.counts(store)[0] > 0
    mode = args.mode or ("hybrid" if has or args.embed else "lexical")
    if mode == "lexical" and args.embed:
        raise KrminiError("--embed: not used by --mode lexical (dense and hybrid search embed the question)")
    if mode == "lexical":
        embedder = None
    elif embedder is None and has:
        hint = "this index has vectors, so search is hybrid: --mode lexical searches without them"
        embedder = open_asked_or_stored(args, identity, hint if args.mode is None else None)
    reranker = Reranker(args.rerank) if args.rerank else None
    return Searcher(store, kinds, mode, embedder, reranker, args.dense_weight)

"""Search: BM25 per unit kind, computed inside SQLite, fused by reciprocal rank; hits cite file and lines.

For each unit kind of the index, the question's distinct units score every chunk holding any of them:

    score(chunk) = Σ idf(u) · tf·(k1+1) / (tf + k1·(1 − b + b·len/avglen)),  idf(u) = ln(1 + (N − df + ½)/(df + ½))

with k1 = 0.5, b = 0.75 (tuned on the KorQuAD dev set, docs/memo.md). With two kinds (bigram+kiwi)
the scores are fused: each kind's scores divided by its best one, weighted (`FUSION_WEIGHTS`) and
summed. Reciprocal-rank fusion was measured too and lost: two lexical rankings agree so often that
its sums tie, and breaking the ties by either list gives back that list (docs/memo.md). The mode is
always said: `lexical` (no embedding model is involved), with the unit kinds used.

`coverage` is the share of the question's units (bigrams and whole words, not word pairs; weighted
by idf, and a unit found in no note counts with the largest idf) that a hit contains: 1.0 when every
unit is in it. `ask` refuses to answer from hits below a threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from krmini.apps.memo.indexer import display
from krmini.apps.memo.store import Store, document_frequencies, term_key
from krmini.apps.memo.units import analyze, kiwi_available, parse_kinds
from krmini.errors import KrminiError

K1, B = 0.5, 0.75
FUSION_WEIGHTS = {"bigram": 1.0, "kiwi": 0.5}
DEPTH = 100  # each kind's ranked list that fusion sees


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

    @property
    def mode(self) -> str:
        return "lexical"

    def describe(self) -> str:
        how = "+".join(self.kinds) + (", score fusion" if len(self.kinds) > 1 else "")
        return f"mode: {self.mode} ({how}" + (f"; {self.fallback})" if self.fallback else ")")


def index_kinds(store: Store) -> tuple[str, ...]:
    stored = store.get("units")
    if stored is None:
        raise KrminiError(f"{store.path}: the memo index is empty; run `krmini memo index NOTES --db {store.path}`")
    return parse_kinds(stored)


def _idf(n: int, df: int) -> float:
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


class Searcher:
    """Searches one index; `kinds` (default: every kind it has) must be among the index's."""

    def __init__(self, store: Store, kinds: tuple[str, ...] | None = None):
        self.store = store
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

    def _ranked(self, kind: str, units: list[str], n: int, depth: int) -> tuple[list[tuple[int, float]], dict]:
        """The chunks holding any of `units`, best first, and unit → (key, idf) of the units some chunk holds."""
        c = self.store.conn
        avg = c.execute(f"SELECT avg({kind}) FROM lengths").fetchone()[0] or 1.0
        keys = {u: term_key(kind, u) for u in set(units)}
        df = document_frequencies(c, sorted(set(keys.values())))
        known = {u: (key, _idf(n, df[key])) for u, key in keys.items() if key in df}
        if not known:
            return [], known
        weights = dict(known.values())
        values = ",".join("(?, ?)" for _ in weights)
        sql = (f"WITH q(term, w) AS (VALUES {values}) "
               f"SELECT p.chunk, SUM(q.w * p.tf * {K1 + 1} / (p.tf + {K1} * ({1 - B} + {B} * l.{kind} / ?))) AS s "
               "FROM q JOIN postings p ON p.term = q.term JOIN lengths l ON l.chunk = p.chunk "
               "GROUP BY p.chunk ORDER BY s DESC, p.chunk LIMIT ?")
        params = [x for item in weights.items() for x in item] + [avg, depth]
        return [(chunk, score) for chunk, score in c.execute(sql, params)], known

    def search(self, query: str, k: int = 10) -> Results:
        c = self.store.conn
        n = c.execute("SELECT count(*) FROM lengths").fetchone()[0]
        lists, words = [], {}
        for i, kind in enumerate(self.kinds):
            units = analyze(kind, [query], query=True)[0]
            ranked, known = self._ranked(kind, units, n, max(k, DEPTH) if len(self.kinds) > 1 else k)
            lists.append(ranked)
            if i == 0:  # coverage counts the first kind's single units (not word pairs)
                words = {u: known.get(u) for u in units if " " not in u}
        if len(lists) == 1:
            order = lists[0][:k]
        else:
            fused: dict[int, float] = {}
            for kind, ranked in zip(self.kinds, lists, strict=True):
                top = ranked[0][1] if ranked else 1.0
                for chunk, score in ranked:
                    fused[chunk] = fused.get(chunk, 0.0) + FUSION_WEIGHTS[kind] * score / top
            order = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        weights = {v[0]: v[1] for v in words.values() if v is not None}
        total = sum(weights.values()) + sum(v is None for v in words.values()) * _idf(n, 0)
        hits = [self._hit(chunk, score, weights, total) for chunk, score in order]
        return Results(hits, self.kinds, n, self.fallback)

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

"""`krmini bench memo`: indexing speed, query latency and incremental re-indexing on synthetic notes.

The notes are pieces of the shared Korean prose (../shared/data/pretrain: judgments, statutes,
petitions, reviews, novels; taken in turn from each file): whole paragraphs (each cut at 2,000
characters) until a note has 600 or more, so 600 to about 2,600 characters. They are written as
Markdown files (`# first words` then the text) in a temporary folder of 1,000-note subfolders.

    indexing     `--notes` notes (default 10,000) into a new index: notes/s (target ≥ 200)
    query        `--queries` searches (default 500) for 3-8 consecutive words of a random note:
                 p50/p95 ms (target p95 ≤ 50 ms), and how often that note ranks first
    edit         a 1,000-note index, one note edited, `index` run again: seconds (target < 1 s),
                 the median and the slowest of `--repeats` edits
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from krmini.apps.memo import indexer
from krmini.apps.memo.search import Searcher
from krmini.apps.memo.store import Store
from krmini.apps.memo.units import parse_kinds
from krmini.argtypes import POSITIVE_INT
from krmini.data.readers import ReadProblems, corpus_files, read_documents
from krmini.errors import KrminiError
from krmini.runs import check_output, write_json_atomic

DEFAULT_CORPUS = "../shared/data/pretrain"
TARGETS = {"notes_per_s": 200, "query_p95_ms": 50, "edit_s": 1.0}


def _pieces(path: Path, low: int = 600, high: int = 2000) -> Iterator[str]:
    buf: list[str] = []
    for doc in read_documents([path], problems=ReadProblems()):
        for para in doc.text.split("\n"):
            para = para.strip()
            if para:
                buf.append(para[:high])
                if sum(map(len, buf)) >= low:
                    yield "\n\n".join(buf)
                    buf = []


def synthetic_notes(corpus: list[str], n: int) -> list[str]:
    """`n` notes, taken in turn from each corpus file."""
    streams = [_pieces(f) for f in corpus_files(corpus)]
    notes: list[str] = []
    while streams and len(notes) < n:
        for stream in list(streams):
            piece = next(stream, None)
            if piece is None:
                streams.remove(stream)
            elif len(notes) < n:
                notes.append(piece)
    if len(notes) < n:
        raise KrminiError(f"{', '.join(corpus)}: only {len(notes)} notes of text; ask for fewer (--notes)")
    return notes


def write_notes(folder: Path, notes: list[str]) -> list[Path]:
    paths = []
    for i, text in enumerate(notes):
        path = folder / f"{i // 1000:02d}" / f"{i:05d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        title = " ".join(text.split()[:5])
        path.write_text(f"# {title}\n\n{text}\n", encoding="utf-8")
        paths.append(path)
    return paths


def _indexed(folder: Path, db: Path, kinds: tuple[str, ...]) -> tuple[Store, indexer.Summary]:
    store = Store.open(db, create=True)
    indexer.configure(store, "+".join(kinds))
    indexer.add_roots(store, [str(folder)])
    return store, indexer.index(store, kinds, progress=False)


def run_benchmark(corpus: list[str], n_notes: int, n_queries: int, repeats: int, units: str, seed: int = 0,
                  edit_of: int = 1000) -> dict:
    kinds = parse_kinds(units)
    rng = random.Random(seed)
    notes = synthetic_notes(corpus, max(n_notes, edit_of))
    result: dict = {"notes": n_notes, "units": "+".join(kinds), "mode": "lexical"}
    with tempfile.TemporaryDirectory(prefix="krmini-bench-memo-") as tmp:
        root = Path(tmp)
        write_notes(root / "big", notes[:n_notes])
        store, summary = _indexed(root / "big", root / "big.db", kinds)
        result.update(index_seconds=round(summary.seconds, 2), notes_per_s=round(n_notes / summary.seconds, 1),
                      chunks=summary.chunks, db_mb=round((root / "big.db").stat().st_size / 1e6, 1))
        searcher = Searcher(store)
        latencies, first = [], 0
        for q in range(n_queries + 20):  # the first 20 warm the page cache and are not counted
            i = rng.randrange(n_notes)
            words = notes[i].split()
            length = rng.randint(3, 8)
            start = rng.randrange(max(1, len(words) - length))
            began = time.perf_counter()
            hits = searcher.search(" ".join(words[start:start + length]), 10).hits
            if q >= 20:
                latencies.append(1000 * (time.perf_counter() - began))
                first += bool(hits) and Path(hits[0].path).stem == f"{i:05d}"
        store.close()
        latencies.sort()
        result.update(queries=n_queries, query_p50_ms=round(statistics.median(latencies), 2),
                      query_p95_ms=round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
                      span_found_first=round(first / n_queries, 3))

        paths = write_notes(root / "small", notes[:edit_of])
        store, _ = _indexed(root / "small", root / "small.db", kinds)
        edits = []
        for r in range(repeats):
            path = paths[rng.randrange(len(paths))]
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"\n추가한 문장 {r}: 회의에서 정한 예산을 다시 확인한다.\n")
            summary = indexer.index(store, kinds, progress=False)
            if (summary.changed, summary.unchanged) != (1, edit_of - 1):
                raise KrminiError(f"edit {r}: expected 1 changed and {edit_of - 1} unchanged notes, got {summary.line()}")
            edits.append(summary.seconds)
        store.close()
    result.update(edit_of=edit_of, edit_repeats=repeats, edit_median_s=round(statistics.median(edits), 3), edit_max_s=round(max(edits), 3))
    return result


def register(subparsers) -> None:
    p = subparsers.add_parser("memo", help="memo index: notes/s, query p95, edit-one-note re-index time",
                              description=__doc__)
    p.add_argument("--corpus", nargs="+", default=[DEFAULT_CORPUS], help=f"prose to cut into notes (default: {DEFAULT_CORPUS})")
    p.add_argument("--notes", type=POSITIVE_INT, default=10_000, help="notes in the large index (default 10000)")
    p.add_argument("--queries", type=POSITIVE_INT, default=500, help="timed searches (default 500)")
    p.add_argument("--repeats", type=POSITIVE_INT, default=5, help="single-note edits timed (default 5)")
    p.add_argument("--units", default="bigram", help="bigram (default), kiwi or bigram+kiwi")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=run)


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def run(args) -> int:
    for given in args.corpus:
        if not Path(given).exists():
            raise KrminiError(f"--corpus: {given}: no such file or folder")
    if args.json:  # before the benchmark: a bad path costs nothing, and never lands on the corpus
        check_output(args.json, "file", args.corpus)
    r = run_benchmark(args.corpus, args.notes, args.queries, args.repeats, args.units)
    print(f"bench memo ({r['mode']}, {r['units']} units): {r['notes']:,} notes → {r['chunks']:,} chunks, {r['db_mb']} MB")
    print(f"  indexing   {r['notes_per_s']:>8} notes/s   ({r['index_seconds']} s; target ≥ {TARGETS['notes_per_s']}: "
          f"{_mark(r['notes_per_s'] >= TARGETS['notes_per_s'])})")
    print(f"  query p95  {r['query_p95_ms']:>8} ms        (p50 {r['query_p50_ms']} ms over {r['queries']}; target ≤ "
          f"{TARGETS['query_p95_ms']}: {_mark(r['query_p95_ms'] <= TARGETS['query_p95_ms'])}; the note ranked first "
          f"for {r['span_found_first']:.0%} of its own spans)")
    print(f"  edit 1/1000 {r['edit_median_s']:>7} s         (slowest {r['edit_max_s']} s of {r['edit_repeats']}; "
          f"target < {TARGETS['edit_s']}: {_mark(r['edit_max_s'] < TARGETS['edit_s'])})")
    if args.json:
        write_json_atomic(args.json, r)
    return 0

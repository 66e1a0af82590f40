"""`krmini memo …`: index notes, see their state, search them, measure retrieval, ask about them;
`krmini chat RUN --memo DB` (`add_chat_args`, `chat_commands`: the REPL's /memo QUESTION) and
`krmini serve RUN --memo DB` (`add_serve_args`, `serve_extension`), which the top-level CLI hands in."""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sqlite3
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

from krmini.apps.memo import indexer, vectors
from krmini.apps.memo.ask import (
    MIN_COVERAGE,
    choose,
    iter_hits,
    memo_command,
    refusal,
    stream_answer,
    summarize,
)
from krmini.apps.memo.backends import add_backend_args, open_backend
from krmini.apps.memo.embed import Embedder, add_embed_args, open_asked_or_stored
from krmini.apps.memo.search import open_searcher
from krmini.apps.memo.store import Store, damaged
from krmini.argtypes import POSITIVE_INT, POSITIVE_NUMBER, SHARE
from krmini.errors import KrminiError
from krmini.infer.cli import add_device_args, add_sampling_args, sampling_from_args
from krmini.infer.sampling import SamplingConfig

DEFAULT_DB = "memo.db"


def _guarded(handler):
    """SQLite errors met while using the index (a damaged file, a lock held too long) become one line."""
    @functools.wraps(handler)
    def run(args):
        try:
            return handler(args)
        except sqlite3.Error as exc:
            raise damaged(Path(args.db), exc) from None
    return run


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memo", metavar="DB", help="메모 색인도 제공 / also serve this memo index (`krmini memo index`): "
                   "/v1/memo/search, /v1/memo/chat, /v1/memo/note and a notes mode on the web page")


def serve_extension(args):
    """`krmini serve --memo DB`'s routes, once DB is known to be a memo index (None without --memo)."""
    if args.memo is None:
        return None
    db = Path(args.memo)
    if db.is_dir():
        raise KrminiError(f"--memo {db}: is a directory; expected the memo index file (krmini memo index NOTES --db FILE)")
    from krmini.apps.memo.server import extension

    return extension(db, args.host, args.port)


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help=f"the index file (default: {DEFAULT_DB})")


def _units_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--units", help=f"{what}: bigram, kiwi or bigram+kiwi (kiwi needs `pip install 'krmini[memo]'`)")


def register(subparsers) -> None:
    p = subparsers.add_parser("memo", help="메모 도우미 / notes assistant: index, search, ask with citations",
                              description=__doc__)
    sub = p.add_subparsers(dest="memo_command", metavar="ACTION", required=True)

    q = sub.add_parser("index", help="노트 색인 / index notes (incremental)")
    q.add_argument("notes", nargs="*", help="folders or files of notes (.md .txt .pdf .docx .jsonl); "
                                            "with none, the folders indexed before")
    _db_arg(q)
    _units_arg(q, "unit kinds of a new index (default bigram; fixed afterwards)")
    q.add_argument("--rebuild", action="store_true", help="start a new index file (replaces a damaged or foreign one)")
    add_embed_args(q, index=True)
    q.add_argument("--reembed", action="store_true", help="with --embed: drop every vector and embed all chunks "
                                                          "with this (another) model")
    q.add_argument("--no-embed", action="store_true", help="update the lexical index only (new chunks get vectors "
                                                           "on a later run)")
    q.add_argument("--max-mb", type=POSITIVE_NUMBER, default=indexer.MAX_MB,
                   help=f"skip files larger than this (default {indexer.MAX_MB:g} MB)")
    q.add_argument("--watch", action="store_true", help="keep the index current while notes change (Ctrl-C stops)")
    q.add_argument("--poll", type=POSITIVE_NUMBER, metavar="SECONDS",
                   help="with --watch: look for changes every SECONDS instead of file events")
    q.add_argument("-v", "--verbose", action="store_true", help="one line per file indexed or skipped")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_guarded(run_index))

    q = sub.add_parser("status", help="파일별 상태 / per-file state: indexed, changed, new, deleted, skipped")
    _db_arg(q)
    q.add_argument("--all", action="store_true", help="list indexed files too (default: only the others)")
    q.set_defaults(func=_guarded(run_status))

    q = sub.add_parser("search", help="검색 / ranked chunks with file:line")
    q.add_argument("query")
    _db_arg(q)
    q.add_argument("-k", type=POSITIVE_INT, default=5, help="how many chunks (default 5)")
    _units_arg(q, "unit kinds to search with (default: all the index has, fused)")
    add_embed_args(q)
    q.add_argument("--json", action="store_true", help="one JSON object")
    q.set_defaults(func=_guarded(run_search))

    q = sub.add_parser("ask", help="질문 / answer from the notes with numbered citations [1] → file, heading, lines")
    q.add_argument("question")
    _db_arg(q)
    add_backend_args(q)
    _grounding_args(q)
    q.set_defaults(func=_guarded(run_ask))

    q = sub.add_parser("summarize", help="요약 / summarise a note, a folder of them, or those changed since a date")
    q.add_argument("path", nargs="?", help="an indexed file or folder")
    q.add_argument("--since", metavar="YYYY-MM-DD", help="the notes modified on or after this day")
    _db_arg(q)
    add_backend_args(q)
    add_device_args(q)
    add_sampling_args(q)
    q.set_defaults(func=_guarded(run_summarize))

    from krmini.apps.memo import evaluate

    evaluate.register(sub)


def _retrieval_args(q: argparse.ArgumentParser, k_flag: str) -> None:
    q.add_argument(k_flag, type=POSITIVE_INT, default=4, help="chunks to retrieve (default 4)")
    q.add_argument("--min-coverage", type=SHARE, default=MIN_COVERAGE,
                   help=f"answer only when the best chunk holds this share of the question (default {MIN_COVERAGE})")
    _units_arg(q, "unit kinds to search with (default: all the index has)")
    add_embed_args(q)


def _grounding_args(q: argparse.ArgumentParser) -> None:
    _retrieval_args(q, "-k")
    add_device_args(q)
    add_sampling_args(q)


def add_chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memo", metavar="DB", help="메모 색인으로 /memo 질문 / adds `/memo QUESTION`, a turn answered "
                   "from this memo index (`krmini memo index`) with its sources; the options below search it")
    _retrieval_args(p, "--memo-k")


def chat_commands(args, stack: ExitStack) -> dict:
    """`krmini chat --memo DB`'s /memo, on the index kept open (in `stack`) for the REPL's life; none without --memo."""
    if args.memo is None:
        return {}
    db = Path(args.memo)
    if db.is_dir():
        raise KrminiError(f"--memo {db}: is a directory; expected the memo index file (krmini memo index NOTES --db FILE)")
    try:
        store = stack.enter_context(Store.open(db))
        searcher = open_searcher(store, args)
    except sqlite3.Error as exc:
        raise damaged(db, exc) from None
    command = memo_command(searcher, args.memo_k, args.min_coverage)

    def guarded(session, question: str) -> None:
        try:
            command(session, question)
        except sqlite3.Error as exc:
            raise damaged(db, exc) from None
    return {"/memo": ("QUESTION 메모를 근거로 답하기 (answer from the notes)", guarded)}


def _sampling(args) -> SamplingConfig:
    sampling = sampling_from_args(args)
    sampling.validate()
    return sampling


def run_ask(args) -> int:
    sampling = _sampling(args)
    with Store.open(args.db) as store:
        results = open_searcher(store, args).search(args.question, args.k)
    hits = choose(results.hits, args.min_coverage)
    if not hits:
        print(f"{results.describe()}; 0 sources")
        print(refusal(results.hits, args.min_coverage))
        return 0
    backend = open_backend(args)
    print(f"{results.describe()}; {len(hits)} sources; backend {backend.name} (context {backend.context})")
    stream_answer(backend, args.question, hits, sampling)
    return 0


def _selected(store: Store, path: str | None, since: str | None) -> list:
    sql = ("SELECT k.id, f.path, f.root, k.heading, k.line_start, k.line_end, k.page, k.note_id, k.text "
           "FROM chunks k JOIN files f ON f.id = k.file WHERE f.state = 'indexed' AND ")
    if path is not None:
        target = str(Path(path).absolute())
        rows = store.conn.execute(sql + "(f.path = ? OR substr(f.path, 1, ?) = ?) ORDER BY f.path, k.ord",
                                  (target, len(target) + 1, target + "/")).fetchall()
        if not rows:
            raise KrminiError(f"{path}: no indexed note there (folders: {', '.join(store.roots()) or 'none'}); "
                              f"run `krmini memo index` first")
        return rows
    try:
        day = datetime.date.fromisoformat(since)
    except ValueError:
        raise KrminiError(f"--since: expected a date YYYY-MM-DD, got {since!r}") from None
    start = datetime.datetime.combine(day, datetime.time()).timestamp()
    rows = store.conn.execute(sql + "f.mtime_ns / 1e9 >= ? ORDER BY f.path, k.ord", (start,)).fetchall()
    if not rows:
        raise KrminiError(f"--since {since}: no indexed note was modified on or after that day")
    return rows


def run_summarize(args) -> int:
    if (args.path is None) == (args.since is None):
        raise KrminiError("summarize: give a PATH or --since YYYY-MM-DD (one of them)")
    sampling = _sampling(args)
    with Store.open(args.db) as store:
        hits = list(iter_hits(_selected(store, args.path, args.since)))
    backend = open_backend(args)
    print(f"{len({h.path for h in hits})} notes, {len(hits)} chunks; backend {backend.name} (context {backend.context})")
    summarize(backend, hits, sampling)
    return 0


def _report(summary: indexer.Summary, store: Store, kinds: tuple[str, ...]) -> None:
    print(f"memo index ({'+'.join(kinds)} units) → {store.path}: {summary.line()}")
    for old, new in summary.renamed:
        print(f"  renamed {old} → {new}")


def run_index(args) -> int:
    indexer.check_notes(args.notes)  # before the index file is made: a mistyped folder creates nothing
    with Store.open(args.db, create=True, rebuild=args.rebuild) as store:
        kinds = indexer.configure(store, args.units)
        if not indexer.add_roots(store, args.notes):
            raise KrminiError(f"{args.db}: no notes to index; give folders or files: "
                              f"krmini memo index NOTES --db {args.db}")
        _index_and_watch(args, store, kinds, _index_embedder(args, store))
    return 0


def _index_embedder(args, store: Store) -> Embedder | None:
    """The embedder this run embeds new chunks with: --embed, else the index's own (reopened), else none."""
    if args.no_embed:
        if args.embed or args.reembed:
            raise KrminiError("--no-embed: not with --embed or --reembed")
        return None
    if args.reembed and not args.embed:
        raise KrminiError("--reembed: name the model to embed with: --embed st:MODEL|openai:URL")
    identity = vectors.stored_identity(store)
    if args.embed is None and identity is None:
        return None
    hint = f"this index embeds its new chunks with {identity}; --no-embed updates the lexical index only"
    embedder = open_asked_or_stored(args, identity, hint if args.embed is None else None)
    vectors.configure(store, embedder, args.reembed)
    return embedder


def _embed(args, store: Store, embedder: Embedder | None) -> None:
    if embedder is None:
        return
    try:
        done = vectors.embed_missing(store, embedder, progress=not args.quiet)
    except KrminiError as exc:
        have, chunks = vectors.counts(store)
        raise KrminiError(f"{exc}; the lexical index is up to date and {have} of {chunks} chunks have vectors "
                          "(the next `krmini memo index` embeds the rest)") from None
    print(f"memo embed → {store.path}: {done.line()}")


def _index_and_watch(args, store: Store, kinds: tuple[str, ...], embedder: Embedder | None) -> None:
    log = print if args.verbose else None
    summary = indexer.index(store, kinds, args.max_mb, progress=not args.quiet, log=log)
    _report(summary, store, kinds)
    _embed(args, store, embedder)
    if args.watch:
        print(f"watching {', '.join(store.roots())} ({f'every {args.poll:g} s' if args.poll else 'file events'}); "
              "Ctrl-C stops", flush=True)
        stop = threading.Event()
        try:
            indexer.watch(store, kinds, lambda s: (_report(s, store, kinds), _embed(args, store, embedder),
                                                   sys.stdout.flush()), stop, args.poll, args.max_mb)
        except KeyboardInterrupt:
            stop.set()
            print("stopped watching")


def run_status(args) -> int:
    with Store.open(args.db) as store:
        _print_status(store, args.all)
    return 0


def _print_status(store: Store, everything: bool) -> None:
    states = indexer.status(store)
    counts = {s: sum(1 for f in states if f.state == s) for s in indexer.STATES}
    units = store.get("units") or "bigram"
    print(f"{store.path} ({units} units): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    print("folders: " + (", ".join(store.roots()) or "(none)"))
    identity, (have, chunks) = vectors.stored_identity(store), vectors.counts(store)
    print("vectors: " + (f"{have} of {chunks} chunks, {identity}" if identity else
                         "none (lexical search only; `krmini memo index --embed st:MODEL|openai:URL` adds them)"))
    for f in states:
        if f.state == "indexed" and not everything and not f.reason:
            continue
        detail = f"{f.notes} notes, {f.chunks} chunks" if f.state == "indexed" else ""
        if f.reason:
            detail = f"{detail}; {f.reason}" if detail else f.reason
        print(f"  {f.state:<8} {indexer.display(f.path, f.root)}" + (f"  ({detail})" if detail else ""))


def run_search(args) -> int:
    with Store.open(args.db) as store:
        results = open_searcher(store, args).search(args.query, args.k)
    if args.json:
        print(json.dumps({"mode": results.mode, "units": "+".join(results.kinds), "embedder": results.embedder,
                          "reranker": results.reranker, "chunks": results.chunks, "vectors": results.vectors,
                          "hits": [{"where": h.where, "path": h.path, "heading": h.heading, "line_start": h.line_start,
                                    "line_end": h.line_end, "page": h.page, "note_id": h.note_id,
                                    "score": round(h.score, 4), "coverage": round(h.coverage, 3), "text": h.text}
                                   for h in results.hits]}, ensure_ascii=False))
        return 0
    print(f"{results.describe()} — {len(results.hits)} of {results.chunks} chunks")
    for i, h in enumerate(results.hits, 1):
        print(f"[{i}] {h.where}  {h.heading}  (score {h.score:.3f}, {h.coverage:.0%} of the query)")
        snippet = " ".join(h.text.split())
        print(f"    {snippet[:200]}{'…' if len(snippet) > 200 else ''}")
    if not results.hits:
        print("(no chunk shares a unit with the query)")
    return 0

"""`krmini memo eval`: how often the note that answers a question is found, and how high.

Notes are a JSONL file of {id, title, text}; questions a JSONL file of {question, paragraph_id}, where
`paragraph_id` is the `id` of the one note that answers it (KorQuAD's dev set in ../shared/data/eval
is this shape). The notes are indexed into a temporary index (or `--db`), every question is searched,
and its gold note's rank among the distinct notes returned gives recall@1, @5, @10 and MRR@10.
With `--embed` the notes are embedded too, and `--mode` (default: hybrid then) picks what is measured.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from krmini.apps.memo import indexer, vectors
from krmini.apps.memo.embed import Embedder, add_embed_args, open_embedder
from krmini.apps.memo.search import Searcher, open_searcher
from krmini.apps.memo.store import Store
from krmini.apps.memo.units import parse_kinds
from krmini.argtypes import POSITIVE_INT
from krmini.errors import KrminiError

DEFAULT_NOTES = "../shared/data/eval/heldout_wiki_korquad1_dev_contexts.jsonl"
DEFAULT_QUESTIONS = "../shared/data/eval/retrieval_korquad1_dev_questions.jsonl"
CUTOFFS = (1, 5, 10)


def read_questions(path: Path, limit: int | None = None) -> list[tuple[str, str]]:
    if not path.is_file():
        raise KrminiError(f"{path}: questions file not found (pass --questions)")
    out = []
    with open(path, encoding="utf-8") as fh:
        for no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KrminiError(f"{path}:{no}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("question", "paragraph_id")):
                raise KrminiError(f"{path}:{no}: expected an object with string fields 'question' and 'paragraph_id'")
            out.append((record["question"], record["paragraph_id"]))
            if limit and len(out) >= limit:
                break
    if not out:
        raise KrminiError(f"{path}: no questions")
    return out


def evaluate(searcher: Searcher, questions: list[tuple[str, str]]) -> dict:
    """Recall@1/5/10 and MRR@10 over notes (a note split into several chunks counts once)."""
    known = {row[0] for row in searcher.store.conn.execute("SELECT DISTINCT note_id FROM chunks")}
    ranks, seconds, results = [], [], None
    for no, (question, gold) in enumerate(questions, 1):
        if gold not in known:
            raise KrminiError(f"question {no}: paragraph_id {gold!r} is not the id of any indexed note")
        start = time.perf_counter()
        results = searcher.search(question, k=3 * max(CUTOFFS))
        hits = results.hits
        seconds.append(time.perf_counter() - start)
        notes: list[str] = []
        for hit in hits:
            if hit.note_id not in notes:
                notes.append(hit.note_id)
        ranks.append(notes.index(gold) if gold in notes else None)
    n = len(ranks)
    result = {f"recall@{k}": round(sum(r is not None and r < k for r in ranks) / n, 4) for k in CUTOFFS}
    result["mrr@10"] = round(sum(1 / (r + 1) for r in ranks if r is not None and r < 10) / n, 4)
    seconds.sort()
    result.update(mode=results.mode, units="+".join(searcher.kinds), embedder=results.embedder,
                  reranker=results.reranker, described=results.describe(), questions=n,
                  ms_p50=round(1000 * seconds[n // 2], 2), ms_p95=round(1000 * seconds[min(n - 1, int(0.95 * n))], 2))
    return result


def _embed(store: Store, args) -> tuple[Embedder | None, vectors.Embedded | None]:
    """With --embed, every chunk of the fresh index gets its vector."""
    if not args.embed:
        return None, None
    embedder = open_embedder(args.embed, args.embed_model, args.embed_api_key)
    vectors.configure(store, embedder)
    return embedder, vectors.embed_missing(store, embedder, progress=not args.json)


def register(sub) -> None:
    q = sub.add_parser("eval", help="검색 평가 / retrieval recall@k and MRR on a question set", description=__doc__)
    q.add_argument("--notes", default=DEFAULT_NOTES, help=f"notes JSONL {{id, title, text}} (default: {DEFAULT_NOTES})")
    q.add_argument("--questions", default=DEFAULT_QUESTIONS,
                   help=f"questions JSONL {{question, paragraph_id}} (default: {DEFAULT_QUESTIONS})")
    q.add_argument("--units", default="bigram", help="bigram, kiwi or bigram+kiwi (default bigram)")
    add_embed_args(q, index=False)
    q.add_argument("--limit", type=POSITIVE_INT, help="only the first N questions")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=run)


def run(args) -> int:
    notes = Path(args.notes)
    if not notes.is_file():
        raise KrminiError(f"{notes}: notes file not found (pass --notes)")
    kinds = parse_kinds(args.units)
    if args.mode in ("dense", "hybrid") and not args.embed:
        raise KrminiError(f"--mode {args.mode}: name the embedder the notes are embedded with: "
                          "--embed st:MODEL|openai:URL")
    questions = read_questions(Path(args.questions), args.limit)
    with tempfile.TemporaryDirectory(prefix="krmini-memo-eval-") as tmp:
        store = Store.open(Path(tmp) / "eval.db", create=True)
        try:
            indexer.configure(store, "+".join(kinds))
            indexer.add_roots(store, [str(notes)])
            summary = indexer.index(store, kinds, progress=not args.json)
            embedder, embedded = _embed(store, args)
            result = evaluate(open_searcher(store, args, embedder), questions)
        finally:
            store.close()
    result.update(notes=summary.notes, chunks=summary.chunks, index_seconds=round(summary.seconds, 2))
    if embedded is not None:
        result.update(embed_seconds=round(embedded.seconds, 2))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"memo eval: {result['questions']} questions over {summary.notes} notes ({summary.chunks} chunks), "
          f"{result['described']}")
    print("  " + "  ".join(f"recall@{k} {result[f'recall@{k}']:.4f}" for k in CUTOFFS) + f"  MRR@10 {result['mrr@10']:.4f}")
    print(f"  query p50 {result['ms_p50']} ms, p95 {result['ms_p95']} ms; indexed in {result['index_seconds']} s"
          + (f", embedded in {result['embed_seconds']} s" if embedded is not None else ""))
    return 0

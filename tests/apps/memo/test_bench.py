"""`krmini bench memo` on a small corpus: the figures it reports and the edit it checks."""

from __future__ import annotations

import json

from krmini.apps.memo.bench import run_benchmark, synthetic_notes


def test_bench_memo_on_a_small_corpus(tmp_path):
    corpus = tmp_path / "prose.jsonl"
    with open(corpus, "w", encoding="utf-8") as fh:
        for i in range(80):
            text = "\n".join(f"{i}번 문서의 {j}번째 문단: 회의에서 예산과 일정을 {i + j}번 다시 논의했다." * 3 for j in range(6))
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    notes = synthetic_notes([str(corpus)], 60)
    assert len(notes) == 60 and all(600 <= len(n) <= 2600 for n in notes)
    r = run_benchmark([str(corpus)], n_notes=60, n_queries=30, repeats=2, units="bigram", edit_of=40)
    assert (r["notes"], r["queries"], r["edit_of"], r["edit_repeats"], r["mode"], r["units"]) == (
        60, 30, 40, 2, "lexical", "bigram")
    assert r["chunks"] >= 60 and r["notes_per_s"] > 0 and 0 < r["query_p50_ms"] <= r["query_p95_ms"]
    assert 0 < r["edit_median_s"] <= r["edit_max_s"] and 0 <= r["span_found_first"] <= 1

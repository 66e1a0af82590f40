"""Dense vectors and hybrid search: incremental embedding, truthful mode lines, fusion, one-line refusals.

A fake embedder (hashed character bigrams) drives the logic; sentence-transformers models built in the
test (conftest `st_models`) and our own server's /v1/embeddings drive the CLI end to end."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import numpy as np
import pytest

from krmini.apps.memo import vectors
from krmini.apps.memo.embed import Identity, OpenAIEmbedder
from krmini.apps.memo.search import Searcher, fuse
from krmini.apps.memo.store import SCHEMA_VERSION, Store
from krmini.cli import main
from krmini.errors import KrminiError
from tests.apps.memo.conftest import MEETING, open_index, reindex


class Fake:
    """Character bigrams hashed into 64 numbers, unit length; remembers the passages it embedded."""

    def __init__(self, name: str = "fake", dim: int = 64):
        self.identity = Identity("st", name, dim, f"st:{name}")
        self.passages: list[str] = []

    def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        if not query:
            self.passages += texts
        rows = np.zeros((len(texts), self.identity.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for a, b in zip(text, text[1:], strict=False):
                rows[i, hashlib.blake2b((a + b).encode(), digest_size=2).digest()[0] % self.identity.dim] += 1
        rows[:, 0] += 1e-3  # no zero row
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def embedded(tmp_path, notes):
    store, kinds = open_index(tmp_path / "m.db", [notes])
    reindex(store, kinds)
    fake = Fake()
    vectors.configure(store, fake)
    return store, kinds, fake


def orphans(store: Store) -> int:
    return store.conn.execute("SELECT count(*) FROM vectors WHERE chunk NOT IN (SELECT id FROM chunks)").fetchone()[0]


def test_only_new_and_changed_chunks_are_embedded(notes_dir, tmp_path):
    store, kinds, fake = embedded(tmp_path, notes_dir)
    first = vectors.embed_missing(store, fake, progress=False)
    assert (first.embedded, first.with_vectors, first.chunks) == (5, 5, 5)
    assert vectors.embed_missing(store, fake, progress=False).embedded == 0  # nothing new
    fake.passages.clear()
    (notes_dir / "회의/3월.md").write_text(MEETING.replace("5월 둘째 주", "6월 첫째 주"), encoding="utf-8")
    reindex(store, kinds)
    again = vectors.embed_missing(store, fake, progress=False)
    assert (again.embedded, again.with_vectors) == (1, 5)  # the 일정 section only; 예산 kept its vector
    assert fake.passages == ["3월 > 3월 회의 > 일정\n신제품 출시는 6월 첫째 주로 미뤘다."]
    (notes_dir / "독서.md").unlink()
    (notes_dir / "여행.md").rename(notes_dir / "제주.md")  # its heading path (the title) changes with the name
    fake.passages.clear()
    reindex(store, kinds)
    assert vectors.counts(store) == (3, 4) and orphans(store) == 0
    assert vectors.embed_missing(store, fake, progress=False).embedded == 1
    assert fake.passages[0].startswith("제주 > 제주 여행\n")
    assert vectors.counts(store) == (4, 4) and orphans(store) == 0


def test_one_edited_record_of_a_jsonl_file_is_all_that_is_embedded_again(tmp_path):
    path = tmp_path / "notes" / "wiki.jsonl"
    path.parent.mkdir()
    records = [{"id": str(i), "title": f"문서 {i}", "text": f"{i}번째 문단은 서울의 역사 {i}를 다룬다."} for i in range(30)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    store, kinds, fake = embedded(tmp_path, path.parent)
    assert vectors.embed_missing(store, fake, progress=False).embedded == 30
    records[7]["text"] = "일곱째 문단은 고쳐 썼다."
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    reindex(store, kinds)
    fake.passages.clear()
    assert vectors.embed_missing(store, fake, progress=False).embedded == 1
    assert fake.passages == ["문서 7\n일곱째 문단은 고쳐 썼다."] and orphans(store) == 0


def test_mode_lines_say_what_ran(notes_dir, tmp_path):
    store, kinds, fake = embedded(tmp_path, notes_dir)
    with pytest.raises(KrminiError, match="has no vectors; embed its chunks with"):
        Searcher(store, mode="dense", embedder=fake)
    vectors.embed_missing(store, fake, progress=False)
    assert Searcher(store).search("예산", 1).describe() == "mode: lexical (bigram)"
    dense = Searcher(store, mode="dense", embedder=fake).search("제주 여행\n숙소는 서귀포의 바다 앞 펜션으로 잡았다.", 2)
    assert dense.describe() == "mode: dense (st:fake, 64-dim)"
    assert dense.hits[0].where == "notes/여행.md:3-5" and dense.hits[0].score > dense.hits[1].score
    hybrid = Searcher(store, embedder=fake).search("마케팅 예산은?", 3)
    assert hybrid.mode == "hybrid"
    assert hybrid.describe() == "mode: hybrid (bigram + st:fake, 64-dim; score fusion, dense weight 0.25)"
    assert hybrid.hits[0].where == "notes/회의/3월.md:5-6"
    lexical = Searcher(store).search("마케팅 예산은?", 5).hits
    unweighted = Searcher(store, embedder=fake, dense_weight=0.0).search("마케팅 예산은?", 5).hits
    assert [h.chunk_id for h in unweighted][:len(lexical)] == [h.chunk_id for h in lexical]
    (notes_dir / "새.md").write_text("# 새 노트\n\n아직 벡터가 없다.\n", encoding="utf-8")
    reindex(store, kinds)  # indexed, not embedded: the line says so
    partial = Searcher(store, embedder=fake).search("새 노트", 1)
    assert partial.describe() == ("mode: hybrid (bigram + st:fake, 64-dim; score fusion, dense weight 0.25; "
                                  "5 of 6 chunks have vectors)")
    assert partial.hits[0].where == "notes/새.md:3"  # found by its words, which the dense list cannot
    with pytest.raises(KrminiError, match=r"--mode dense: needs an embedder \(the index's is st:fake \(64-dim\)\)"):
        Searcher(store, mode="dense")


def test_another_model_is_refused_in_one_line(notes_dir, tmp_path):
    store, _, fake = embedded(tmp_path, notes_dir)
    vectors.embed_missing(store, fake, progress=False)
    for other in (Fake("other"), Fake("fake", dim=32)):
        with pytest.raises(KrminiError) as err:
            Searcher(store, embedder=other)
        assert len(str(err.value).splitlines()) == 1 and "this index's vectors come from st:fake (64-dim)" in str(err.value)
    vectors.configure(store, Fake("other"), reembed=True)
    assert vectors.counts(store) == (0, 5) and vectors.stored_identity(store).name == "other"


def test_fusion_adds_the_lists_and_keeps_single_list_order():
    lexical = [(1, 9.0), (2, 6.0), (3, 3.0)]
    dense = [(3, 0.9), (4, 0.8), (1, 0.5)]  # min-max scaled: 1, 0.75, 0
    assert [c for c, _ in fuse(lexical, dense, 0.5)] == [1, 3, 2, 4]  # 1 + 0; 1/3 + 0.5; 2/3; 0.5 · 0.75
    fused = fuse(lexical, dense)  # weight 0.25: 1; 2/3; 1/3 + 0.25; 0.1875
    assert [(c, round(s, 4)) for c, s in fused] == [(1, 1.0), (2, 0.6667), (3, 0.5833), (4, 0.1875)]
    assert [c for c, _ in fuse(lexical, [])] == [1, 2, 3] and [c for c, _ in fuse([], dense)] == [3, 4, 1]
    assert fuse([], []) == []


def test_an_index_of_schema_1_is_upgraded_and_keeps_working(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    reindex(store, kinds)
    store.conn.execute("DROP TABLE vectors")
    store.conn.execute("PRAGMA user_version = 1")
    store.close()
    with Store.open(tmp_path / "m.db") as old:
        assert old.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert vectors.counts(old) == (0, 5) and Searcher(old).search("예산", 1).hits
    sqlite3.connect(tmp_path / "m.db").execute("PRAGMA user_version = 3")
    with pytest.raises(KrminiError, match="memo index of schema 3, this krmini reads 2"):
        Store.open(tmp_path / "m.db")


def run(capsys, *argv) -> tuple[int, list[str], list[str]]:
    capsys.readouterr()
    code = main(["memo", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.strip().splitlines()


def test_cli_with_a_sentence_transformers_model(notes_dir, tmp_path, capsys, st_models):
    embed, rerank = st_models
    db = tmp_path / "m.db"
    code, out, _ = run(capsys, "index", notes_dir, "--db", db, "--embed", f"st:{embed}", "--quiet")
    assert code == 0 and out[1].startswith(f"memo embed → {db}: embedded 5 chunks with st:{embed} (32-dim) in ")
    assert out[1].endswith("5 of 5 chunks have vectors")
    (notes_dir / "장보기.txt").write_text("장보기 목록\n\n사과와 귤을 산다.\n\n김치찌개 재료: 돼지고기, 두부, 김치.\n",
                                       encoding="utf-8")
    code, out, _ = run(capsys, "index", "--db", db, "--quiet")  # the index's embedder, reopened
    assert code == 0 and "embedded 1 chunks with" in out[1]
    code, out, _ = run(capsys, "status", "--db", db)
    assert out[2] == f"vectors: 5 of 5 chunks, st:{embed} (32-dim)"
    code, out, _ = run(capsys, "search", "마케팅 예산은?", "--db", db, "-k", "1")
    assert out[0] == f"mode: hybrid (bigram + st:{embed}, 32-dim; score fusion, dense weight 0.25) — 1 of 5 chunks"
    assert out[1].startswith("[1] notes/회의/3월.md:5-6")
    code, out, _ = run(capsys, "search", "마케팅 예산은?", "--db", db, "-k", "1", "--dense-weight", "1.5")
    assert out[0] == f"mode: hybrid (bigram + st:{embed}, 32-dim; score fusion, dense weight 1.5) — 1 of 5 chunks"
    code, out, _ = run(capsys, "search", "마케팅 예산은?", "--db", db, "--mode", "dense", "--json")
    found = json.loads(out[0])
    assert (found["mode"], found["embedder"], found["vectors"], len(found["hits"])) == ("dense", f"st:{embed}, 32-dim",
                                                                                       5, 5)
    code, out, _ = run(capsys, "search", "마케팅 예산은?", "--db", db, "--rerank", f"st:{rerank}", "-k", "2")
    assert out[0] == (f"mode: hybrid (bigram + st:{embed}, 32-dim; score fusion, dense weight 0.25; reranked top 20 "
                      f"by st:{rerank}) — 2 of 5 chunks")
    other = tmp_path / "other"
    shutil.copytree(embed, other)
    code, _, err = run(capsys, "search", "예산", "--db", db, "--embed", f"st:{other}")
    assert code == 1 and len(err) == 1 and f"this index's vectors come from st:{embed} (32-dim)" in err[0]
    shutil.rmtree(embed.parent / "gone", ignore_errors=True)
    moved = embed.parent / "gone"
    embed.rename(moved)  # the index's model is no longer there: no quiet lexical search
    try:
        code, _, err = run(capsys, "search", "예산", "--db", db)
        assert code == 1 and len(err) == 1 and "cannot load a sentence-transformers model" in err[0]
        assert err[0].endswith("(this index has vectors, so search is hybrid: --mode lexical searches without them)")
        code, out, _ = run(capsys, "search", "예산", "--db", db, "--mode", "lexical", "-k", "1")
        assert code == 0 and out[0] == "mode: lexical (bigram) — 1 of 5 chunks"
        code, _, err = run(capsys, "index", "--db", db, "--quiet")
        assert code == 1 and len(err) == 1 and err[0].endswith("--no-embed updates the lexical index only)")
        assert run(capsys, "index", "--db", db, "--quiet", "--no-embed")[0] == 0
    finally:
        moved.rename(embed)


@pytest.mark.parametrize(("argv", "message"), [
    (("--embed", "bert:x"), "--embed: expected st:PATH_OR_NAME or openai:URL, got 'bert:x'"),
    (("--embed", "openai:ftp://x"), "--embed openai:ftp://x: expected an http:// or https:// URL"),
    (("--embed", "openai:http://127.0.0.1:9"), "http://127.0.0.1:9/v1/models: cannot connect"),
    (("--embed", "st:/no/such/model"), "--embed st:/no/such/model: cannot load a sentence-transformers model"),
    (("--reembed",), "--reembed: name the model to embed with"),
    (("--no-embed", "--embed", "st:x"), "--no-embed: not with --embed or --reembed"),
    (("--embed-model", "m", "--embed", "st:x"), "--embed-model: only with --embed openai:URL"),
])
def test_bad_embedder_options_are_one_line(notes_dir, tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "index", notes_dir, "--db", tmp_path / "m.db", "--quiet", *argv)
    assert code == 1 and len(err) == 1 and message in err[0], err


def test_the_openai_embedder_against_our_server(notes_dir, tmp_path, capsys, chat_server):
    db, url, key = tmp_path / "m.db", chat_server.url, chat_server.key
    code, out, _ = run(capsys, "index", notes_dir, "--db", db, "--embed", f"openai:{url}", "--embed-api-key", key,
                       "--quiet")
    assert code == 0 and "embedded 5 chunks with openai:krmini-test (192-dim)" in out[1], out
    served = OpenAIEmbedder(url, api_key=key)
    with Store.open(db) as store:
        row = store.conn.execute("SELECT k.heading, k.text, v.vec FROM chunks k JOIN vectors v ON v.chunk = k.id "
                                 "ORDER BY k.id LIMIT 1").fetchone()
    assert np.allclose(np.frombuffer(row[2], dtype="<f4"), served.embed([vectors.passage(row[0], row[1])])[0],
                       atol=1e-6)
    code, out, _ = run(capsys, "search", "마케팅 예산은?", "--db", db, "--embed-api-key", key, "-k", "1")
    assert out[0] == ("mode: hybrid (bigram + openai:krmini-test, 192-dim; score fusion, dense weight 0.25) "
                      "— 1 of 5 chunks")
    code, _, err = run(capsys, "search", "예산", "--db", db, "--mode", "dense")  # no key
    assert code == 1 and err == [f"krmini: error: {url}/v1/embeddings: HTTP 401 missing or incorrect API key "
                                 "(Authorization: Bearer KEY)"]


def test_eval_measures_the_modes(tmp_path, capsys, st_models):
    notes, questions = tmp_path / "notes.jsonl", tmp_path / "q.jsonl"
    texts = {"a": ("예산", "올해 마케팅 예산은 1,200만 원이다."), "b": ("여행", "한라산 성판악 코스를 오른다."),
             "c": ("장보기", "사과와 우유를 산다.")}
    notes.write_text("".join(json.dumps({"id": i, "title": t, "text": x}, ensure_ascii=False) + "\n"
                             for i, (t, x) in texts.items()), encoding="utf-8")
    questions.write_text("".join(json.dumps({"question": q, "paragraph_id": i}, ensure_ascii=False) + "\n" for q, i in
                                 (("마케팅 예산은?", "a"), ("어느 코스를 오르나?", "b"), ("무엇을 사나?", "c"))),
                         encoding="utf-8")
    for mode in ("dense", "hybrid"):
        code, out, _ = run(capsys, "eval", "--notes", notes, "--questions", questions, "--embed", f"st:{st_models[0]}",
                           "--mode", mode, "--json")
        result = json.loads(out[0])
        assert code == 0 and result["mode"] == mode and result["embedder"] == f"st:{st_models[0]}, 32-dim"
        assert {"recall@1", "recall@5", "recall@10", "mrr@10"} <= set(result) and result["recall@5"] == 1.0
    code, out, _ = run(capsys, "eval", "--notes", notes, "--questions", questions, "--json")
    assert json.loads(out[0])["mode"] == "lexical"
    code, _, err = run(capsys, "eval", "--notes", notes, "--questions", questions, "--mode", "dense")
    assert code == 1 and err == ["krmini: error: --mode dense: name the embedder the notes are embedded with: "
                                 "--embed st:MODEL|openai:URL"]

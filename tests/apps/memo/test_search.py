"""Korean-first retrieval: units, ranking on a small Korean folder, citations, eval figures, the CLI."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from krmini.apps.memo.evaluate import evaluate
from krmini.apps.memo.search import Searcher
from krmini.apps.memo.units import bigrams, kiwi_available
from krmini.cli import main
from tests.apps.memo.conftest import MEETING, open_index, reindex, top, write_notes
from tests.conftest import shared_file


def test_bigram_units_strip_particles_and_interrogatives():
    assert bigrams("임종석이 시위를 주도했다") == ["임종", "종석", "시위", "주도", "도했", "했다",
                                           "임종석 시위", "시위 주도했다"]
    assert bigrams("임종석은 언제 지명수배 되었나?", query=True)[:5] == ["임종", "종석", "지명", "명수", "수배"]
    assert "언제" not in bigrams("임종석은 언제", query=True) and "언제" in bigrams("임종석은 언제")
    assert bigrams("나이 가위") == ["나이", "가위", "나이 가위"]  # two syllables: nothing stripped
    assert bigrams(unicodedata.normalize("NFD", "한글 메모")) == bigrams("한글 메모")  # NFC first
    assert bigrams("iPhone 15의 가격") == ["iphone", "15", "의", "가격", "iphone 15", "15 의", "의 가격"]


@pytest.fixture
def indexed(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    reindex(store, kinds)
    return store


@pytest.mark.parametrize(("question", "note", "lines"), [
    ("마케팅 예산이 얼마로 정해졌어?", "3월.md", (5, 6)),  # 예산은 in the note, 예산이 in the question
    ("신제품은 언제 출시하나요?", "3월.md", (10, 10)),
    ("임종석이 쓴 책", "독서.md", (3, 3)),  # 임종석의 in the note
    ("한라산은 어느 코스로 올라가?", "여행.md", (3, 5)),
    ("찌개에 넣을 두부", "장보기.txt", (1, 5)),
])
def test_korean_questions_find_the_note_and_its_lines(indexed, question, note, lines):
    hit = top(indexed, question, k=1)[0]
    assert (Path(hit.path).name, (hit.line_start, hit.line_end)) == (note, lines)


def test_citation_lines_hold_the_cited_text(indexed, notes_dir):
    for hit in top(indexed, "예산 일정 출시", k=5):
        lines = Path(hit.path).read_text(encoding="utf-8").splitlines()[hit.line_start - 1:hit.line_end]
        assert " ".join(lines).split() == hit.text.split()
    hit = top(indexed, "마케팅 예산", k=1)[0]
    assert (hit.where, hit.heading) == ("notes/회의/3월.md:5-6", "3월 > 3월 회의 > 예산")
    assert MEETING.splitlines()[4] == "올해 마케팅 예산은 1,200만 원으로 확정했다."


def test_coverage_says_how_much_of_the_question_a_hit_holds(indexed):
    full = top(indexed, "마케팅 예산", k=1)[0]
    assert full.coverage == pytest.approx(1.0)
    partial = top(indexed, "마케팅 예산 양자역학 초전도체", k=1)[0]
    assert 0.1 < partial.coverage < 0.6
    assert top(indexed, "양자역학 초전도체") == []


def write_eval_set(tmp_path: Path) -> tuple[Path, Path]:
    notes = [{"id": "a", "title": "서울", "text": "서울은 대한민국의 수도이며 한강이 흐른다."},
             {"id": "b", "title": "부산", "text": "부산은 대한민국 제2의 도시로 해운대 해수욕장이 유명하다."},
             {"id": "c", "title": "제주", "text": "제주도는 한라산과 올레길로 알려진 섬이다."}]
    questions = [{"question": "대한민국의 수도는?", "paragraph_id": "a"},
                 {"question": "해운대 해수욕장이 있는 도시는?", "paragraph_id": "b"},
                 {"question": "올레길로 유명한 섬은?", "paragraph_id": "c"},
                 {"question": "대한민국의 수도에 흐르는 강은?", "paragraph_id": "b"}]  # wrong gold: 부산 ranks 2nd
    n, q = tmp_path / "notes.jsonl", tmp_path / "questions.jsonl"
    n.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in notes), encoding="utf-8")
    q.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in questions), encoding="utf-8")
    return n, q


def test_eval_figures_on_a_tiny_set(tmp_path, capsys):
    notes, questions = write_eval_set(tmp_path)
    assert main(["memo", "eval", "--notes", str(notes), "--questions", str(questions), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {k: result[k] for k in ("recall@1", "recall@5", "recall@10", "mrr@10", "mode", "units", "questions")} == {
        "recall@1": 0.75, "recall@5": 1.0, "recall@10": 1.0, "mrr@10": 0.875, "mode": "lexical", "units": "bigram",
        "questions": 4}


def test_eval_rejects_bad_questions(tmp_path, capsys):
    notes, _ = write_eval_set(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n', encoding="utf-8")
    assert main(["memo", "eval", "--notes", str(notes), "--questions", str(bad)]) == 1
    assert capsys.readouterr().err.strip() == (f"krmini: error: {bad}:1: expected an object with string fields "
                                               "'question' and 'paragraph_id'")
    bad.write_text('{"question": "x", "paragraph_id": "zzz"}\n', encoding="utf-8")
    assert main(["memo", "eval", "--notes", str(notes), "--questions", str(bad)]) == 1
    assert "paragraph_id 'zzz' is not the id of any indexed note" in capsys.readouterr().err


@pytest.mark.skipif(not kiwi_available(), reason="kiwipiepy not installed")
def test_kiwi_units_fuse_with_bigrams(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "k.db", [notes_dir], units="bigram+kiwi")
    reindex(store, kinds)
    results = Searcher(store).search("마케팅 예산이 얼마야", 1)
    assert results.describe() == "mode: lexical (bigram+kiwi, score fusion)"
    assert Path(results.hits[0].path).name == "3월.md"
    assert Searcher(store, ("kiwi",)).search("한라산 코스", 1).hits[0].where == "notes/여행.md:3-5"


def test_dev_set_recall(tmp_path):
    """The KorQuAD dev paragraphs and the first 500 of their questions (the full set: docs/memo.md)."""
    notes = shared_file("eval/heldout_wiki_korquad1_dev_contexts.jsonl")
    questions = shared_file("eval/retrieval_korquad1_dev_questions.jsonl")
    from krmini.apps.memo.evaluate import read_questions

    store, kinds = open_index(tmp_path / "dev.db", [notes])
    reindex(store, kinds)
    result = evaluate(Searcher(store), read_questions(questions, limit=500))
    assert result["recall@1"] >= 0.93 and result["recall@5"] >= 0.99, result


def test_cli_index_search_status(notes_dir, tmp_path, capsys):
    db = tmp_path / "m.db"
    assert main(["memo", "index", str(notes_dir), "--db", str(db), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"memo index (bigram units) → {db}: 4 new, 0 changed, 0 renamed, 0 deleted, 0 unchanged, "
                          "0 skipped — 4 notes, 5 chunks indexed in")
    assert main(["memo", "search", "마케팅 예산은?", "--db", str(db), "-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "mode: lexical (bigram) — 1 of 5 chunks"
    assert lines[1].startswith("[1] notes/회의/3월.md:5-6  3월 > 3월 회의 > 예산  (score ")
    assert lines[2] == "    올해 마케팅 예산은 1,200만 원으로 확정했다. 집행은 분기별로 나눈다."
    assert main(["memo", "search", "출시", "--db", str(db), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["mode"], found["units"], found["hits"][0]["where"]) == ("lexical", "bigram", "notes/회의/3월.md:10")
    (notes_dir / "독서.md").unlink()
    assert main(["memo", "status", "--db", str(db)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{db} (bigram units): 3 indexed, 0 changed, 0 new, 1 deleted, 0 skipped"
    assert out[2] == "vectors: none (lexical search only; `krmini memo index --embed st:MODEL|openai:URL` adds them)"
    assert out[3:] == ["  deleted  notes/독서.md"]


def test_cli_damaged_index_is_one_line(notes_dir, tmp_path, capsys):
    db = tmp_path / "m.db"
    big = write_notes(tmp_path / "big", {f"{i}.md": f"# 메모 {i}\n\n" + "내용 " * 2000 for i in range(30)})
    assert main(["memo", "index", str(big), "--db", str(db), "--quiet"]) == 0
    data = bytearray(db.read_bytes())
    data[8192:len(data) - 4096] = b"\xa5" * (len(data) - 4096 - 8192)  # pages after the header
    db.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["memo", "search", "메모 내용", "--db", str(db)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"krmini: error: {db}: damaged memo index (")
    assert err[0].endswith(f"rebuild it with `krmini memo index NOTES --db {db} --rebuild`")
    assert main(["memo", "index", str(notes_dir), "--db", str(db), "--rebuild", "--quiet"]) == 0
    assert "4 new" in capsys.readouterr().out

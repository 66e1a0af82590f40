"""Incremental indexing: edit, delete, rename, touch, watch; per-file status; bad files; damaged index files."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from array import array
from pathlib import Path

import pytest

from krmini.apps.memo import indexer
from krmini.apps.memo.chunks import chunk_note
from krmini.apps.memo.readers import read_notes
from krmini.apps.memo.store import Store
from krmini.apps.memo.units import chunk_units
from krmini.errors import KrminiError
from tests.apps.memo.conftest import open_index, reindex, top, write_notes


def consistent(store: Store) -> None:
    """The index agrees with itself: postings are exactly the chunks' term lists, df counts them."""
    c = store.conn
    from_chunks = sorted((t, chunk) for chunk, blob in c.execute("SELECT id, term_keys FROM chunks")
                         for t in array("q", blob))
    assert sorted(c.execute("SELECT term, chunk FROM postings")) == from_chunks
    df = dict(c.execute("SELECT term, count(*) FROM postings GROUP BY term"))
    assert dict(c.execute("SELECT key, df FROM terms")) == df  # no term left with df 0
    assert c.execute("SELECT count(*) FROM chunks WHERE file NOT IN (SELECT id FROM files)").fetchone()[0] == 0
    assert [r[0] for r in c.execute("SELECT chunk FROM lengths ORDER BY chunk")] == [
        r[0] for r in c.execute("SELECT id FROM chunks ORDER BY id")]


def snapshot(store: Store, queries=("마케팅 예산", "한라산 코스", "김치찌개 재료", "회고록")) -> list:
    return [[(Path(h.path).name, h.line_start, h.line_end, round(h.score, 6)) for h in top(store, q)] for q in queries]


def test_first_index_then_nothing_to_do(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    first = reindex(store, kinds)
    assert (first.new, first.changed, first.deleted, first.notes) == (4, 0, 0, 4)
    again = reindex(store, kinds)
    assert (again.new, again.changed, again.unchanged, again.notes) == (0, 0, 4, 0)
    consistent(store)


def test_editing_one_note_reindexes_only_it(notes_dir, tmp_path, monkeypatch):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    reindex(store, kinds)
    before = {p: r.id for p, r in store.files().items()}
    (notes_dir / "여행.md").write_text("# 제주 여행\n\n숙소를 애월의 게스트하우스로 바꿨다.\n", encoding="utf-8")
    read = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or real(self))
    summary = reindex(store, kinds)
    assert (summary.changed, summary.unchanged, summary.notes) == (1, 3, 1) and read == ["여행.md"]
    after = {p: r.id for p, r in store.files().items()}
    assert [p for p in after if after[p] != before[p]] == [str(notes_dir / "여행.md")]
    assert Path(top(store, "애월 게스트하우스")[0].path).name == "여행.md"
    assert not [h for h in top(store, "서귀포 펜션") if Path(h.path).name == "여행.md"]  # old text gone
    consistent(store)


def test_touch_without_edit_reads_but_does_not_reindex(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    reindex(store, kinds)
    ids = {p: r.id for p, r in store.files().items()}
    path = notes_dir / "장보기.txt"
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    summary = reindex(store, kinds)
    assert (summary.changed, summary.unchanged) == (0, 4)
    assert {p: r.id for p, r in store.files().items()} == ids
    assert store.files()[str(path)].mtime_ns == path.stat().st_mtime_ns  # next run does not read it again


def test_delete_and_rename_leave_nothing_stale(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    reindex(store, kinds)
    (notes_dir / "장보기.txt").unlink()
    (notes_dir / "여행.md").rename(notes_dir / "회의" / "제주.md")
    summary = reindex(store, kinds)
    assert (summary.deleted, summary.new, summary.renamed) == (1, 0, [(str(notes_dir / "여행.md"),
                                                                        str(notes_dir / "회의" / "제주.md"))])
    assert top(store, "김치찌개 돼지고기 두부") == []
    [hit] = top(store, "한라산 성판악", k=1)
    assert hit.where == "notes/회의/제주.md:3-5" and hit.heading == "제주 > 제주 여행"
    assert set(store.files()) == {str(notes_dir / "회의" / "3월.md"), str(notes_dir / "회의" / "제주.md"),
                                  str(notes_dir / "독서.md")}
    consistent(store)


def test_after_many_changes_the_index_equals_a_fresh_one(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    reindex(store, kinds)
    (notes_dir / "회의" / "3월.md").write_text("# 3월 회의\n\n## 예산\n\n마케팅 예산은 900만 원으로 줄였다.\n", encoding="utf-8")
    (notes_dir / "독서.md").unlink()
    (notes_dir / "새 메모.md").write_text("# 김치찌개\n\n김치찌개 재료는 묵은지가 좋다.\n", encoding="utf-8")
    reindex(store, kinds)
    fresh, fresh_kinds = open_index(tmp_path / "fresh.db", [notes_dir])
    reindex(fresh, fresh_kinds)
    assert snapshot(store) == snapshot(fresh)
    consistent(store)


def test_status_shows_each_state(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    (notes_dir / "사진.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    reindex(store, kinds)
    (notes_dir / "장보기.txt").write_text("바뀐 목록\n", encoding="utf-8")
    (notes_dir / "독서.md").unlink()
    (notes_dir / "할일.md").write_text("- 보고서 쓰기\n", encoding="utf-8")
    os.utime(notes_dir / "여행.md", ns=(0, 10**9))  # touched only: still indexed
    states = {Path(f.path).name: (f.state, f.reason) for f in indexer.status(store)}
    assert states == {"3월.md": ("indexed", None), "여행.md": ("indexed", None), "장보기.txt": ("changed", None),
                      "독서.md": ("deleted", None), "할일.md": ("new", None),
                      "사진.md": ("skipped", "binary file (NUL bytes)")}


def test_bad_files_are_skipped_and_counted_with_reasons(notes_dir, tmp_path, monkeypatch):
    (notes_dir / "큰파일.txt").write_text("가" * 400_000, encoding="utf-8")  # 1.2 MB
    (notes_dir / "이미지.md").write_bytes(b"\x00\x01\x02\x03")
    (notes_dir / "깨진.pdf").write_bytes(b"%PDF-1.4 not really")
    (notes_dir / "잠김.md").write_text("비밀", encoding="utf-8")
    (notes_dir / "그림.png").write_bytes(b"\x89PNG")  # not a note type: not listed at all
    os.mkfifo(notes_dir / "파이프.md")  # reading it would block forever
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "잠김.md":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    summary = reindex(store, kinds, max_mb=1.0)
    assert dict(summary.skipped) == {"oversized": 1, "binary file": 1, "broken PDF": 1, "unreadable": 1,
                                     "not a regular file": 1}
    assert summary.new == 9 and summary.notes == 4
    reasons = {Path(p).name: r.reason for p, r in store.files().items() if r.state == "skipped"}
    assert reasons["큰파일.txt"] == "oversized (1.2 MB > --max-mb 1)"
    assert reasons["잠김.md"] == "unreadable (Permission denied)"
    assert reasons["깨진.pdf"].startswith("broken PDF (")
    assert "그림.png" not in {Path(p).name for p in store.files()}
    assert reindex(store, kinds, max_mb=1.0).unchanged == 9  # not retried until they change


def test_a_link_out_of_the_folders_is_not_followed(tmp_path):
    secret = tmp_path / "secret.md"
    secret.write_text("비밀번호 1234", encoding="utf-8")
    notes = write_notes(tmp_path / "notes", {"a.md": "메모"})
    (notes / "link.md").symlink_to(secret)
    store, kinds = open_index(tmp_path / "m.db", [notes])
    reindex(store, kinds)
    assert store.files()[str(notes / "link.md")].reason == "link to a file outside the indexed folders"
    assert top(store, "비밀번호") == []


@pytest.mark.parametrize("use_watchfiles", [False, True])
def test_watch_keeps_the_index_current(notes_dir, tmp_path, use_watchfiles):
    if use_watchfiles:
        pytest.importorskip("watchfiles")
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    reindex(store, kinds)
    reports, stop = [], threading.Event()
    thread = threading.Thread(target=indexer.watch, args=(store, kinds, reports.append, stop),
                              kwargs={"poll": None if use_watchfiles else 0.1}, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # the watcher is set up
        (notes_dir / "새 메모.md").write_text("# 독서 모임\n\n다음 모임은 토요일 오후 세 시.\n", encoding="utf-8")
        (notes_dir / "장보기.txt").unlink()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (top(store, "독서 모임 토요일") and not top(store, "김치찌개")):
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert Path(top(store, "독서 모임 토요일")[0].path).name == "새 메모.md" and top(store, "김치찌개") == []
    assert sum(r.new for r in reports) == 1 and sum(r.deleted for r in reports) == 1


def test_damaged_or_foreign_index_files_get_one_line(tmp_path, notes_dir):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"hello, not sqlite at all" * 10)
    with pytest.raises(KrminiError, match=r"garbage.db: not a memo index \(not an SQLite database\); "
                                          r"rebuild it with `krmini memo index NOTES --db .*garbage.db --rebuild`"):
        Store.open(garbage)
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).executescript("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
    with pytest.raises(KrminiError, match="another program's SQLite database, not a memo index; rebuild"):
        Store.open(foreign, create=True)
    store = Store.open(foreign, create=True, rebuild=True)
    assert store.get("units") is None and store.conn.execute("SELECT count(*) FROM files").fetchone()[0] == 0
    with pytest.raises(KrminiError, match="is a directory"):
        Store.open(tmp_path)
    with pytest.raises(KrminiError, match="no memo index here; create it with"):
        Store.open(tmp_path / "missing.db")


def test_units_are_fixed_when_the_index_is_made(tmp_path, notes_dir):
    store, _ = open_index(tmp_path / "m.db", [notes_dir], units="bigram")
    with pytest.raises(KrminiError, match="this index uses --units bigram; to change it pass --rebuild"):
        indexer.configure(store, "bigram+kiwi")
    assert indexer.configure(store, None) == ("bigram",)


def test_an_interrupted_run_leaves_whole_files_and_the_next_run_finishes(notes_dir, tmp_path, monkeypatch):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    reindex(store, kinds)
    for name in ("여행.md", "장보기.txt", "독서.md"):
        path = notes_dir / name
        path.write_text(path.read_text(encoding="utf-8") + "\n덧붙인 줄: 수정됨\n", encoding="utf-8")
    real = indexer.read_notes
    calls = []

    def interrupted(path, data):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(indexer, "read_notes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reindex(store, kinds)
    consistent(store)
    assert not top(store, "덧붙인 수정됨")  # the batch was rolled back whole: no file half-changed
    monkeypatch.setattr(indexer, "read_notes", real)
    assert reindex(store, kinds).changed == 3
    assert {Path(h.path).name for h in top(store, "덧붙인 수정됨", k=5)} == {"여행.md", "장보기.txt", "독서.md"}
    consistent(store)


def test_a_reader_sees_the_index_before_or_after_a_write_never_during(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    reindex(store, kinds)
    reader = Store.open(tmp_path / "m.db")
    path = notes_dir / "새 메모.md"
    path.write_text("# 독서 모임\n\n다음 모임은 토요일.\n", encoding="utf-8")
    chunks = [c for note in read_notes(path, path.read_bytes()) for c in chunk_note(note)]
    units = {"bigram": chunk_units("bigram", [c.heading for c in chunks], [c.text for c in chunks])}

    def names(s):
        return {Path(h.path).name for h in top(s, "모임 토요일")}

    with store.batch():
        store.put(str(path), str(notes_dir), 1, 1, "x", chunks, units, 1)
        assert str(path) in store.files()
        assert str(path) not in reader.files() and names(reader) == set()  # not committed yet
    assert str(path) in reader.files() and names(reader) == {"새 메모.md"}
    consistent(store)
    reader.close()


def test_a_folder_added_above_an_indexed_one_takes_its_files(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir / "회의"])
    reindex(store, kinds)
    assert top(store, "마케팅 예산", k=1)[0].where == "회의/3월.md:5-6"
    indexer.add_roots(store, [str(notes_dir)])
    assert store.roots() == [str(notes_dir)]
    summary = reindex(store, kinds)
    assert (summary.new, summary.unchanged) == (3, 1)  # 3월.md is not read again, only cited from notes/
    assert top(store, "마케팅 예산", k=1)[0].where == "notes/회의/3월.md:5-6"

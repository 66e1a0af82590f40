"""Reading notes (md, txt, pdf, docx, jsonl) and chunking them with heading paths and line ranges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from krmini.apps.memo.chunks import chunk_note
from krmini.apps.memo.readers import Line, Note, Skip, read_notes
from tests.apps.memo.conftest import MEETING


def chunks_of(name: str, data: bytes, max_chars: int = 1500):
    return [c for note in read_notes(Path(name), data) for c in chunk_note(note, max_chars)]


def test_markdown_sections_keep_heading_path_and_lines():
    chunks = chunks_of("3월.md", MEETING.encode())
    assert [(c.heading, c.line_start, c.line_end) for c in chunks] == [
        ("3월 > 3월 회의 > 예산", 5, 6), ("3월 > 3월 회의 > 일정", 10, 10)]
    assert chunks[0].text == "올해 마케팅 예산은 1,200만 원으로 확정했다.\n집행은 분기별로 나눈다."
    lines = MEETING.splitlines()
    for c in chunks:  # the cited lines hold the chunk's text
        assert "\n".join(lines[c.line_start - 1:c.line_end]).split() == c.text.split()


def test_a_heading_inside_a_code_fence_is_text():
    text = "# 설치\n\n```bash\n# 주석입니다\npip install krmini\n```\n"
    [chunk] = chunks_of("a.md", text.encode())
    assert chunk.heading == "a > 설치" and "# 주석입니다" in chunk.text and (chunk.line_start, chunk.line_end) == (3, 6)


def test_paragraphs_pack_up_to_the_limit_and_long_lines_are_cut():
    paragraphs = [f"문단 {i}. " + "가나다라 " * 20 for i in range(6)]  # ~108 chars each
    text = "\n\n".join(paragraphs)
    chunks = chunks_of("a.txt", text.encode(), max_chars=250)
    assert [(c.line_start, c.line_end) for c in chunks] == [(1, 3), (5, 7), (9, 11)]
    assert all(len(c.text) <= 250 for c in chunks)
    long_line = "한 문장입니다. " * 100  # one 900-char line: cut at sentence ends, every piece cites line 1
    pieces = chunks_of("b.txt", long_line.encode(), max_chars=200)
    assert len(pieces) == 5 and {(c.line_start, c.line_end) for c in pieces} == {(1, 1)}
    assert all(len(c.text) <= 200 and c.text.endswith("입니다.") for c in pieces)


def test_a_pdf_chunk_never_spans_pages():
    note = Note("doc", [Line(1, "첫 쪽 내용", page=1), Line(2, "계속", page=1), Line(1, "둘째 쪽", page=2)])
    chunks = chunk_note(note)
    assert [(c.page, c.line_start, c.line_end, c.text) for c in chunks] == [
        (1, 1, 2, "첫 쪽 내용\n계속"), (2, 1, 1, "둘째 쪽")]


def test_text_encodings_and_binary():
    text = "메모: 한글 텍스트\n"
    for data in (text.encode("utf-8"), b"\xef\xbb\xbf" + text.encode("utf-8"), text.encode("cp949")):
        assert chunks_of("a.txt", data)[0].text == "메모: 한글 텍스트"
    with pytest.raises(Skip, match="binary"):
        read_notes(Path("a.md"), b"PK\x03\x04\x00\x00binary")
    with pytest.raises(Skip, match="not UTF-8 or CP949"):
        read_notes(Path("a.md"), b"\xff\xfe\xfa\xfb")
    with pytest.raises(Skip, match="no text"):
        read_notes(Path("a.md"), b"\n  \n")


def test_jsonl_records_are_notes_citing_their_line():
    records = [{"id": "0-0", "title": "임종석", "text": "1989년 2월 15일 지명수배되었다."}, "not an object",
               {"id": 7, "text": "제목 없는 노트"}]
    data = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n{broken\n"
    notes = read_notes(Path("dev.jsonl"), data.encode())
    assert [(n.note_id, n.title, n.lines[0].no) for n in notes] == [("0-0", "임종석", 1), ("7", "", 3)]
    assert notes[0].problems == ["line 2: expected an object with a string field 'text'",
                                 "line 4: not valid JSON (Expecting property name enclosed in double quotes)"]
    chunk = chunk_note(notes[0])[0]
    assert (chunk.heading, chunk.line_start, chunk.line_end, chunk.note_id) == ("임종석", 1, 1, "0-0")
    with pytest.raises(Skip, match="no JSONL record"):
        read_notes(Path("x.jsonl"), b'{"title": "no text"}\n')


def test_docx_headings_paragraph_numbers_and_tables(tmp_path):
    docx = pytest.importorskip("docx")
    document = docx.Document()
    document.add_heading("프로젝트 계획", level=1)
    document.add_paragraph("첫 단계는 자료 조사다.")
    document.add_heading("일정", level=2)
    document.add_paragraph("6월에 시작한다.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "담당", "김철수"
    path = tmp_path / "계획.docx"
    document.save(path)
    chunks = chunks_of(path.name, path.read_bytes())
    assert [(c.heading, c.line_start, c.line_end, c.text) for c in chunks] == [
        ("계획 > 프로젝트 계획", 2, 2, "첫 단계는 자료 조사다."),
        ("계획 > 프로젝트 계획 > 일정", 4, 5, "6월에 시작한다.\n담당 | 김철수")]
    with pytest.raises(Skip, match="broken DOCX"):
        read_notes(Path("bad.docx"), b"PK not really a zip")


def _pdf_with_text(lines_per_page: list[list[str]]) -> bytes:
    """A minimal PDF (Helvetica, ASCII text) with one text line per Td."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", None, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in lines_per_page:
        ops = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({t}) Tj 0 -20 Td" for t in lines) + " ET"
        objects.append(f"<< /Length {len(ops)} >>\nstream\n{ops}\nendstream")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_pdf_pages_and_lines():
    pytest.importorskip("pypdf")
    data = _pdf_with_text([["Budget meeting", "Total 12 million"], ["Launch moved to May"]])
    chunks = chunks_of("report.pdf", data)
    assert [(c.page, c.line_start, c.line_end) for c in chunks] == [(1, 1, 2), (2, 1, 1)]
    assert chunks[0].text.split() == ["Budget", "meeting", "Total", "12", "million"]
    with pytest.raises(Skip, match="broken PDF"):
        read_notes(Path("bad.pdf"), b"%PDF-1.4 garbage")
    with pytest.raises(Skip, match="no text"):
        read_notes(Path("empty.pdf"), _pdf_with_text([[]]))

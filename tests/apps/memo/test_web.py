"""The web page's notes mode, end to end in headless Chromium against `krmini serve RUN --memo DB`:
the answer streams in on the left, the numbered sources with file:lines show beside it, and a click
shows the cited lines read back through the note endpoint."""

from __future__ import annotations

import pytest

from krmini.cli import main
from tests.apps.memo.conftest import MEETING, write_notes
from tests.apps.memo.test_server import BUDGET, NOWHERE, grounded
from tests.conftest import serve_process
from tests.serve.test_web import open_page, playwright, reply


@pytest.fixture(scope="module")
def memo_server(chat_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("memo_web")
    notes = write_notes(base / "notes")
    assert main(["memo", "index", str(notes), "--db", str(base / "m.db"), "--quiet"]) == 0
    with serve_process(chat_run, base, "--memo", str(base / "m.db")) as server:
        server.notes = notes
        yield server


def ask(page, text: str, answers: int) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.locator(".assistant[data-done='true']").nth(answers - 1).wait_for(timeout=60_000)


def test_notes_mode_streams_the_answer_beside_its_sources(memo_server, chat_local):
    sync_api = playwright()
    messages, sources = grounded(chat_local, memo_server.notes, BUDGET)
    want = reply(chat_local, messages)
    with sync_api.sync_playwright() as p:
        browser, page = open_page(p, memo_server)
        try:
            sent = []
            page.on("request", lambda r: sent.append(r.url.split("/", 3)[-1]) if "/v1/" in r.url else None)
            assert page.is_visible("#memobox") and not page.is_visible("#sources")
            page.check("#memo")
            assert page.is_visible("#sources")
            page.evaluate("""() => { window.updates = 0; new MutationObserver((r) => { window.updates += r.length; })
                .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
            ask(page, BUDGET, 1)
            assert sent == ["v1/memo/chat"]
            assert page.inner_text(".assistant") == want and page.evaluate("window.updates") > 2 + 3  # streamed
            wheres = page.locator(".source .where").all_inner_texts()
            assert wheres == [f"[{s.number}] {s.hit.where}" for s in sources]
            assert wheres[0] == "[1] notes/회의/3월.md:5-6"
            assert page.locator(".source .heading").first.inner_text() == "3월 > 3월 회의 > 예산"
            cited = [f"[{s.number}]" in want for s in sources]
            assert [("cited" in c) for c in page.locator(".source").evaluate_all("e => e.map(x => x.className)")] == cited
            page.locator(".source .where").first.click()  # the lines, two more on each side, the cited ones marked
            page.wait_for_selector(".source .lines span")
            assert page.locator(".source .lines span.hit").all_inner_texts() == MEETING.splitlines()[4:6]
            assert page.locator(".source .lines span").evaluate_all("e => e.map(x => x.dataset.no)") == [
                str(n) for n in range(3, 9)]
            assert sent[-1].startswith("v1/memo/note?path=notes%2F")

            ask(page, NOWHERE, 2)  # nothing in the notes: a refusal, no sources
            assert page.locator(".assistant").nth(1).inner_text().startswith("메모에서 이 질문의 답을 찾지 못해")
            assert page.is_visible(".nosource") and page.locator(".source").count() == 0

            page.uncheck("#memo")  # back to plain chat, with the conversation so far
            ask(page, "고마워", 3)
            assert sent[-1] == "v1/chat/completions" and not page.is_visible("#sources")
            assert page.locator(".error").count() == 0
        finally:
            browser.close()

"""The web chat page, end to end in headless Chromium: type Korean, watch the reply stream in."""

from __future__ import annotations

import os
import shutil

import pytest

from krmini.chat.template import prompt_ids, stop_ids
from krmini.cli import build_parser
from krmini.infer.generate import TextStream, generate_ids
from tests.conftest import greedy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def reply(chat_local, messages) -> str:
    stream = TextStream(chat_local.tokenizer)
    ids = generate_ids(chat_local.model, prompt_ids(chat_local.tokenizer, messages), greedy(), stop_ids(chat_local.tokenizer))
    return "".join(stream.push(t) for t in ids) + stream.flush()


def test_serve_binds_loopback_by_default():
    args = build_parser().parse_args(["serve", "runs/x"])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, None)


def test_page_streams_a_korean_conversation(chat_server, chat_local):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    first = [{"role": "user", "content": "안녕하세요"}]
    want1 = reply(chat_local, first)
    second = [*first, {"role": "assistant", "content": want1}, {"role": "user", "content": "고마워"}]
    want2 = reply(chat_local, second)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(chat_server.url + "/")
            assert "krmini 대화" in page.title()
            assert page.is_visible("#apikey")  # the server requires a key, so the page asks for one
            page.fill("#apikey", chat_server.key)
            page.fill("#temperature", "0")
            # count the changes to the conversation: the reply bubble is rewritten once per streamed piece
            page.evaluate("""() => { window.updates = 0; new MutationObserver((r) => { window.updates += r.length; })
                .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
            page.fill("#input", "안녕하세요")
            page.press("#input", "Enter")
            page.wait_for_selector(".assistant[data-done='true']", timeout=60_000)
            assert page.inner_text(".user") == "안녕하세요"
            assert page.inner_text(".assistant") == want1
            assert page.evaluate("window.updates") > 2 + 3  # two new bubbles, then several pieces
            page.fill("#input", "고마워")
            page.press("#input", "Enter")
            page.locator(".assistant[data-done='true']").nth(1).wait_for(timeout=60_000)
            bubbles = page.locator(".msg").all_inner_texts()
            assert bubbles[-4:] == ["안녕하세요", want1, "고마워", want2]  # the history went with the request
        finally:
            browser.close()

"""The web chat page, end to end in headless Chromium: type Korean, watch the reply stream in, and
chat on past the context (the oldest turns drop out with a notice, as in the REPL)."""

from __future__ import annotations

import os
import shutil

import pytest

from krmini.chat.template import fit_history, prompt_budget, prompt_ids, stop_ids
from krmini.cli import build_parser
from krmini.infer.generate import TextStream, generate_ids
from tests.conftest import MAX_TOKENS, greedy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


# about one token a character (5, 49, 109, 84, 84 tokens): with replies of up to 16 tokens, the fourth
# message fits only without both early turns (the second exchange is 53 tokens or more), the fifth only
# without the third
TURNS = ["안녕하세요", "오늘 날씨 어때? 아침에 비가 온다고 들었는데 우산을 챙겨야 할지 잘 모르겠어요.",
         "어제 친구와 함께 한강 공원에 가서 자전거를 타고 돗자리를 펴서 김밥과 과일을 먹었는데, 바람이 시원하고 "
         "하늘이 맑아서 정말 즐거운 하루였어요. 다음 주말에도 다시 가고 싶은데 어떤 준비를 하면 좋을까요?",
         "요즘 회사 일이 너무 많아서 밤늦게까지 일하는 날이 많고, 주말에도 쉬지 못해서 몸도 마음도 많이 "
         "지쳤어요. 건강을 지키면서 일을 잘 해낼 수 있는 방법이 있을까요?",
         "다음 달에 부모님을 모시고 제주도로 여행을 가려고 하는데, 부모님께서 많이 걷기 힘들어하셔서 차로 "
         "편하게 다닐 수 있는 곳과 맛있는 식당을 추천해 주시면 좋겠어요."]


def playwright():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return sync_api


def open_page(p, chat_server):
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page()
    page.goto(chat_server.url + "/")
    page.fill("#apikey", chat_server.key)
    page.fill("#temperature", "0")
    return browser, page


def say(page, text, replies: int) -> None:
    """Type a message, press Enter and wait for reply number `replies` (1-based) to finish."""
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.locator(".assistant[data-done='true']").nth(replies - 1).wait_for(timeout=60_000)


def reply(chat_local, messages) -> str:
    stream = TextStream(chat_local.tokenizer)
    ids = generate_ids(chat_local.model, prompt_ids(chat_local.tokenizer, messages), greedy(), stop_ids(chat_local.tokenizer))
    return "".join(stream.push(t) for t in ids) + stream.flush()


def test_serve_binds_loopback_by_default():
    args = build_parser().parse_args(["serve", "runs/x"])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, None)


def test_page_streams_a_korean_conversation(chat_server, chat_local):
    sync_api = playwright()
    first = [{"role": "user", "content": "안녕하세요"}]
    want1 = reply(chat_local, first)
    second = [*first, {"role": "assistant", "content": want1}, {"role": "user", "content": "고마워"}]
    want2 = reply(chat_local, second)
    with sync_api.sync_playwright() as p:
        browser, page = open_page(p, chat_server)
        try:
            assert "krmini 대화" in page.title()
            assert page.is_visible("#apikey")  # the server requires a key, so the page asks for one
            # count the changes to the conversation: the reply bubble is rewritten once per streamed piece
            page.evaluate("""() => { window.updates = 0; new MutationObserver((r) => { window.updates += r.length; })
                .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
            say(page, "안녕하세요", 1)
            assert page.inner_text(".user") == "안녕하세요"
            assert page.inner_text(".assistant") == want1
            assert page.evaluate("window.updates") > 2 + 3  # two new bubbles, then several pieces
            say(page, "고마워", 2)
            bubbles = page.locator(".msg").all_inner_texts()
            assert bubbles[-4:] == ["안녕하세요", want1, "고마워", want2]  # the history went with the request
        finally:
            browser.close()


def test_page_drops_the_oldest_turns_past_the_context(chat_server, chat_local):
    sync_api = playwright()
    tokenizer = chat_local.tokenizer
    context = chat_local.model.config.max_position_embeddings
    budget = prompt_budget(context, MAX_TOKENS)  # the server's --max-tokens leaves the prompt this much
    with sync_api.sync_playwright() as p:
        browser, page = open_page(p, chat_server)
        try:
            sent = []
            page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
            kept, everything, dropped_turns = [], [], []
            for turn, text in enumerate(TURNS, 1):
                say(page, text, turn)
                user = {"role": "user", "content": text}
                messages, dropped = fit_history(tokenizer, [*kept, user], budget)  # what the REPL would send
                assert sent[-1]["messages"] == messages
                assert len(prompt_ids(tokenizer, messages)) <= budget  # a whole reply's room is left
                want = reply(chat_local, messages)
                assert page.locator(".assistant").nth(turn - 1).inner_text() == want
                if dropped:
                    assert dropped % 2 == 0  # whole exchanges
                    dropped_turns.append(dropped // 2)
                kept = [*messages, {"role": "assistant", "content": want}]
                everything += [user, {"role": "assistant", "content": want}]
            assert len(prompt_ids(tokenizer, everything)) > context + 100  # well past the context
            assert page.locator(".error").count() == 0
            assert dropped_turns == [2, 1]
            assert [n.split(" · ")[0] for n in page.locator(".trimmed").all_inner_texts()] == [
                f"오래된 대화 {n}턴을 덜어냈습니다 (문맥 {context}토큰)" for n in dropped_turns]
            dropped_total = 2 * sum(dropped_turns)  # their bubbles stay, marked as no longer sent
            assert page.locator(".msg.dropped").all_inner_texts() == [m["content"] for m in everything[:dropped_total]]

            # a message that alone is longer than the context: the server's error, and nothing is dropped
            alone = " ".join(TURNS[2:]) * 2
            page.fill("#input", alone)
            page.press("#input", "Enter")
            page.wait_for_selector(".error", timeout=60_000)
            tokens = len(prompt_ids(tokenizer, [{"role": "user", "content": alone}]))
            assert page.inner_text(".error") == (f"오류 / error: the prompt is {tokens} tokens; this model's "
                                                 f"context is {context} tokens")
            assert page.locator(".msg.dropped").count() == dropped_total
            say(page, "고마워", len(TURNS) + 1)  # the conversation goes on from the history it had
            messages, _ = fit_history(tokenizer, [*kept, {"role": "user", "content": "고마워"}], budget)
            assert sent[-1]["messages"] == messages
            assert page.locator(".assistant").nth(len(TURNS)).inner_text() == reply(chat_local, messages)
        finally:
            browser.close()

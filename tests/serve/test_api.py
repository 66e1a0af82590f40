"""The OpenAI-compatible API, driven by the official `openai` client against a live server process."""

from __future__ import annotations

import concurrent.futures
import copy
import queue
import time
from dataclasses import replace

import pytest

from krmini.chat.template import prompt_ids, stop_ids
from krmini.infer.build import build_engine
from krmini.infer.generate import TextStream, generate_ids, stream_text
from krmini.infer.textstream import StopStrings
from krmini.serve.worker import Done, Job, Worker
from tests.conftest import MAX_TOKENS, greedy
from tests.serve.http import call

openai = pytest.importorskip("openai", reason="the openai client is in the dev extra: pip install -e '.[dev]'")

HELLO = [{"role": "user", "content": "안녕하세요"}]


def expected(chat_local, messages, n=MAX_TOKENS) -> tuple[str, int, int]:
    """(greedy reply text, completion tokens, prompt tokens) computed in this process."""
    ids = prompt_ids(chat_local.tokenizer, messages)
    tokens = list(generate_ids(chat_local.model, ids, greedy(n), stop_ids(chat_local.tokenizer)))
    stream = TextStream(chat_local.tokenizer)
    return "".join(stream.push(t) for t in tokens) + stream.flush(), len(tokens), len(ids)


@pytest.fixture(scope="module")
def client(chat_server):
    return openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key=chat_server.key, max_retries=0, timeout=120)


def raw(chat_server, path, body=None, key="default", method=None):
    """(status, parsed JSON or text) without the client's conveniences."""
    method = method or ("GET" if body is None else "POST")
    status, _, parsed = call(chat_server, method, path, body, key=True if key == "default" else key)
    return status, parsed


def test_chat_completion_matches_local_greedy_reply(client, chat_local):
    text, n_completion, n_prompt = expected(chat_local, HELLO)
    assert text
    r = client.chat.completions.create(model="krmini-test", messages=HELLO, temperature=0, max_tokens=MAX_TOKENS)
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("length" if n_completion == MAX_TOKENS else "stop")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, n_completion)
    assert r.usage.total_tokens == n_prompt + n_completion


def test_streaming_chat_equals_non_streaming(client, chat_local, chat_server):
    text, _, n_prompt = expected(chat_local, HELLO)
    chunks = list(client.chat.completions.create(model="krmini-test", messages=HELLO, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1 and "".join(deltas) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.prompt_tokens == n_prompt
    status, body = raw(chat_server, "/v1/chat/completions", {"messages": HELLO, "stream": True, "temperature": 0})
    assert status == 200 and body.rstrip().endswith("data: [DONE]")


def test_multi_turn_n_stop_and_max_tokens(client, chat_local):
    conversation = [{"role": "system", "content": "친절한 비서"}, *HELLO,
                    {"role": "assistant", "content": "안녕하세요! 무엇을 도와드릴까요?"}, {"role": "user", "content": "배고파"}]
    text, _, _ = expected(chat_local, conversation)
    r = client.chat.completions.create(model="krmini-test", messages=conversation, temperature=0)
    assert r.choices[0].message.content == text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    r = client.chat.completions.create(model="krmini-test", messages=conversation, temperature=0, stop=[stop, "없는말"])
    assert r.choices[0].message.content == text[: text.find(stop)] and r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model="krmini-test", messages=conversation, temperature=0, max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2
    r = client.chat.completions.create(model="krmini-test", messages=conversation, temperature=1.0, top_p=0.9, n=3,
                                       seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2] and len({c.message.content for c in r.choices}) > 1


def test_completions_stream_and_not(client, chat_local):
    text = "".join(stream_text(chat_local.model, chat_local.tokenizer, "대한민국은", greedy()))
    r = client.completions.create(model="krmini-test", prompt="대한민국은", temperature=0, max_tokens=MAX_TOKENS)
    assert r.choices[0].text == text and r.object == "text_completion"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="krmini-test", prompt="대한민국은", temperature=0, max_tokens=MAX_TOKENS, stream=True) if c.choices)
    assert streamed == text


def test_models_health_and_api_key(client, chat_server):
    assert [m.id for m in client.models.list().data] == ["krmini-test"]
    assert raw(chat_server, "/health", key=None)[1]["status"] == "ok"
    for key in (None, "wrong"):
        status, body = raw(chat_server, "/v1/models", key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_tokenize_counts_the_prompt_chat_completions_runs(client, chat_server, chat_local):
    """vLLM's /tokenize for a conversation (the web page counts with it): the very ids a chat request's
    prompt has, text parts included, behind the same key."""
    messages = [{"role": "system", "content": "친절한 비서"}, *HELLO,
                {"role": "assistant", "content": [{"type": "text", "text": "안녕하세요!"}]}, {"role": "user", "content": "고마워"}]
    plain = [{**m, "content": "안녕하세요!"} if m["role"] == "assistant" else m for m in messages]
    ids = prompt_ids(chat_local.tokenizer, plain)
    status, body = raw(chat_server, "/tokenize", {"messages": messages})
    assert status == 200 and body == {"count": len(ids), "max_model_len": 256, "tokens": ids}
    r = client.chat.completions.create(model="krmini-test", messages=messages, temperature=0, max_tokens=1)
    assert r.usage.prompt_tokens == len(ids)
    assert raw(chat_server, "/tokenize", {"messages": HELLO}, key=None)[0] == 401
    assert raw(chat_server, "/tokenize", {"messages": []})[0] == 400


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"messages": HELLO, "temperature": 5}, 400, "temperature"),
    ({"messages": HELLO, "top_p": 0}, 400, "top_p"),
    ({"messages": HELLO, "n": 100}, 400, "n"),
    ({"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"messages": [{"role": "user", "content": "가나다라 " * 400}]}, 400, "messages"),
    ({"messages": HELLO, "model": "gpt-4"}, 404, "model"),
    (b"{not json", 400, None),
    ({"prompt": ""}, 400, "prompt"),
    ({"messages": HELLO, "seed": 2**64}, 400, "seed"),  # raised inside the shared batch once (HTTP 500 for all)
    ({"messages": HELLO, "seed": -1}, 400, "seed"),
])
def test_invalid_requests_get_openai_errors(chat_server, body, status, param):
    path = "/v1/completions" if isinstance(body, dict) and "prompt" in body else "/v1/chat/completions"
    got, payload = raw(chat_server, path, body)
    assert got == status, payload
    assert set(payload["error"]) >= {"message", "type"} and payload["error"]["message"]
    if param:
        assert payload["error"]["param"] == param


def test_a_top_p_below_fp32s_smallest_number_keeps_the_most_likely_token(chat_server, chat_local):
    got, payload = raw(chat_server, "/v1/chat/completions",
                       {"messages": HELLO, "top_p": 1e-300, "seed": 2**64 - 1, "max_tokens": 4})
    assert got == 200, payload
    assert payload["choices"][0]["message"]["content"] == expected(chat_local, HELLO, 4)[0]  # greedy


def test_sixteen_concurrent_streaming_clients(client, chat_local):
    questions = ["안녕하세요", "오늘 날씨 어때?", "배고파", "고마워", "심심해", "잘 자", "힘들어", "뭐 해?"] * 2
    want = [expected(chat_local, [{"role": "user", "content": q}])[0] for q in questions]

    def ask(q: str) -> tuple[str, float]:
        start = time.perf_counter()
        stream = client.chat.completions.create(model="krmini-test", messages=[{"role": "user", "content": q}],
                                                temperature=0, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return text, time.perf_counter() - start

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, questions))
    elapsed = time.perf_counter() - start
    assert [t for t, _ in results] == want
    print(f"16 concurrent streaming clients: all correct in {elapsed:.2f}s "
          f"(slowest {max(s for _, s in results):.2f}s)")


def test_stop_strings_hold_back_possible_prefixes():
    stops = StopStrings(("끝!", "END"))
    assert stops.feed("안녕 E") == ("안녕 ", False)
    assert stops.feed("N") == ("", False)
    assert stops.feed("X 끝") == ("ENX ", False)
    assert stops.feed("!뒤") == ("", True)
    assert StopStrings(()).feed("그대로") == ("그대로", False)


def test_worker_survives_a_failing_batch(chat_local):
    engine = build_engine(copy.deepcopy(chat_local), stop_ids=stop_ids(chat_local.tokenizer))
    worker = Worker(engine)
    events: queue.Queue = queue.Queue()
    ids = prompt_ids(chat_local.tokenizer, HELLO)
    vocab = chat_local.model.config.vocab_size
    worker.submit(Job([vocab + 5], greedy(), lambda s, e: events.put(e)))  # an id past the vocabulary: fails inside
    done = [events.get(timeout=60)]
    worker.submit(Job(ids, greedy(4), lambda s, e: events.put(e)))  # the next batch is served as usual
    while len(done) < 2:
        event = events.get(timeout=60)
        if isinstance(event, Done):
            done.append(event)
    worker.close()
    assert done[0].finish_reason == "error" and done[0].internal
    assert done[1].error is None and 1 <= done[1].completion_tokens <= 4


def test_n_choices_share_one_prefill(chat_local, monkeypatch):
    """A request with n choices is one job of n rows: one prefill for all of them."""
    engine = build_engine(copy.deepcopy(chat_local), stop_ids=stop_ids(chat_local.tokenizer))
    ids = engine.prepare(prompt_ids(chat_local.tokenizer, HELLO), greedy(3))
    prefills = []
    forward = type(engine.model).forward
    monkeypatch.setattr(type(engine.model), "forward", lambda self, x, **kw: prefills.append(x.shape) or
                        forward(self, x, **kw))
    worker = Worker(engine)
    events: queue.Queue = queue.Queue()
    worker.submit(Job(ids, replace(greedy(3), n=3), lambda s, e: events.put((s, e))))
    dones = {}
    while len(dones) < 3:
        sample, event = events.get(timeout=60)
        if isinstance(event, Done):
            dones[sample] = event
    worker.close()
    assert sorted(dones) == [0, 1, 2] and all(d.error is None for d in dones.values())
    assert [shape for shape in prefills if shape[1] > 1] == [(1, len(ids))]  # one prompt row, not three

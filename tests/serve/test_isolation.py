"""Requests never share their fate: a request that fails inside the engine fails alone, and a stream
whose client leaves stops being decoded at once (the server in this process, to poison and watch it)."""

from __future__ import annotations

import concurrent.futures
import copy
import http.client
import json
import queue
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import replace

import pytest

from krmini.chat.template import prompt_ids, stop_ids
from krmini.infer import engine as engine_module
from krmini.infer.build import build_engine
from krmini.infer.sampling import SamplingConfig
from krmini.serve.worker import Done, Job, Worker
from tests.conftest import free_port, greedy

uvicorn = pytest.importorskip("uvicorn", reason="the server needs the serve extra: pip install -e '.[serve]'")

POISON_SEED = 4242  # a request with this seed raises inside sampling (the test's stand-in for a bug)
KEY = "k"


@pytest.fixture
def poisoned_sampling(monkeypatch):
    real = engine_module.sample_next

    def sample_next(logits, cfg, generator):
        if cfg.seed == POISON_SEED:
            raise RuntimeError("poisoned request")
        return real(logits, cfg, generator)

    monkeypatch.setattr(engine_module, "sample_next", sample_next)


def sampled(seed: int, n: int = 12) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, temperature=0.9, top_k=0, top_p=0.95, seed=seed)


def test_a_failing_request_ends_alone_in_its_batch(chat_local, poisoned_sampling):
    engine = build_engine(copy.deepcopy(chat_local), stop_ids=stop_ids(chat_local.tokenizer))
    prompts = ["대한민국의 수도는", "오늘 날씨가", "고양이는", "서울에서 부산까지"]
    good = [(engine.prepare(p, sampled(i)), sampled(i)) for i, p in enumerate(prompts)]
    alone = [engine.generate_batch([(ids, cfg)])[0] for ids, cfg in good]
    poison = (engine.prepare("안녕", replace(sampled(POISON_SEED), n=2)), replace(sampled(POISON_SEED), n=2))
    together = engine.generate_batch([good[0], good[1], poison, good[2], good[3]])
    assert [c.texts for c in together[:2] + together[3:]] == [c.texts for c in alone]  # untouched by it
    assert all(c.error is None and "error" not in c.finish_reasons for c in alone)
    assert together[2].finish_reasons == ["error", "error"] and str(together[2].error) == "poisoned request"
    with pytest.raises(RuntimeError, match="poisoned request"):  # a single stream raises its own failure
        list(engine.stream("안녕", sampled(POISON_SEED)))


def test_worker_fails_only_the_poisoned_job(chat_local, poisoned_sampling, caplog):
    engine = build_engine(copy.deepcopy(chat_local), stop_ids=stop_ids(chat_local.tokenizer))
    worker = Worker(engine)
    events: queue.Queue = queue.Queue()
    jobs = [Job(engine.prepare(p, cfg), cfg, lambda s, e, j=j: events.put((j, e)))
            for j, (p, cfg) in enumerate([("고양이는", sampled(1)), ("안녕", sampled(POISON_SEED)),
                                          ("오늘 날씨가", greedy(8)), ("서울은", sampled(2))])]
    worker._run(jobs)  # one batch, run here: the four share every decode step
    worker.close()
    dones = {}
    while not events.empty():
        j, event = events.get()
        if isinstance(event, Done):
            dones[j] = event
    assert sorted(dones) == [0, 1, 2, 3]
    assert dones[1].finish_reason == "error" and dones[1].internal and dones[1].error == "internal server error"
    assert [(dones[j].error, dones[j].finish_reason in ("stop", "length")) for j in (0, 2, 3)] == [(None, True)] * 3
    assert "one request failed inside the engine: RuntimeError: poisoned request" in caplog.text  # logged


@contextmanager
def live_server(engine):
    """Our app over `engine` under uvicorn in a thread of this process, with API key "k"."""
    from krmini.serve.api import create_app

    worker = Worker(engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(worker, "t", KEY, 16), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port, worker
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        worker.close()


def post(port: int, body: dict) -> tuple[int, dict | str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    if body.get("stream"):
        return response.status, text
    return response.status, json.loads(text)


def streamed_text(sse: str) -> tuple[str, list[dict]]:
    chunks = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))
    return text, [c for c in chunks if "error" in c]


@pytest.mark.parametrize("stream", [False, True])
def test_one_poisoned_request_among_four_good_concurrent_ones(chat_local, poisoned_sampling, stream):
    engine = build_engine(copy.deepcopy(chat_local), stop_ids=stop_ids(chat_local.tokenizer))
    questions = ["안녕하세요", "고마워", "오늘 뭐 해?", "잘 자"]
    want = []
    for q in questions:
        ids = engine.prepare(prompt_ids(chat_local.tokenizer, [{"role": "user", "content": q}]), greedy(16))
        want.append(engine.generate_batch([(ids, greedy(16))])[0].texts[0])
    bodies = [{"messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": 16, "stream": stream}
              for q in questions]
    bodies.insert(2, {"messages": [{"role": "user", "content": "안녕"}], "temperature": 0.8, "seed": POISON_SEED,
                      "max_tokens": 16, "stream": stream})
    batches = []
    run = Worker._run

    def recording(self, jobs):
        batches.append(len(jobs))
        return run(self, jobs)

    with live_server(engine) as (port, _), pytest.MonkeyPatch.context() as mp:
        mp.setattr(Worker, "_run", recording)
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda b: post(port, b), bodies))
    poisoned = answers.pop(2)
    if stream:  # the status line went out before the failure: the stream carries an error event
        assert poisoned[0] == 200 and streamed_text(poisoned[1])[1][0]["error"]["message"] == "internal server error"
        assert [(status, *streamed_text(text)) for status, text in answers] == [(200, w, []) for w in want]
    else:
        assert poisoned == (500, {"error": {"message": "internal server error", "type": "server_error",
                                            "param": None, "code": None}})
        assert [(s, a["choices"][0]["message"]["content"]) for s, a in answers] == [(200, w) for w in want]
    assert sum(batches) == 5


def test_streams_stop_decoding_when_their_client_leaves(chat_local):
    """20 clients each leave after the first chunk of a 200-token stream (no stop id can end it): the
    worker drops each within a few decode steps, and the next request is served at its usual speed."""
    never = {chat_local.model.config.vocab_size}  # a stop id no token has: every stream runs to its end
    engine = build_engine(copy.deepcopy(chat_local), stop_ids=never)
    tokens_per_batch = []
    stream_prepared = engine.stream_prepared

    def counting(requests, cancelled=None):
        tokens_per_batch.append(0)
        for event in stream_prepared(requests, cancelled):
            tokens_per_batch[-1] += event.token_id is not None
            yield event

    engine.stream_prepared = counting
    small = {"messages": [{"role": "user", "content": "안녕"}], "temperature": 0, "max_tokens": 8}
    long = {"messages": [{"role": "user", "content": "이야기 하나 해 줘"}], "temperature": 0, "max_tokens": 200,
            "stream": True}
    with live_server(engine) as (port, worker):

        def latency() -> float:
            start = time.perf_counter()
            assert post(port, small)[0] == 200
            return time.perf_counter() - start

        usual = [latency() for _ in range(5)]
        start = time.perf_counter()
        assert post(port, long)[0] == 200
        full = time.perf_counter() - start
        assert tokens_per_batch[-1] == 200
        after, dropped = [], []
        for _ in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/v1/chat/completions", json.dumps(long),
                         {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
            response = conn.getresponse()
            line = response.readline()
            while b'"content": ""' in line or b'"content"' not in line:  # up to the first piece of text
                line = response.readline()
            conn.sock.close()  # the client leaves
            conn.close()
            deadline = time.monotonic() + 10
            while worker.running:
                assert time.monotonic() < deadline, "the abandoned stream was still decoded after 10 s"
                time.sleep(0.001)
            dropped.append(tokens_per_batch[-1])
            after.append(latency())
    print(f"\nlatency of an 8-token reply: usual median {statistics.median(usual) * 1e3:.0f} ms; right after a "
          f"disconnect median {statistics.median(after) * 1e3:.0f} ms, max {max(after) * 1e3:.0f} ms; one full "
          f"200-token stream {full * 1e3:.0f} ms; tokens decoded before each drop: {sorted(dropped)}")
    assert max(dropped) < 100  # far from the 200 of a stream left running
    assert statistics.median(after) < 3 * statistics.median(usual) + 0.05

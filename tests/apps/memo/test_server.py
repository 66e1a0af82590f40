"""`krmini serve --memo`: search and grounded chat over the notes on the chat server, behind its API
key, and a note endpoint that never reads outside the indexed folders (the app in this process)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time

import pytest

from krmini.apps.memo.ask import MIN_COVERAGE, answer_messages, choose, fit_sources
from krmini.apps.memo.indexer import display
from krmini.apps.memo.search import Searcher
from krmini.apps.memo.server import extension
from krmini.apps.memo.store import Store
from krmini.chat.template import prompt_budget, prompt_ids, stop_ids
from krmini.cli import main
from krmini.infer.build import build_engine
from krmini.serve.api import create_app
from krmini.serve.worker import Done, Worker
from tests.apps.memo.conftest import MEETING, open_index, reindex, write_notes
from tests.conftest import MAX_TOKENS
from tests.serve.test_web import reply

testclient = pytest.importorskip("fastapi.testclient", reason="needs httpx (the dev extra)")

KEY = "memo-key"
SECRET = "금고 비밀번호는 4821이다"
BUDGET = "마케팅 예산은 얼마로 확정했어?"
NOWHERE = "양자역학 초전도체"


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    base = tmp_path_factory.mktemp("memo_serve")
    root = write_notes(base / "notes")
    (base / "secret.txt").write_text(SECRET + "\n", encoding="utf-8")  # beside the notes, never served
    (root / "link.md").symlink_to(base / "secret.txt")  # indexed as skipped: a link out of the folders
    (root / "swapped.md").write_text("# 교체\n\n색인한 뒤 밖으로 가는 링크로 바뀌는 메모.\n", encoding="utf-8")
    store, kinds = open_index(base / "m.db", [root])
    reindex(store, kinds)
    store.close()
    return root


@pytest.fixture(scope="module")
def served(chat_local, notes):
    """(client with the key, the worker): the memo routes over the chat model, the key required."""
    worker = Worker(build_engine(copy.deepcopy(chat_local), stop_ids=stop_ids(chat_local.tokenizer)))
    app = create_app(worker, "krmini-test", KEY, MAX_TOKENS, [extension(notes.parent / "m.db")])
    with testclient.TestClient(app, raise_server_exceptions=False,
                               headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client, worker
    worker.close()


@pytest.fixture
def client(served):
    return served[0]


@pytest.fixture
def submitted(served, monkeypatch):
    """The jobs handed to the worker during a test."""
    worker, jobs = served[1], []
    real = worker.submit
    monkeypatch.setattr(worker, "submit", lambda job: (jobs.append(job), real(job))[1])
    return jobs


def searched(notes, query: str, k: int):
    """What the Searcher finds in the index of `notes` (beside them, m.db)."""
    with Store.open(notes.parent / "m.db") as store:
        return Searcher(store).search(query, k)


def grounded(chat_local, notes, question: str, prefix=()):
    """The prompt `memo ask` builds for the served model, and its sources."""
    hits = choose(searched(notes, question, 4).hits, MIN_COVERAGE)
    context = chat_local.model.config.max_position_embeddings

    def count(messages):
        return len(prompt_ids(chat_local.tokenizer, messages))

    return fit_sources(count, prompt_budget(context, MAX_TOKENS), answer_messages(question, list(prefix)), hits)


def events(text: str) -> list:
    return [e if e == "[DONE]" else json.loads(e) for e in
            (block.removeprefix("data: ") for block in text.split("\n\n") if block.startswith("data: "))]


@pytest.mark.parametrize("query", [BUDGET, "제주 숙소", "김치찌개 재료", NOWHERE])
def test_search_answers_what_the_searcher_finds(client, notes, query):
    r = client.post("/v1/memo/search", json={"query": query, "k": 3})
    assert r.status_code == 200, r.text
    want = searched(notes, query, 3)
    body = r.json()
    assert (body["mode"], body["units"], body["chunks"]) == ("lexical", "bigram", want.chunks)
    assert [(h["n"], h["where"], h["path"], h["heading"], h["line_start"], h["line_end"], h["text"]) for h in body["hits"]] == [
        (n, h.where, display(h.path, h.root), h.heading, h.line_start, h.line_end, h.text) for n, h in enumerate(want.hits, 1)]
    assert [(h["score"], h["coverage"]) for h in body["hits"]] == [(round(h.score, 4), round(h.coverage, 3)) for h in want.hits]
    assert str(notes) not in r.text  # paths are the cited form, never the server's own


def test_chat_answers_from_the_notes_through_the_worker(client, chat_local, notes, submitted):
    messages, sources = grounded(chat_local, notes, BUDGET)
    want = reply(chat_local, messages)
    r = client.post("/v1/memo/chat", json={"messages": [{"role": "user", "content": BUDGET}], "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == want
    assert len(submitted) == 1 and submitted[0].prompt_ids == prompt_ids(chat_local.tokenizer, messages)
    assert body["usage"]["prompt_tokens"] == len(submitted[0].prompt_ids)
    got = body["sources"]
    assert [(s["number"], s["where"], s["heading"], s["text"]) for s in got] == [
        (s.number, s.hit.where, s.hit.heading, s.text) for s in sources]
    assert got[0]["where"] == "notes/회의/3월.md:5-6" and got[0]["heading"] == "3월 > 3월 회의 > 예산"
    lines = MEETING.splitlines()[got[0]["line_start"] - 1:got[0]["line_end"]]
    assert lines == ["올해 마케팅 예산은 1,200만 원으로 확정했다.", "집행은 분기별로 나눈다."]
    assert body["retrieval"]["refused"] is False and body["retrieval"]["best"]["where"] == got[0]["where"]


def test_a_conversation_is_kept_before_the_grounded_question(client, chat_local, notes):
    before = [{"role": "system", "content": "친절한 비서"}, {"role": "user", "content": "안녕"},
              {"role": "assistant", "content": "안녕하세요"}]
    messages, _ = grounded(chat_local, notes, "신제품 출시는 언제야?", before)
    r = client.post("/v1/memo/chat", json={"messages": [*before, {"role": "user", "content": "신제품 출시는 언제야?"}],
                                           "temperature": 0})
    assert r.json()["choices"][0]["message"]["content"] == reply(chat_local, messages)
    assert r.json()["sources"][0]["where"] == "notes/회의/3월.md:10"


def test_citations_in_the_answer_mark_their_sources(client, served, monkeypatch):
    worker = served[1]

    def answer(job):  # the worker's events for a model that cites [1]
        for piece in ("1,200만 원으로 ", "확정했습니다 [1]."):
            job.emit(0, piece)
        job.emit(0, Done("stop", 5))

    monkeypatch.setattr(worker, "submit", answer)
    body = {"messages": [{"role": "user", "content": "마케팅 예산과 신제품 출시 일정은?"}], "k": 4}
    sources = client.post("/v1/memo/chat", json=body).json()["sources"]
    assert len(sources) > 1 and [s["cited"] for s in sources] == [True] + [False] * (len(sources) - 1)
    stream = events(client.post("/v1/memo/chat", json={**body, "stream": True}).text)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in stream[:-2] if e["choices"])
    assert text == "1,200만 원으로 확정했습니다 [1]." and stream[-1] == "[DONE]"
    assert stream[-2]["object"] == "memo.sources" and stream[-2]["sources"] == sources


def test_streaming_chat_ends_with_its_sources(client, chat_local, notes):
    messages, sources = grounded(chat_local, notes, BUDGET)
    r = client.post("/v1/memo/chat", json={"messages": [{"role": "user", "content": BUDGET}], "temperature": 0,
                                           "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    stream = events(r.text)
    deltas = [e["choices"][0]["delta"].get("content") for e in stream[:-2] if e.get("choices")]
    assert len([d for d in deltas if d]) > 1 and "".join(d or "" for d in deltas) == reply(chat_local, messages)
    assert stream[-3]["usage"]["prompt_tokens"] == len(prompt_ids(chat_local.tokenizer, messages))
    last = stream[-2]
    assert last["object"] == "memo.sources" and last["id"] == stream[0]["id"] and stream[-1] == "[DONE]"
    assert [s["where"] for s in last["sources"]] == [s.hit.where for s in sources]


@pytest.mark.parametrize("stream", [False, True])
def test_no_model_runs_when_the_notes_do_not_answer(client, submitted, stream):
    r = client.post("/v1/memo/chat", json={"messages": [{"role": "user", "content": NOWHERE}], "stream": stream})
    assert r.status_code == 200 and submitted == []
    if stream:
        stream_events = events(r.text)
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in stream_events[:-2])
        extra = stream_events[-2]
    else:
        body = r.json()
        text, extra = body["choices"][0]["message"]["content"], body
        assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert text.startswith("메모에서 이 질문의 답을 찾지 못해 답하지 않습니다") and "--min-coverage 50%" in text
    assert extra["sources"] == [] and extra["retrieval"]["refused"] is True
    strict = client.post("/v1/memo/chat", json={"messages": [{"role": "user", "content": BUDGET}], "min_coverage": 1})
    assert strict.json()["retrieval"]["refused"] is True and submitted == []  # a stricter threshold refuses it too
    other = client.post("/v1/memo/chat", json={"messages": [{"role": "user", "content": NOWHERE}], "model": "gpt-4"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"


def test_notes_need_the_key(served):
    app = served[0].app
    with testclient.TestClient(app, raise_server_exceptions=False) as bare:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            for method, path, body in [("POST", "/v1/memo/search", {"query": "예산"}),
                                       ("POST", "/v1/memo/chat", {"messages": [{"role": "user", "content": BUDGET}]}),
                                       ("GET", "/v1/memo/note?path=notes/장보기.txt", None)]:
                r = bare.request(method, path, json=body, headers=headers)
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, headers)
                assert "예산" not in r.text and "사과" not in r.text
        page = bare.get("/").text
        assert 'const features = ["memo"];' in page and "1,200" not in page


def test_the_note_endpoint_gives_the_cited_lines(client, notes):
    r = client.get("/v1/memo/note", params={"path": "notes/회의/3월.md", "start": 1, "end": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["path"], body["start"], body["end"], body["page"], body["changed"]) == ("notes/회의/3월.md", 1, 6, None, False)
    assert [(line["no"], line["level"], line["text"]) for line in body["lines"]] == [
        (1, 1, "3월 회의"), (2, 0, ""), (3, 2, "예산"), (4, 0, ""), (5, 0, "올해 마케팅 예산은 1,200만 원으로 확정했다."),
        (6, 0, "집행은 분기별로 나눈다.")]
    whole = client.get("/v1/memo/note", params={"path": "notes/장보기.txt"}).json()
    assert [line["text"] for line in whole["lines"]] == (notes / "장보기.txt").read_text(encoding="utf-8").splitlines()
    assert whole["end"] == 500


TRAVERSALS = [
    ("../secret.txt", 400), ("notes/../secret.txt", 400), ("notes/../../secret.txt", 400),
    ("%2e%2e%2fsecret.txt", 400), ("notes%2f..%2f..%2fsecret.txt", 400), ("notes/./장보기.txt", 400),
    ("notes//장보기.txt", 400), ("/etc/passwd", 400), ("%2fetc%2fpasswd", 400), ("notes/장보기.txt%00.md", 400),
    ("%00", 400), ("", 400), ("%252e%252e%252fsecret.txt", 404), ("..%5csecret.txt", 404), ("notes/link.md", 404),
    ("secret.txt", 404), ("m.db", 404), ("notes", 404), ("notes/회의", 404), ("notes/없는.md", 404),
    ("memo_serve0/secret.txt", 404),
]


@pytest.mark.parametrize(("raw", "status"), TRAVERSALS)
def test_nothing_outside_the_indexed_notes_is_read(client, raw, status):
    r = client.get(f"/v1/memo/note?path={raw}")
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == "path" and "4821" not in r.text


def test_absolute_paths_and_links_swapped_in_later_are_refused(client, notes):
    r = client.get("/v1/memo/note", params={"path": str(notes / "장보기.txt")})
    assert r.status_code == 400 and "absolute" in r.json()["error"]["message"]
    assert client.get("/v1/memo/note", params={"path": "notes/swapped.md"}).status_code == 200
    (notes / "swapped.md").unlink()
    (notes / "swapped.md").symlink_to(notes.parent / "secret.txt")  # after indexing: the index still lists it
    r = client.get("/v1/memo/note", params={"path": "notes/swapped.md"})
    assert r.status_code == 404 and "4821" not in r.text


@pytest.mark.parametrize(("path", "body", "message", "param"), [
    ("/v1/memo/search", {"query": ""}, "query: expected a non-empty string", "query"),
    ("/v1/memo/search", {"query": "예산", "k": 0}, "k: expected a value >= 1, got 0", "k"),
    ("/v1/memo/search", {"query": "예산", "k": 51}, "k: expected a value <= 50, got 51", "k"),
    ("/v1/memo/search", {"query": "예산", "k": "3"}, 'k: expected an integer, got "3"', "k"),
    ("/v1/memo/chat", {"messages": [{"role": "user", "content": BUDGET}], "min_coverage": 1.5},
     "min_coverage: expected a value <= 1, got 1.5", "min_coverage"),
    ("/v1/memo/chat", {"messages": [{"role": "user", "content": BUDGET}], "n": 2}, "n: expected a value <= 1, got 2", "n"),
    ("/v1/memo/chat", {"messages": [{"role": "user", "content": BUDGET}, {"role": "assistant", "content": "네"}]},
     "messages: expected the question last (a message of role user), got assistant", "messages"),
    ("/v1/memo/note?path=notes/장보기.txt&start=0", None, 'start: expected a value >= 1, got "0"', "start"),
    ("/v1/memo/note?path=notes/장보기.txt&start=5&end=3", None, "end: expected a value >= start (5), got 3", "end"),
    ("/v1/memo/note?path=notes/장보기.txt&end=501", None, "end: expected at most 500 lines from start, got 501", "end"),
    ("/v1/memo/note?start=1", None, "path: Field required", "path"),
])
def test_bad_requests_are_worded_as_the_cli_words_them(client, path, body, message, param):
    r = client.post(path, json=body) if body is not None else client.get(path)
    assert (r.status_code, r.json()["error"]["message"], r.json()["error"]["param"]) == (400, message, param)


def test_a_question_that_cannot_fit_the_context_says_so(client, chat_local):
    r = client.post("/v1/memo/chat", json={"messages": [{"role": "user", "content": "마케팅 예산 " * 60}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    context = chat_local.model.config.max_position_embeddings
    assert f"this model's {context}-token context leaves {prompt_budget(context, MAX_TOKENS)} for the prompt" in (
        r.json()["error"]["message"])


def test_the_document_lists_the_memo_operations_behind_the_key(client):
    spec = client.get("/openapi.json").json()
    ops = {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items() if p.startswith("/v1/memo")}
    assert sorted(ops) == [("GET", "/v1/memo/note"), ("POST", "/v1/memo/chat"), ("POST", "/v1/memo/search")]
    for op in ops.values():
        assert op["security"] == [{"apiKey": []}] and {"200", "400", "401", "500"} <= set(op["responses"])
        assert "422" not in op["responses"]
    assert {"404"} <= set(ops["GET", "/v1/memo/note"]["responses"])
    assert [p["name"] for p in ops["GET", "/v1/memo/note"]["parameters"]] == ["path", "start", "end", "page"]
    schemas = spec["components"]["schemas"]
    assert schemas["SearchRequest"]["properties"]["k"]["maximum"] == 50
    assert schemas["MemoChatRequest"]["properties"]["min_coverage"]["default"] == MIN_COVERAGE
    assert {"SearchResults", "MemoChatCompletion", "MemoSources", "NoteLines"} <= set(schemas)


def test_search_goes_on_while_another_process_indexes(chat_local, served, tmp_path):
    notes = write_notes(tmp_path / "notes")
    main(["memo", "index", str(notes), "--db", str(tmp_path / "live.db"), "--quiet"])
    more = tmp_path / "notes" / "더"
    write_notes(more, {f"{i:04}.md": f"# 일지 {i}\n\n{i}번째 날에는 보고서를 썼다.\n\n회의록 정리.\n" for i in range(600)})
    (more / "특별.md").write_text("# 특별\n\n등대지기 모임은 목요일이다.\n", encoding="utf-8")
    app = create_app(served[1], "krmini-test", None, MAX_TOKENS, [extension(tmp_path / "live.db")])
    indexer = subprocess.Popen([sys.executable, "-m", "krmini", "memo", "index", "--db", str(tmp_path / "live.db"),
                                "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    answered = []
    with testclient.TestClient(app) as client:
        while indexer.poll() is None:
            r = client.post("/v1/memo/search", json={"query": "마케팅 예산", "k": 1})
            assert r.status_code == 200, r.text
            answered.append(r.json()["hits"][0]["where"])
            time.sleep(0.02)
        assert indexer.returncode == 0, indexer.stdout.read().decode()
        found = client.post("/v1/memo/search", json={"query": "등대지기 모임", "k": 1}).json()["hits"]
    assert len(answered) >= 3 and set(answered) == {"notes/회의/3월.md:5-6"}  # answered all along, the same
    assert found[0]["where"] == "notes/더/특별.md:3"

"""`krmini serve --memo` over an index with vectors: the index's mode (hybrid) with its embedder, loaded
once; a request's `mode`; and the embedder `openai:URL` naming this very server, embedded without HTTP."""

from __future__ import annotations

import copy
import json
from urllib.parse import urlsplit

import pytest

from krmini.apps.memo import embed, server
from krmini.apps.memo.server import extension, names_server
from krmini.chat.remote import OpenAIBackend
from krmini.chat.template import stop_ids
from krmini.cli import main
from krmini.infer.build import build_engine
from krmini.serve.api import create_app
from krmini.serve.worker import Worker
from tests.conftest import MAX_TOKENS

testclient = pytest.importorskip("fastapi.testclient", reason="needs httpx (the dev extra)")
QUESTION = "마케팅 예산은 얼마로 확정했어?"


def _client(worker, extensions, name="krmini-test"):
    return testclient.TestClient(create_app(worker, name, None, MAX_TOKENS, extensions), raise_server_exceptions=False)


@pytest.fixture
def worker(chat_local):
    worker = Worker(build_engine(copy.deepcopy(chat_local), stop_ids=stop_ids(chat_local.tokenizer)))
    yield worker
    worker.close()


def test_hybrid_with_the_index_s_embedder_loaded_once(notes_dir, tmp_path, st_models, worker, monkeypatch, capsys):
    db = tmp_path / "m.db"
    assert main(["memo", "index", str(notes_dir), "--db", str(db), "--embed", f"st:{st_models[0]}", "--quiet"]) == 0
    assert main(["memo", "search", QUESTION, "--db", str(db), "--json", "-k", "3"]) == 0
    cli = json.loads(capsys.readouterr().out.splitlines()[-1])
    opened = []
    real = embed.open_embedder
    monkeypatch.setattr(server, "open_embedder", lambda *a: opened.append(a) or real(*a))
    with _client(worker, [extension(db)]) as client:
        answers = [client.post("/v1/memo/search", json={"query": QUESTION, "k": 3}).json() for _ in range(2)]
        assert answers[0]["mode"] == "hybrid" and answers[0] == answers[1]
        assert [h["where"] for h in answers[0]["hits"]] == [h["where"].replace(str(notes_dir.parent) + "/", "")
                                                          for h in cli["hits"]]
        lexical = client.post("/v1/memo/search", json={"query": QUESTION, "mode": "lexical"}).json()
        dense = client.post("/v1/memo/search", json={"query": QUESTION, "mode": "dense"}).json()
        assert (lexical["mode"], dense["mode"]) == ("lexical", "dense")
        bad = client.post("/v1/memo/search", json={"query": QUESTION, "mode": "semantic"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "mode"
        chat = client.post("/v1/memo/chat", json={"messages": [{"role": "user", "content": QUESTION}],
                                                  "mode": "dense", "max_tokens": 4, "temperature": 0}).json()
        assert chat["retrieval"]["mode"] == "dense"
    assert len(opened) == 1  # at startup, not per request


def test_a_mode_the_index_cannot_run_is_400(notes_dir, tmp_path, worker):
    db = tmp_path / "m.db"
    assert main(["memo", "index", str(notes_dir), "--db", str(db), "--quiet"]) == 0
    with _client(worker, [extension(db)]) as client:
        assert client.post("/v1/memo/search", json={"query": QUESTION}).json()["mode"] == "lexical"
        for path, body in [("/v1/memo/search", {"query": QUESTION, "mode": "hybrid"}),
                           ("/v1/memo/chat", {"messages": [{"role": "user", "content": QUESTION}], "mode": "dense"})]:
            answer = client.post(path, json=body)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["param"] == "mode" and "has no vectors" in answer.json()["error"]["message"]


def test_names_server():
    assert names_server("openai:http://127.0.0.1:8000", "127.0.0.1", 8000)
    assert names_server("openai:http://localhost:8000", "0.0.0.0", 8000)
    assert not names_server("openai:http://127.0.0.1:8001", "127.0.0.1", 8000)
    assert not names_server("openai:http://example.com:8000", "127.0.0.1", 8000)


def test_this_server_s_embeddings_without_http(notes_dir, tmp_path, chat_server, worker, monkeypatch, capsys):
    db, url, key = tmp_path / "m.db", chat_server.url, chat_server.key
    assert main(["memo", "index", str(notes_dir), "--db", str(db), "--embed", f"openai:{url}", "--embed-api-key",
                 key, "--quiet"]) == 0
    assert main(["memo", "search", QUESTION, "--db", str(db), "--embed-api-key", key, "--json", "-k", "3"]) == 0
    cli = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert cli["mode"] == "hybrid"

    def no_http(*args, **kwargs):
        raise AssertionError("a memo route called HTTP")
    monkeypatch.setattr(OpenAIBackend, "request", no_http)
    where = urlsplit(url)
    memo_ext = extension(db, where.hostname, where.port)
    with _client(worker, [memo_ext]) as client:
        answer = client.post("/v1/memo/search", json={"query": QUESTION, "k": 3}).json()
    assert answer["mode"] == "hybrid"
    assert [h["score"] for h in answer["hits"]] == pytest.approx([h["score"] for h in cli["hits"]], abs=1e-3)
    with pytest.raises(Exception, match="serve it under that name: --name krmini-test"):
        create_app(worker, "another-name", None, MAX_TOKENS, [extension(db, where.hostname, where.port)])

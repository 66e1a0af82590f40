"""The served OpenAPI document is true: it names the statuses, content types, types and bounds the
server really answers with, and the server rejects exactly what the document rejects.

(The schemathesis run against a live server, which fuzzes the same claims, is in test_schemathesis.py.)
"""

from __future__ import annotations

import copy

import pytest

from krmini.chat.template import stop_ids
from krmini.infer.build import build_engine
from krmini.infer.sampling import SEED_LIMIT
from krmini.serve import api, schema
from krmini.serve.worker import Worker
from tests.serve.http import call

HELLO = [{"role": "user", "content": "안녕하세요"}]
CHAT, COMPLETE = "/v1/chat/completions", "/v1/completions"


@pytest.fixture(scope="module")
def spec(chat_server) -> dict:
    status, _, body = call(chat_server, "GET", "/openapi.json")
    assert status == 200, body
    return body


def props(spec: dict, name: str) -> dict:
    return spec["components"]["schemas"][name]["properties"]


def test_the_document_is_served_behind_the_api_key(chat_server, spec):
    status, _, body = call(chat_server, "GET", "/openapi.json", key=False)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert spec["openapi"].startswith("3.1") and spec["info"]["title"] == "krmini"
    assert spec["components"]["securitySchemes"] == {"apiKey": {"type": "http", "scheme": "bearer",
                                                                "description": "the server's --api-key"}}
    for path in ("/docs", "/redoc"):
        assert call(chat_server, "GET", path)[0] == 404


def test_every_operation_documents_the_statuses_it_answers_with(spec):
    documented = {(method.upper(), path): sorted(op["responses"], key=int)
                  for path, item in spec["paths"].items() for method, op in item.items()}
    generate = ["200", "400", "401", "404", "500"]
    assert documented == {("GET", "/"): ["200", "500"], ("GET", "/health"): ["200", "500"],
                          ("GET", "/v1/models"): ["200", "401", "500"], ("POST", CHAT): generate,
                          ("POST", COMPLETE): generate, ("POST", "/tokenize"): ["200", "400", "401", "500"],
                          ("POST", "/v1/embeddings"): generate}
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for item in spec["paths"].values():
        for op in item.values():
            for status, response in op["responses"].items():
                if status != "200":
                    assert response["content"] == {"application/json": {"schema": error}}
            assert ("security" in op) == (op["responses"].get("401") is not None)
    detail = schemas["ErrorDetail"]
    assert sorted(detail["required"]) == ["code", "message", "param", "type"]


def test_streaming_answers_are_documented_as_server_sent_events(chat_server, spec):
    for path, chunk in ((CHAT, "ChatCompletionChunk"), (COMPLETE, "CompletionChunk")):
        content = spec["paths"][path]["post"]["responses"]["200"]["content"]
        assert sorted(content) == ["application/json", "text/event-stream"]
        data = content["text/event-stream"]["schema"]["properties"]["data"]["anyOf"]
        assert data[0] == {"const": "[DONE]"}
        assert data[1]["contentSchema"]["anyOf"][0] == {"$ref": f"#/components/schemas/{chunk}"}
    body = {"messages": HELLO, "stream": True, "temperature": 0, "stream_options": {"include_usage": True}}
    status, head, text = call(chat_server, "POST", CHAT, body)
    assert status == 200 and head["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [schema.ChatCompletionChunk.model_validate_json(e, strict=True) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage.total_tokens > 0
    status, head, reply = call(chat_server, "POST", CHAT, {"messages": HELLO, "max_tokens": 3})
    assert status == 200 and head["content-type"] == "application/json"
    assert schema.ChatCompletion.model_validate(reply, strict=True).usage.completion_tokens <= 3


def test_sampling_fields_are_typed_and_bounded_as_the_server_checks_them(spec):
    chat = props(spec, "ChatRequest")
    assert chat["seed"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": SEED_LIMIT - 1}
    assert isinstance(chat["seed"]["anyOf"][0]["maximum"], int)  # not a float, which would round to 2^64
    assert (chat["temperature"]["minimum"], chat["temperature"]["maximum"]) == (0, 2)
    assert (chat["top_p"]["exclusiveMinimum"], chat["top_p"]["maximum"]) == (0, 1)
    assert (chat["n"]["type"], chat["n"]["minimum"], chat["n"]["maximum"]) == ("integer", 1, schema.MAX_N)
    assert chat["max_tokens"]["anyOf"][0] == {"type": "integer", "minimum": 1}
    assert chat["stream"]["type"] == "boolean" and chat["messages"]["minItems"] == 1
    for name in ("ChatRequest", "CompletionRequest"):
        assert props(spec, name)["model"]["anyOf"][0] == {"type": "string", "enum": ["krmini-test"]}


@pytest.mark.parametrize(("field", "value"), [
    ("seed", False), ("seed", "1"), ("seed", 1.5), ("n", True), ("max_tokens", "8"), ("temperature", "0.5"),
    ("temperature", True), ("top_p", None), ("stream", "yes"), ("stream", 1), ("stream_options", {"include_usage": 1}),
])
def test_values_of_the_wrong_json_type_are_400s_naming_the_field(chat_server, field, value):
    status, _, body = call(chat_server, "POST", CHAT, {"messages": HELLO, field: value})
    assert status == 400, body
    assert body["error"]["param"] == (field if field != "stream_options" else "stream_options.include_usage")
    assert body["error"]["type"] == "invalid_request_error"


def test_a_whole_number_is_an_integer_as_in_json_schema(chat_server):
    status, _, body = call(chat_server, "POST", CHAT, {"messages": HELLO, "n": 2.0, "max_tokens": 2.0, "seed": 7.0})
    assert status == 200, body
    assert len(body["choices"]) == 2 and body["usage"]["completion_tokens"] <= 4


def test_stop_and_prompt_constraints_are_declared_and_enforced(chat_server, spec):
    stop = props(spec, "ChatRequest")["stop"]["anyOf"]
    assert stop[0] == {"type": "string", "minLength": 1}
    assert stop[1] == {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": schema.MAX_STOPS}
    prompt = props(spec, "CompletionRequest")["prompt"]["anyOf"]
    assert prompt[0] == {"type": "string", "minLength": 1}
    assert prompt[1] == {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                         "maxItems": schema.MAX_N}
    rejected = [(CHAT, {"messages": HELLO, "stop": ""}, "stop"), (CHAT, {"messages": HELLO, "stop": ["a", ""]}, "stop.1"),
                (CHAT, {"messages": HELLO, "stop": list("abcde")}, "stop"), (COMPLETE, {"prompt": []}, "prompt"),
                (COMPLETE, {"prompt": ""}, "prompt"), (COMPLETE, {"prompt": ["가", ""]}, "prompt.1"),
                (COMPLETE, {"prompt": ["가"] * (schema.MAX_N + 1)}, "prompt")]
    for path, body, param in rejected:
        status, _, answer = call(chat_server, "POST", path, body)
        assert (status, answer["error"]["param"]) == (400, param), (body, answer)
    for path, body in ((CHAT, {"messages": HELLO, "stop": list("abcd"), "max_tokens": 2}),
                       (COMPLETE, {"prompt": ["가"] * schema.MAX_N, "max_tokens": 1})):
        status, _, answer = call(chat_server, "POST", path, body)
        assert status == 200, answer


def test_a_wrong_method_is_405_with_allow(chat_server):
    for method, path, allow in (("POST", "/health", "GET"), ("GET", CHAT, "POST"), ("DELETE", "/v1/models", "GET")):
        status, head, body = call(chat_server, method, path, {} if method == "POST" else None)
        assert (status, head.get("allow")) == (405, allow), body
        assert body["error"]["message"] == "Method Not Allowed" and body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("text", "where"), [
    (b'{"messages": [}', "line 1, column 15"),
    (b'{\n  "messages": ,\n}', "line 2, column 15"),
    (b'{"messages": [], "seed": 9', "line 1, column 27"),
])
def test_invalid_json_is_a_clear_400_with_no_param(chat_server, text, where):
    status, _, body = call(chat_server, "POST", CHAT, text)
    assert status == 400 and body["error"]["param"] is None
    assert body["error"]["message"].startswith("request body: not valid JSON: ") and f"({where})" in body["error"]["message"]


@pytest.mark.parametrize("body", [b"", b"[]", b'"text"'])
def test_a_body_that_is_no_json_object_says_so(chat_server, body):
    status, _, answer = call(chat_server, "POST", CHAT, body)
    assert (status, answer["error"]["message"], answer["error"]["param"]) == (
        400, "request body: expected a JSON object (Content-Type: application/json)", None)


@pytest.fixture(scope="module")
def keyless(chat_local):
    """(client, worker): the app in this process, served without an API key."""
    testclient = pytest.importorskip("fastapi.testclient", reason="needs httpx (the dev extra)")
    worker = Worker(build_engine(copy.deepcopy(chat_local), stop_ids=stop_ids(chat_local.tokenizer)))
    with testclient.TestClient(api.create_app(worker, "local", None, 4), raise_server_exceptions=False) as client:
        yield client, worker
    worker.close()


def test_without_a_key_the_document_is_open_and_promises_no_401(keyless):
    client, _ = keyless
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert "securitySchemes" not in spec["components"]
    assert all("401" not in op["responses"] and "security" not in op
               for item in spec["paths"].values() for op in item.values())
    assert client.get("/v1/models").status_code == 200


SECRET = "secret detail /home/someone/model.safetensors"


def broken(*_, **__):
    raise RuntimeError(SECRET)


def test_a_500_tells_the_client_nothing_internal(keyless, monkeypatch, caplog):
    client, worker = keyless
    internal = {"error": {"message": "internal server error", "type": "server_error", "param": None, "code": None}}
    with monkeypatch.context() as m:
        m.setattr(api, "prompt_ids", broken)  # an exception in a handler
        r = client.post(CHAT, json={"messages": HELLO})
    assert (r.status_code, r.json()) == (500, internal)
    with monkeypatch.context() as m:
        m.setattr(worker.engine, "stream_prepared", broken)  # a failure inside the engine's batch
        r = client.post(CHAT, json={"messages": HELLO})
    assert (r.status_code, r.json()) == (500, internal)
    assert any(SECRET in rec.getMessage() for rec in caplog.records if rec.name == api.log.name)  # logged instead
    assert client.post(CHAT, json={"messages": HELLO, "max_tokens": 2}).status_code == 200  # and the server goes on


@pytest.mark.parametrize(("field", "value", "message"), [
    ("temperature", 5, "temperature: expected a value <= 2, got 5"),
    ("top_p", 0, "top_p: expected a value > 0, got 0"),
    ("seed", False, "seed: expected an integer, got false"),
    ("seed", 2**64, "seed: expected a value <= 18446744073709551615, got 18446744073709551616"),
    ("n", "2", 'n: expected an integer, got "2"'),
    ("stop", ["a"] * 5, "stop: expected at most 4 items, got 5"),
    ("temperature", float("nan"), "temperature: expected a finite number, got nan"),  # the engine's own check
])
def test_errors_are_worded_as_the_cli_words_them(chat_server, field, value, message):
    status, _, body = call(chat_server, "POST", CHAT, {"messages": HELLO, field: value})
    assert (status, body["error"]["message"], body["error"]["param"]) == (400, message, field)

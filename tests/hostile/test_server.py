"""Hostile JSON values for every sampling field of the live server: a 4xx `{"error": {...}}` naming the
field, never a 500 (one bad request must not fail the batch it would have shared); what the documented
rules allow is answered with 200."""

from __future__ import annotations

import math

import pytest

from tests.serve.http import call

NAN, INF = math.nan, math.inf
# as in the CLI and the Python API; json.dumps writes NaN/Infinity, which the server's JSON parser reads
HOSTILE = [NAN, INF, -INF, 0, -1, 1e-300, 1e300, 2**64, "1", True, [1]]


def number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def integer(x) -> bool:
    """A JSON Schema integer: a number with no fractional part, so 1e300 is one (the token limits cap it
    at the context) and 1.5 is not."""
    return number(x) and float(x).is_integer()


# The API's documented ranges (OpenAI's, docs/chat.md): temperature 0-2, top_p (0, 1], n 1-8, token
# limits >= 1 (capped by the context), seed 0 … 2^64-1, stop a string or up to 4 of them.
RULES = {
    "temperature": lambda x: number(x) and 0 <= x <= 2,
    "top_p": lambda x: number(x) and 0 < x <= 1,
    "n": lambda x: integer(x) and 1 <= x <= 8,
    "max_tokens": lambda x: integer(x) and x >= 1,
    "max_completion_tokens": lambda x: integer(x) and x >= 1,
    "seed": lambda x: integer(x) and 0 <= x < 2**64,
    "stop": lambda x: (isinstance(x, str) and x != "") or (isinstance(x, list) and 0 < len(x) <= 4 and all(
        isinstance(s, str) and s for s in x)),
}
ENDPOINTS = {"chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "안녕하세요"}]}),
             "completions": ("/v1/completions", {"prompt": "대한민국은"})}


def post(server, path: str, body: dict) -> tuple[int, object]:
    status, _, payload = call(server, "POST", path, body)
    return status, payload


CASES = [pytest.param(e, f, v, id=f"{e}-{f}={v!r}") for e in ENDPOINTS for f in RULES for v in HOSTILE
         if not (e == "completions" and f == "max_completion_tokens")]


@pytest.mark.parametrize(("endpoint", "field", "value"), CASES)
def test_hostile_field(chat_server, endpoint, field, value):
    path, body = ENDPOINTS[endpoint]
    status, payload = post(chat_server, path, {**body, "max_tokens": 4, field: value})
    if RULES[field](value):
        assert status == 200, payload
        choices = payload["choices"]
        assert len(choices) == (int(value) if field == "n" else 1)
        assert all(c["finish_reason"] in ("stop", "length") for c in choices)
        return
    assert 400 <= status < 500, (status, payload)
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert error["message"] and "\n" not in error["message"]
    assert field in (error.get("param") or "") or field in error["message"], error


def test_the_server_still_answers(chat_server):
    """After every hostile request, a plain one is answered (nothing got stuck in the worker)."""
    path, body = ENDPOINTS["chat"]
    status, payload = post(chat_server, path, {**body, "max_tokens": 2, "temperature": 0})
    assert status == 200 and payload["choices"][0]["finish_reason"] in ("stop", "length")

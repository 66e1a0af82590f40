"""Where answers come from: a run directory (our engine, in this process) or an OpenAI-compatible server.

Both give the same three things: the model's `context` in tokens, `count(messages)` (the prompt
tokens of a conversation) and `stream(messages, sampling)` (the reply's text pieces).

    RUN              the chat template renders the messages exactly as `krmini chat` does; counts are exact
    openai:URL       POST URL/v1/chat/completions with stream=true (any OpenAI-compatible server; the
                     key from --api-key or OPENAI_API_KEY). Counts and the context come from POST
                     URL/tokenize where the server has it (ours and vLLM do); elsewhere a message counts
                     one token per character plus 8, an over-estimate for Korean with the usual
                     tokenizers, and the context is --context (default 4096).
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from krmini.argtypes import integer
from krmini.chat.template import prompt_ids
from krmini.errors import KrminiError
from krmini.infer.engine import Engine
from krmini.infer.sampling import SamplingConfig

OPENAI_PREFIX = "openai:"
TIMEOUT = 300
DEFAULT_CONTEXT = 4096


class LocalBackend:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.name = str(engine.source)
        self.context = engine.context

    def count(self, messages: list[dict]) -> int:
        return len(prompt_ids(self.engine.tokenizer, messages))

    def stream(self, messages: list[dict], sampling: SamplingConfig) -> Iterator[str]:
        return self.engine.stream(prompt_ids(self.engine.tokenizer, messages), sampling)


@dataclass
class OpenAIBackend:
    base: str  # the server root, without /v1
    api_key: str | None = None
    model: str | None = None
    context: int = DEFAULT_CONTEXT
    exact: bool = False  # counts come from the server's /tokenize

    @classmethod
    def connect(cls, url: str, api_key: str | None, model: str | None, context: int | None) -> OpenAIBackend:
        base = url.rstrip("/").removesuffix("/v1")
        if not base.startswith(("http://", "https://")):
            raise KrminiError(f"--backend openai:{url}: expected an http:// or https:// URL")
        backend = cls(base, api_key or os.environ.get("OPENAI_API_KEY"), model, context or DEFAULT_CONTEXT)
        if backend.model is None:
            models = backend._request("GET", "/v1/models").get("data") or []
            if not models:
                raise KrminiError(f"{base}/v1/models: the server lists no model; pass --model")
            backend.model = models[0]["id"]
        try:
            probe = backend._request("POST", "/tokenize", {"model": backend.model,
                                                           "messages": [{"role": "user", "content": "."}]})
        except KrminiError:
            probe = {}
        if isinstance(probe.get("count"), int):
            backend.exact = True
            if context is None and isinstance(probe.get("max_model_len"), int):
                backend.context = probe["max_model_len"]
        return backend

    @property
    def name(self) -> str:
        return f"{self.model} at {self.base}"

    def _open(self, method: str, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", {}).get("message")
            except (ValueError, AttributeError):
                message = None
            raise KrminiError(f"{self.base}{path}: HTTP {exc.code} {message or exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise KrminiError(f"{self.base}{path}: cannot connect ({getattr(exc, 'reason', exc)})") from None

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        with self._open(method, path, body) as response:
            try:
                return json.loads(response.read())
            except ValueError:
                raise KrminiError(f"{self.base}{path}: the answer is not JSON") from None

    def count(self, messages: list[dict]) -> int:
        if self.exact:
            return self._request("POST", "/tokenize", {"model": self.model, "messages": messages})["count"]
        return sum(len(m["content"]) + 8 for m in messages)

    def stream(self, messages: list[dict], sampling: SamplingConfig) -> Iterator[str]:
        body = {"model": self.model, "messages": messages, "stream": True, "max_tokens": sampling.max_new_tokens,
                "temperature": max(sampling.temperature, 0.0), "top_p": sampling.top_p}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        response = self._open("POST", "/v1/chat/completions", body)
        return _sse_text(response, self.base)


def _sse_text(response, where: str) -> Iterator[str]:
    with response:
        for raw in response:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                raise KrminiError(f"{where}: a stream event is not JSON: {data[:80]}") from None
            if "error" in chunk:
                raise KrminiError(f"{where}: {chunk['error'].get('message', chunk['error'])}")
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece


def add_backend_args(p) -> None:
    p.add_argument("--backend", required=True, metavar="RUN|openai:URL",
                   help="a chat run or checkpoint directory, or openai:http://HOST:PORT (any OpenAI-compatible server)")
    p.add_argument("--model", dest="served_model", help="with openai:URL, the model name (default: the first of /v1/models)")
    p.add_argument("--api-key", help="with openai:URL, the key (default: $OPENAI_API_KEY)")
    p.add_argument("--context", type=integer(2, what="tokens: a prompt and a reply"), help="with openai:URL, the model's context in tokens (default: what the "
                                               f"server's /tokenize reports, else {DEFAULT_CONTEXT})")


def open_backend(args):
    spec = args.backend
    if spec.startswith(OPENAI_PREFIX):
        if args.context is not None and args.context < 2:
            raise KrminiError(f"--context: expected at least 2 tokens, got {args.context}")
        return OpenAIBackend.connect(spec[len(OPENAI_PREFIX):], args.api_key, args.served_model, args.context)
    from krmini.chat.cli import chat_engine

    local = argparse.Namespace(**vars(args))
    local.model, local.adapter = spec, None  # chat_engine's names for the run and a LoRA adapter
    return LocalBackend(chat_engine(local))

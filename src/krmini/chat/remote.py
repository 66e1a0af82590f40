"""A chat model behind any OpenAI-compatible server (ours, Ollama, llama.cpp's, vLLM): the one HTTP client.

`OpenAIBackend` is a chat backend (`krmini.chat.backend`): `context`, `count(messages)` and
`stream(messages, sampling)`, the last a POST URL/v1/chat/completions with `stream: true` whose
server-sent events are yielded as they arrive. `krmini chat --backend openai:URL` and the memo
assistant's `--backend openai:URL` both use it.

    key          --api-key, else $OPENAI_API_KEY
    model        --model, else the first of GET URL/v1/models
    counts       POST URL/tokenize where the server has it (ours and vLLM: exact, and its
                 `max_model_len` is the context); elsewhere a message counts one token per character
                 plus 8, an over-estimate for Korean with the usual tokenizers, and the context is
                 --context (default 4096)
    sampling     max_tokens, temperature, top_p, seed, stop, frequency_penalty and presence_penalty
                 (OpenAI's fields); top-k is not an OpenAI field and is not sent (the server keeps its
                 own); a repetition penalty or --truncate left cannot be asked for and is refused
    template     template options go as `chat_template_kwargs` (vLLM's and llama.cpp's field)

Every failure is one `KrminiError` line: cannot connect, HTTP 401/404/500 with the server's own
message, an answer that is not JSON, a stream cut off.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from krmini.argtypes import integer
from krmini.errors import KrminiError
from krmini.infer.sampling import SamplingConfig

OPENAI_PREFIX = "openai:"
KEY_ENV = "OPENAI_API_KEY"
TIMEOUT = 300
DEFAULT_CONTEXT = 4096


class ServerError(KrminiError):
    """The server answered, but not as asked: an HTTP error (`status`) or a body that is not JSON (None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def server_root(url: str, option: str = "--backend openai:") -> str:
    """URL without a trailing /v1 (the paths below add it), refused unless it is http(s)."""
    base = url.rstrip("/").removesuffix("/v1")
    if not base.startswith(("http://", "https://")):
        raise KrminiError(f"{option}{url}: expected an http:// or https:// URL, e.g. openai:http://127.0.0.1:8000/v1")
    return base


@dataclass
class OpenAIBackend:
    base: str  # the server root, without /v1
    api_key: str | None = None
    model: str | None = None
    context: int = DEFAULT_CONTEXT
    exact: bool = False  # counts come from the server's /tokenize
    template_options: dict = field(default_factory=dict)

    @classmethod
    def connect(cls, url: str, api_key: str | None, model: str | None, context: int | None,
                template_options: dict | None = None) -> OpenAIBackend:
        """A backend that has reached the server: the model is known (asked for or listed) and a wrong key
        or a dead port fails here, in one line, before the first message."""
        backend = cls(server_root(url), api_key or os.environ.get(KEY_ENV), model, context or DEFAULT_CONTEXT,
                      template_options=dict(template_options or {}))
        if backend.model is None:
            models = backend.request("GET", "/v1/models").get("data")
            if not isinstance(models, list) or not models or not isinstance(models[0], dict) \
                    or not isinstance(models[0].get("id"), str):
                raise KrminiError(f"{backend.base}/v1/models: the server lists no model; pass --model")
            backend.model = models[0]["id"]
        try:
            probe = backend.request("POST", "/tokenize", {"model": backend.model,
                                                          "messages": [{"role": "user", "content": "."}]})
        except ServerError as exc:  # no /tokenize here (404, or another shape of it): counts are estimated
            if exc.status in (401, 403):
                raise
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
            except (ValueError, AttributeError, OSError):
                message = None
            raise ServerError(f"{self.base}{path}: HTTP {exc.code} {message or exc.reason}", exc.code) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise KrminiError(f"{self.base}{path}: cannot connect ({getattr(exc, 'reason', exc)})") from None

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One JSON request and its JSON object answer."""
        with self._open(method, path, body) as response:
            try:
                answer = json.loads(response.read())
            except (ValueError, OSError, http.client.HTTPException):
                answer = None
        if not isinstance(answer, dict):
            raise ServerError(f"{self.base}{path}: the answer is not a JSON object (is this an OpenAI-compatible "
                              "server? the URL is its root or its /v1)")
        return answer

    def count(self, messages: list[dict]) -> int:
        if self.exact:
            count = self.request("POST", "/tokenize", {"model": self.model, "messages": messages}).get("count")
            if isinstance(count, int):
                return count
        return sum(len(m["content"]) + 8 for m in messages)

    def body(self, messages: list[dict], sampling: SamplingConfig) -> dict:
        """The /v1/chat/completions request for `messages` with these settings."""
        check_remote_sampling(sampling)
        body = {"model": self.model, "messages": messages, "stream": True, "max_tokens": sampling.max_new_tokens,
                "temperature": max(sampling.temperature, 0.0), "top_p": sampling.top_p}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(sampling, name):
                body[name] = getattr(sampling, name)
        if self.template_options:
            body["chat_template_kwargs"] = self.template_options
        return body

    def stream(self, messages: list[dict], sampling: SamplingConfig) -> Iterator[str]:
        response = self._open("POST", "/v1/chat/completions", self.body(messages, sampling))
        return _sse_text(response, f"{self.base}/v1/chat/completions")


def check_remote_sampling(sampling: SamplingConfig) -> None:
    """Refuse what an OpenAI-compatible request cannot carry (one line each)."""
    if sampling.repetition_penalty != 1.0:
        raise KrminiError("--repetition-penalty: an OpenAI-compatible server takes no repetition penalty; "
                          "use --frequency-penalty or --presence-penalty")
    if sampling.truncate != "error":
        raise KrminiError("--truncate left: an OpenAI-compatible server cannot be asked to cut the prompt")


def _sse_text(response, where: str) -> Iterator[str]:
    """The text pieces of a chat-completions event stream, as they arrive."""
    with response:
        try:
            for raw in response:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise ServerError(f"{where}: a stream event is not JSON: {data[:80]}") from None
                if not isinstance(chunk, dict):
                    raise ServerError(f"{where}: a stream event is not a JSON object: {data[:80]}")
                if "error" in chunk:
                    error = chunk["error"]
                    raise ServerError(f"{where}: {error.get('message', error) if isinstance(error, dict) else error}")
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
                    if isinstance(piece, str) and piece:
                        yield piece
        except (OSError, http.client.HTTPException) as exc:
            raise KrminiError(f"{where}: the connection was lost mid-reply ({exc})") from None


def add_remote_args(p, *, model_help: str = "with openai:URL, the model name (default: the first of /v1/models)") -> None:
    """--model, --api-key and --context: how `--backend openai:URL` reaches its server."""
    p.add_argument("--model", dest="served_model", metavar="NAME", help=model_help)
    p.add_argument("--api-key", help=f"with openai:URL, the key (default: ${KEY_ENV})")
    p.add_argument("--context", type=integer(2, what="tokens: a prompt and a reply"),
                   help="with openai:URL, the model's context in tokens (default: what the server's /tokenize "
                   f"reports, else {DEFAULT_CONTEXT})")


def open_remote(spec: str, args, template_options: dict | None = None) -> OpenAIBackend:
    """The backend of `--backend openai:URL` with the remote options of `add_remote_args`."""
    return OpenAIBackend.connect(spec[len(OPENAI_PREFIX):], args.api_key, args.served_model, args.context,
                                 template_options)

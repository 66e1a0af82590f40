"""The HTTP API, shaped like OpenAI's so existing clients and tools work unchanged.

    GET  /                      the web chat page
    GET  /health                liveness (no key needed)
    GET  /v1/models             the one served model
    POST /v1/chat/completions   messages → reply, rendered with the chat template
    POST /v1/completions        plain text continuation
    POST /v1/embeddings         texts (or token ids) → unit vectors: the model's mean-pooled final hidden states
    POST /tokenize              a conversation's prompt token count and the context (as vLLM's)
    GET  /openapi.json          the OpenAPI document of all of these (`krmini.serve.schema`)

Layers above this one add their own operations as `Extension`s (the memo assistant's /v1/memo/…,
passed in by the top-level CLI): they answer through the same worker, `check` and `respond`.

`stream: true` answers with server-sent events (`data: {chunk}` … `data: [DONE]`). Every error is
OpenAI's JSON shape `{"error": {"message", "type", "param", "code"}}`: 400 for a request the schema
rejects (never FastAPI's 422), 401 without the API key (on /v1/ and /openapi.json, when one is set),
404 for another model or path, 405 with `Allow`, 500 without internal details.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import math
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from krmini import __version__
from krmini.chat.template import prompt_budget, prompt_ids
from krmini.errors import KrminiError
from krmini.infer.engine import PromptTooLong
from krmini.infer.sampling import SamplingConfig
from krmini.serve import schema
from krmini.serve.schema import ChatRequest, CompletionRequest, Message, Sampling, TokenizeRequest
from krmini.serve.worker import Done, Job, Worker, log
from krmini.tokenizer import KoTokenizer


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Submission:
    """One HTTP request's jobs in the worker, and the events coming back from them: (choice index,
    text | Done) for every choice (prompt p's sample s is choice p·n + s, as in OpenAI's API)."""

    def __init__(self, worker: Worker, requests: list[tuple[list[int], SamplingConfig]],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        put = self.queue.put_nowait
        self.jobs = []
        for p, (ids, sampling) in enumerate(requests):
            base = p * sampling.n
            self.jobs.append(Job(ids, sampling, lambda s, e, b=base: loop.call_soon_threadsafe(put, (b + s, e))))
        self.remaining = sum(sampling.n for _, sampling in requests)
        for job in self.jobs:
            worker.submit(job)

    def cancel(self) -> None:
        """Free the engine: the worker drops these jobs before the next decode step (or never starts them)."""
        for job in self.jobs:
            job.cancelled.set()

    async def events(self):
        try:
            while self.remaining:
                index, event = await self.queue.get()
                if isinstance(event, Done):
                    self.remaining -= 1
                    if event.error:
                        raise APIError(500, event.error, "server_error") if event.internal else APIError(400, event.error)
                yield index, event
        finally:  # finished, failed or abandoned
            self.cancel()


BOUNDS = {"greater_than_equal": (">=", "ge"), "less_than_equal": ("<=", "le"), "greater_than": (">", "gt"),
          "less_than": ("<", "lt")}
TYPES = {"int_type": "an integer", "int_from_float": "an integer", "float_type": "a number", "string_type": "a string",
         "bool_type": "true or false", "list_type": "a list"}


def expected(error: dict) -> str:
    """A field's validation error in the words the CLI and the Python API use ("expected …, got …")."""
    got = json.dumps(error.get("input"), ensure_ascii=False)[:80]
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    if isinstance(value, float) and not math.isfinite(value):  # JSON's NaN and Infinity fail every bound
        return f"expected a finite number, got {value}"
    if kind in BOUNDS:
        op, key = BOUNDS[kind]
        limit = ctx[key]
        return f"expected a value {op} {int(limit) if float(limit).is_integer() else limit}, got {got}"
    if kind in TYPES:
        return f"expected {TYPES[kind]}, got {got}"
    if kind in ("too_long", "too_short"):
        most = "at most" if kind == "too_long" else "at least"
        bound = ctx.get("max_length") if kind == "too_long" else ctx.get("min_length")
        return f"expected {most} {bound} item{'' if bound == 1 else 's'}, got {ctx.get('actual_length')}"
    if kind == "string_too_short":
        return "expected a non-empty string"
    return error["msg"]


def invalid_body(exc: RequestValidationError, fields: frozenset = schema.FIELDS) -> tuple[str, str | None]:
    """(message, param) for a request FastAPI could not read or validate. Of a union's failures the one
    that got past the type (`stop: [5 strings]` is too long, not "not a string") says what is wrong."""
    errors = exc.errors()
    if not errors:
        return "request body: invalid", None
    first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
    if first["type"] == "json_invalid":  # loc holds the position in the text, not a field
        doc, pos = str(exc.body), first["loc"][-1]
        line, column = doc.count("\n", 0, pos) + 1, pos - doc.rfind("\n", 0, pos)
        reason = first.get("ctx", {}).get("error", "")
        return f"request body: not valid JSON: {reason} (line {line}, column {column})", None
    # loc is ("body", field, index, ...) with pydantic's union member tags ("str", "list[...]") between
    param = ".".join(str(p) for p in first["loc"][1:] if isinstance(p, int) or p in fields) or None
    if param:
        return f"{param}: {expected(first)}", param
    if first["type"] in ("missing", "model_type", "model_attributes_type", "dict_type"):
        return "request body: expected a JSON object (Content-Type: application/json)", None
    return f"request body: {first['msg']}", None


@dataclass(frozen=True)
class Served:
    """What an extension's handlers answer with: the served model and the generating path of
    /v1/chat/completions (`check` a request's prompts, `respond` with the worker's reply)."""

    model_name: str
    tokenizer: KoTokenizer
    context: int
    default_max_tokens: int
    check: Callable
    respond: Callable


@dataclass(frozen=True)
class Extension:
    """Operations a layer above adds: `add(app, served)` adds its routes (under /v1/, so the API key
    covers them); its request and answer models join the OpenAPI document and the field names an
    error's `param` may take; the web page is told `feature`."""

    feature: str
    add: Callable[[FastAPI, Served], None]
    requests: tuple = ()
    answers: tuple = ()


def create_app(worker: Worker, model_name: str, api_key: str | None = None, default_max_tokens: int = 256,
               extensions: Sequence[Extension] = ()) -> FastAPI:
    app = FastAPI(title="krmini", version=__version__, docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  description="An OpenAI-compatible API for one krmini chat model.")
    engine = worker.engine
    tokenizer, context = engine.tokenizer, engine.context
    created = int(time.time())
    page = resources.files("krmini.serve").joinpath("index.html").read_text(encoding="utf-8")
    requests = tuple(m for e in extensions for m in e.requests)
    fields = schema.FIELDS | {name for m in requests for name in m.model_fields}

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = schema.describe(spec, model_name, keyed=bool(api_key), requests=requests,
                                                 answers=tuple(m for e in extensions for m in e.answers),
                                                 vocab=engine.model.config.vocab_size)
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        if exc.status >= 500:  # the details are ours, not the client's
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
            return JSONResponse(error_body("internal server error", exc.kind), status_code=exc.status)
        return JSONResponse(error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        message, param = invalid_body(exc, fields)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException):  # 404 no such path, 405 with its Allow header, ...
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):  # Starlette logs the traceback after this answer
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and (request.url.path.startswith("/v1/") or request.url.path in ("/tokenize", app.openapi_url)):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return JSONResponse(error_body("missing or incorrect API key (Authorization: Bearer KEY)",
                                               "invalid_request_error", code="invalid_api_key"), status_code=401)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, responses={200: {"description": "the web chat page"}})
    async def index():
        return HTMLResponse(page.replace("__MODEL__", html.escape(model_name))
                            .replace("__KEY_REQUIRED__", "true" if api_key else "false")
                            .replace("__CONTEXT__", str(context))
                            .replace("__BUDGET__", str(prompt_budget(context, default_max_tokens)))
                            .replace("__FEATURES__", json.dumps([e.feature for e in extensions])))

    @app.get("/health", responses={200: {"description": "the server is up", "model": schema.Health}})
    async def health():
        return {"status": "ok", "model": model_name, "queued": worker.queue.qsize(), "running": worker.running}

    @app.get("/v1/models", responses={200: {"description": "the one served model", "model": schema.ModelList}})
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "krmini"}]}

    def conversation(messages: list[Message]) -> list[int]:
        return prompt_ids(tokenizer, [{"role": m.role, "content": m.text()} for m in messages])

    @app.post("/tokenize", responses={200: {"description": "the prompt's ids and the context", "model": schema.Tokenized},
                                      400: schema.error("invalid request: the field at fault is `error.param`")})
    async def tokenize(req: TokenizeRequest):
        """The ids /v1/chat/completions would run these messages on, and the context (vLLM's fields):
        the web page counts with it to drop the oldest turns that no longer fit."""
        ids = conversation(req.messages)
        return {"count": len(ids), "max_model_len": context, "tokens": ids}

    def known_model(model: str | None) -> None:
        if model not in (None, model_name):
            raise APIError(404, f"model {model!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")

    def check(req: Sampling, prompts: list[list[int]], max_tokens: int | None) -> list[tuple[list[int], SamplingConfig]]:
        """Each prompt with its sampling settings (its `n` choices share one prefill), checked once
        through `Engine.prepare`: a bad request fails here, alone, before it joins a batch."""
        known_model(req.model)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        sampling = SamplingConfig(max_new_tokens=max_tokens or default_max_tokens, temperature=req.temperature,
                                  top_k=0, top_p=req.top_p, seed=req.seed, n=req.n, stop=tuple(stops))
        requests = []
        for ids in prompts:
            try:
                requests.append((engine.prepare(ids, sampling), sampling))
            except PromptTooLong as exc:
                raise APIError(400, f"the prompt is {exc.tokens} tokens; this model's context is {exc.context} "
                               "tokens", param="messages", code="context_length_exceeded") from None
            except KrminiError as exc:
                field = str(exc).split(":", 1)[0]  # the one validation names the field it rejects
                param = {"max_new_tokens": "max_tokens"}.get(field, field) if field.isidentifier() else None
                raise APIError(400, str(exc), param=param) from None
        return requests

    def run(requests: list[tuple[list[int], SamplingConfig]]) -> Submission:
        return Submission(worker, requests, asyncio.get_running_loop())

    def usage(prompts: list[list[int]], n: int, dones: list[Done]) -> dict:
        prompt_tokens = sum(len(p) for p in prompts)
        completion = sum(d.completion_tokens for d in dones)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

    async def respond(req: Sampling, prompts: list[list[int]], max_tokens: int | None, chat: bool,
                      extra: Callable[[list[str]], dict] | None = None):
        """The reply; `extra` maps the choices' texts to more top-level fields (an extension's), which
        a stream sends as one more event before `[DONE]`."""
        requests = check(req, prompts, max_tokens)
        choices_n = len(requests) * req.n
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        head = {"id": rid, "created": now, "model": model_name}

        def piece(index: int, text: str | None, finish: str | None) -> dict:
            if chat:
                delta = {} if text is None else {"content": text}
                return {"index": index, "delta": delta, "finish_reason": finish}
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

        submission = run(requests)
        if not req.stream:
            texts, dones = [""] * choices_n, [None] * choices_n
            async for index, event in submission.events():
                if isinstance(event, Done):
                    dones[index] = event
                else:
                    texts[index] += event
            choices = [({"index": i, "message": {"role": "assistant", "content": t}} if chat
                        else {"index": i, "text": t, "logprobs": None}) | {"finish_reason": d.finish_reason}
                       for i, (t, d) in enumerate(zip(texts, dones, strict=True))]
            return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                    "usage": usage(prompts, req.n, dones), **(extra(texts) if extra else {})}

        kind = "chat.completion.chunk" if chat else "text_completion"
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        events = submission.events()

        async def sse():
            dones, texts = [], [""] * choices_n
            if chat:
                for i in range(choices_n):
                    first = {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    yield f"data: {json.dumps({**head, 'object': kind, 'choices': [first]}, ensure_ascii=False)}\n\n"
            try:
                async for index, event in events:
                    if isinstance(event, Done):
                        dones.append(event)
                        chunk = piece(index, None, event.finish_reason)
                    else:
                        texts[index] += event
                        chunk = piece(index, event, None)
                    yield f"data: {json.dumps({**head, 'object': kind, 'choices': [chunk]}, ensure_ascii=False)}\n\n"
            except APIError as exc:
                yield f"data: {json.dumps(error_body(exc.message, exc.kind), ensure_ascii=False)}\n\n"
            finally:
                submission.cancel()  # at once, without awaiting: this may run inside a cancelled scope
            if include_usage:
                yield f"data: {json.dumps({**head, 'object': kind, 'choices': [], 'usage': usage(prompts, req.n, dones)})}\n\n"
            if extra:
                yield f"data: {json.dumps({**head, **extra(texts)}, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"

        # When the client leaves, Starlette cancels the response and runs its background task; the
        # generator itself may be left suspended (and its `finally` unrun) until it is collected.
        return StreamingResponse(sse(), media_type="text/event-stream", background=BackgroundTask(submission.cancel),
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions", responses=schema.answers(schema.ChatCompletion, schema.ChatCompletionChunk))
    async def chat_completions(req: ChatRequest):
        return await respond(req, [conversation(req.messages)], req.max_completion_tokens or req.max_tokens,
                             chat=True)

    @app.post("/v1/completions", responses=schema.answers(schema.Completion, schema.CompletionChunk))
    async def completions(req: CompletionRequest):
        texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        prompts = [tokenizer.encode_prompt(t) for t in texts]
        return await respond(req, prompts, req.max_tokens, chat=False)

    @app.post("/v1/embeddings", responses={
        200: {"description": "one unit vector per input, in order", "model": schema.EmbeddingList},
        400: schema.error("invalid request: the field at fault is `error.param`"),
        404: schema.error("`model` is not the served model (code `model_not_found`)")})
    async def embeddings(req: schema.EmbeddingRequest):
        """Mean-pooled final hidden states (after the final norm), L2-normalised (`Engine.embed`). A text
        is tokenised as a completion prompt is (ours: BOS first); an input longer than the context is cut
        to its first context tokens."""
        known_model(req.model)
        one = isinstance(req.input, str) or isinstance(req.input[0], int)
        inputs = [req.input] if one else req.input
        ids = [(tokenizer.encode_prompt(x) if isinstance(x, str) else list(x))[:context] for x in inputs]
        try:
            rows = await asyncio.to_thread(worker.embed, ids)  # between the worker's batches
        except KrminiError as exc:  # a token id outside the vocabulary
            raise APIError(400, str(exc), param="input") from None
        if req.encoding_format == "base64":
            vectors = [base64.b64encode(row.numpy().astype("<f4").tobytes()).decode() for row in rows]
        else:
            vectors = rows.tolist()
        tokens = sum(map(len, ids))
        return {"object": "list", "model": model_name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]}

    served = Served(model_name, tokenizer, context, default_max_tokens, check, respond)
    for extension in extensions:
        extension.add(app, served)
    return app

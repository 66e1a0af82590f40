"""`krmini serve RUN --memo DB`: the notes assistant on the chat server, beside /v1/chat/completions.

    POST /v1/memo/search   ranked chunks with file:lines: `krmini memo search`, the same Searcher
    POST /v1/memo/chat     the last user message answered from the notes, as `krmini memo ask` does it:
                           retrieve, refuse below `min_coverage` (no model runs then), fit the sources
                           into the served model's context, answer through the server's worker (the
                           batches /v1/chat/completions joins), and list the sources, marked where cited
    GET  /v1/memo/note     a cited note's lines, to show them (files.py: only indexed files, only inside
                           the indexed folders)

All under /v1/, so the server's API key guards the notes as it guards the model. Each request opens
the index for its own short read (SQLite's WAL lets `krmini memo index --watch` write meanwhile), so
answers follow the index as it changes. The top-level CLI hands `krmini serve` these routes
(`memo.cli.serve_extension`): serve sits below apps and does not import them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import StreamingResponse

from krmini.apps.memo import files
from krmini.apps.memo.ask import Source, answer_messages, choose, cited_numbers, fit_sources, refusal
from krmini.apps.memo.indexer import display
from krmini.apps.memo.search import Hit, Results, Searcher
from krmini.apps.memo.server_schema import (
    ANSWERS,
    MAX_LINES,
    REQUESTS,
    MemoChatRequest,
    NoteLines,
    NoteQuery,
    SearchRequest,
    SearchResults,
    chat_answers,
)
from krmini.apps.memo.store import Store, damaged
from krmini.chat.template import prompt_budget, prompt_ids
from krmini.errors import KrminiError
from krmini.serve import schema
from krmini.serve.api import APIError, Extension, Served


@dataclass(frozen=True)
class Memo:
    db: Path

    def searcher(self, store: Store) -> Searcher:
        """The one place the server makes a Searcher (search settings join here)."""
        return Searcher(store)

    @contextmanager
    def opened(self) -> Iterator[Store]:
        """The index for one request; a damaged, vanished or busy index is the server's failure (500)."""
        try:
            with Store.open(self.db) as store:
                yield store
        except sqlite3.Error as exc:
            raise APIError(500, str(damaged(self.db, exc)), "server_error") from None
        except KrminiError as exc:
            raise APIError(500, str(exc), "server_error") from None

    def search(self, query: str, k: int) -> Results:
        with self.opened() as store:
            return self.searcher(store).search(query, k)


def chunk(hit: Hit, text: str | None = None) -> dict:
    return {"where": hit.where, "path": display(hit.path, hit.root), "heading": hit.heading,
            "line_start": hit.line_start, "line_end": hit.line_end, "page": hit.page, "score": round(hit.score, 4),
            "coverage": round(hit.coverage, 3), "text": hit.text if text is None else text}


def source(s: Source, cited: bool) -> dict:
    return {"number": s.number, **chunk(s.hit, s.text), "cited": cited, "cut": s.cut}


def retrieval(results: Results, refused: bool) -> dict:
    return {"mode": results.mode, "units": "+".join(results.kinds), "refused": refused,
            "best": chunk(results.hits[0]) if results.hits else None}


def event(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def refused_reply(served: Served, req: MemoChatRequest, text: str, extra: dict):
    """The refusal as /v1/chat/completions would answer it, without the model."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": served.model_name}
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if not req.stream:
        return {**head, "object": "chat.completion", "usage": usage, **extra, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    chunk_head = {**head, "object": "chat.completion.chunk"}
    events = [event({**chunk_head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
              for delta, finish in (({"role": "assistant", "content": ""}, None), ({"content": text}, None), ({}, "stop"))]
    if req.stream_options is not None and req.stream_options.include_usage:
        events.append(event({**chunk_head, "choices": [], "usage": usage}))
    events += [event({**head, "object": "memo.sources", **extra}), "data: [DONE]\n\n"]
    return StreamingResponse(iter(events), media_type="text/event-stream", headers=SSE_HEADERS)


@dataclass(frozen=True)
class Grounded:
    results: Results
    messages: list[dict] | None  # None: refused
    sources: list[Source]


def ground(memo: Memo, served: Served, req: MemoChatRequest, max_tokens: int | None) -> Grounded:
    """Retrieve for the last user message and fit the sources into the prompt (as `memo ask`)."""
    if req.messages[-1].role != "user":
        raise APIError(400, "messages: expected the question last (a message of role user), "
                       f"got {req.messages[-1].role}", param="messages")
    question = req.messages[-1].text()
    results = memo.search(question, req.k)
    hits = choose(results.hits, req.min_coverage)
    if not hits:
        return Grounded(results, None, [])
    render = answer_messages(question, [{"role": m.role, "content": m.text()} for m in req.messages[:-1]])

    def count(messages: list[dict]) -> int:
        return len(prompt_ids(served.tokenizer, messages))

    reply = max_tokens or served.default_max_tokens
    budget = prompt_budget(served.context, reply)
    alone = count(render([]))
    if alone > budget:
        raise APIError(400, f"the question with the conversation before it is {alone} tokens; with replies of up to "
                       f"{reply} tokens, this model's {served.context}-token context leaves {budget} for the prompt",
                       param="messages", code="context_length_exceeded")
    messages, sources = fit_sources(count, budget, render, hits)
    return Grounded(results, messages, sources)


def add_routes(memo: Memo, app: FastAPI, served: Served) -> None:
    @app.post("/v1/memo/search", responses={200: {"description": "the best chunks, best first", "model": SearchResults},
                                           400: schema.error("invalid request: the field at fault is `error.param`")})
    def search(req: SearchRequest):
        """The notes' chunks that best match `query` (BM25), each with where it is: `krmini memo search`."""
        results = memo.search(req.query, req.k)
        return {"mode": results.mode, "units": "+".join(results.kinds), "chunks": results.chunks,
                "hits": [{"n": n, **chunk(h), "note_id": h.note_id} for n, h in enumerate(results.hits, 1)]}

    @app.post("/v1/memo/chat", responses=chat_answers())
    async def chat(req: MemoChatRequest):
        """The last user message answered from the notes, with numbered sources (`krmini memo ask`)."""
        max_tokens = req.max_completion_tokens or req.max_tokens
        grounded = await asyncio.to_thread(ground, memo, served, req, max_tokens)
        if grounded.messages is None:
            served.check(req, [], max_tokens)  # another model is still a 404
            return refused_reply(served, req, refusal(grounded.results.hits, req.min_coverage),
                                 {"sources": [], "retrieval": retrieval(grounded.results, True)})

        def extra(texts: list[str]) -> dict:
            cited = cited_numbers(texts[0], grounded.sources)
            body = {"sources": [source(s, s.number in cited) for s in grounded.sources],
                    "retrieval": retrieval(grounded.results, False)}
            return {"object": "memo.sources", **body} if req.stream else body

        prompt = prompt_ids(served.tokenizer, grounded.messages)
        return await served.respond(req, [prompt], max_tokens, chat=True, extra=extra)

    @app.get("/v1/memo/note", responses={
        200: {"description": "the lines, numbered as citations number them", "model": NoteLines},
        400: schema.error("invalid request: the field at fault is `error.param`; a path with `..`, `.`, an empty "
                          "part, NUL or a leading `/` is refused"),
        404: schema.error("no indexed note has this path (files outside the indexed folders never are)")})
    def note(query: Annotated[NoteQuery, Query()]):
        """Lines of an indexed note, to show what a source cites."""
        end = query.end if query.end is not None else query.start + MAX_LINES - 1
        if end < query.start:
            raise APIError(400, f"end: expected a value >= start ({query.start}), got {end}", param="end")
        if end - query.start >= MAX_LINES:
            raise APIError(400, f"end: expected at most {MAX_LINES} lines from start, got {end - query.start + 1}",
                           param="end")
        try:
            with memo.opened() as store:
                found = files.find(store, query.path)
            lines, changed = files.lines(found, query.start, end, query.page)
        except files.Refused as exc:
            raise APIError(exc.status, str(exc), param="path") from None
        return {"path": query.path, "start": query.start, "end": end, "page": query.page, "changed": changed,
                "lines": [{"no": line.no, "page": line.page, "level": line.level, "text": line.text} for line in lines]}


def extension(db: Path) -> Extension:
    """The memo routes for `create_app`, after checking that `db` is a memo index the Searcher reads."""
    memo = Memo(db)
    try:
        with Store.open(db) as store:
            memo.searcher(store)
    except sqlite3.Error as exc:
        raise damaged(db, exc) from None
    return Extension("memo", lambda app, served: add_routes(memo, app, served), REQUESTS, ANSWERS)

"""What the memo endpoints of `krmini serve --memo` take and answer (pydantic models, as in
`krmini.serve.schema`: requests strict, answers for the OpenAPI document only)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from krmini.apps.memo.ask import MIN_COVERAGE
from krmini.serve import schema
from krmini.serve.schema import ChatCompletion, ChatRequest, Request, whole

MAX_K = 50  # chunks a request may ask for
MAX_QUERY = 2000  # characters of a search query
MAX_LINES = 500  # lines of a note one request may read

Count = Annotated[int, Field(ge=1, le=MAX_K), BeforeValidator(whole)]
LineNo = Annotated[int, Field(ge=1), BeforeValidator(whole)]


class SearchRequest(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"query": "마케팅 예산은 얼마야?", "k": 3}]})
    query: str = Field(min_length=1, max_length=MAX_QUERY, description="what to look for, in any words")
    k: Count = Field(5, description="how many chunks, best first")


class MemoChatRequest(ChatRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"messages": [{"role": "user", "content": "마케팅 예산은 얼마로 확정했어?"}], "temperature": 0},
        {"messages": [{"role": "user", "content": "제주 숙소는 어디야?"}], "stream": True, "k": 3},
    ]})
    k: Count = Field(4, description="chunks to retrieve for the last user message")
    min_coverage: float = Field(MIN_COVERAGE, ge=0, le=1, description=(
        "answer only when the best chunk holds this share of the question's words; below it the answer is "
        "a refusal and no model runs"))
    n: Annotated[int, Field(ge=1, le=1), BeforeValidator(whole)] = Field(
        1, description="one answer: its citations mark the sources")


class NoteQuery(BaseModel):
    """GET /v1/memo/note's query (read from the URL, so numbers come as text)."""

    model_config = ConfigDict(extra="ignore")
    path: str = Field(min_length=1, max_length=4096, description=(
        "the file as a source names it: its indexed folder's name, then the path inside (`notes/회의/3월.md`)"))
    start: LineNo = Field(1, description="first line (a PDF's: within `page`; a DOCX's: block ¶)")
    end: LineNo | None = Field(None, description=f"last line (default: start + {MAX_LINES - 1}); "
                               f"at most {MAX_LINES} lines")
    page: LineNo | None = Field(None, description="a PDF's page")


# What the handlers return (documentation only).


class Chunk(BaseModel):
    where: str = Field(description="the citation: `notes/a.md:12-18`, `notes/b.pdf p.3:4-9`, `notes/c.docx ¶5-7`")
    path: str = Field(description="the file: its indexed folder's name, then the path inside (GET /v1/memo/note)")
    heading: str = Field(description="the chunk's heading path (`3월 회의 > 예산`)")
    line_start: int
    line_end: int
    page: int | None
    score: float
    coverage: float = Field(ge=0, le=1, description="the share of the query's words the chunk holds")
    text: str


class SearchHit(Chunk):
    n: int = Field(ge=1, description="rank")
    note_id: str | None = Field(description="a JSONL record's id")


class SearchResults(BaseModel):
    mode: str = Field(description="how it was searched: `lexical` (BM25 over the index's unit kinds)")
    units: str = Field(description="the unit kinds used (`bigram`, `bigram+kiwi`)")
    chunks: int = Field(ge=0, description="chunks in the index")
    hits: list[SearchHit]


class Source(Chunk):
    number: int = Field(ge=1, description="the [n] the answer cites it by")
    cited: bool = Field(description="the answer cites [number]")
    cut: bool = Field(description="only the start of the chunk fitted the model's context")


class Retrieval(BaseModel):
    mode: str
    units: str
    refused: bool = Field(description="no chunk passed `min_coverage`: the answer says so and no model ran")
    best: Chunk | None = Field(description="the best chunk found, passing or not")


class MemoChatCompletion(ChatCompletion):
    sources: list[Source] = Field(description="what the prompt gave the model, numbered as the answer cites them")
    retrieval: Retrieval


class MemoSources(BaseModel):
    id: str
    created: int
    model: str
    object: Literal["memo.sources"] = Field(description="a stream's last event before `[DONE]`")
    sources: list[Source]
    retrieval: Retrieval


class NoteLine(BaseModel):
    no: int = Field(description="the number citations use")
    page: int | None
    level: int = Field(ge=0, le=6, description="heading level, 0 for body text")
    text: str


class NoteLines(BaseModel):
    path: str
    start: int
    end: int
    page: int | None
    changed: bool = Field(description="the file changed since it was indexed: the lines may have moved")
    lines: list[NoteLine]


REQUESTS = (SearchRequest, MemoChatRequest, NoteQuery)
ANSWERS = (SearchResults, MemoChatCompletion, MemoSources, NoteLines)


def chat_answers() -> dict:
    """/v1/memo/chat's responses: /v1/chat/completions' with the sources, a stream ending in a
    `memo.sources` event."""
    responses = schema.answers(MemoChatCompletion, schema.ChatCompletionChunk)
    stream = responses[200]["content"]["text/event-stream"]["schema"]
    stream["properties"]["data"]["anyOf"][1]["contentSchema"]["anyOf"].insert(1, schema.ref(MemoSources))
    responses[200]["description"] += "; the stream's last event before `[DONE]` holds the sources"
    responses[400] = schema.error("invalid request: the field at fault is `error.param`; a question that does "
                                  "not fit the context with the conversation before it has code "
                                  "`context_length_exceeded`")
    return responses


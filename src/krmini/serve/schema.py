"""What the API takes and answers, as pydantic models, and the OpenAPI document built from them.

Requests are validated strictly: a JSON `false` is no integer and `"1"` no number (pydantic would
otherwise turn them into 0 and 1.0), while `1.0` is the integer 1, as in JSON Schema. Every
constraint the server enforces is declared on the models, so the published schema and the server
reject the same requests. The response models only
describe what the handlers return; `describe` makes FastAPI's generated document true for this
server: OpenAI's error shape for 400/401/404/500 instead of FastAPI's 422, the one model name that
exists, and the API key where one is required.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from krmini.infer.sampling import SEED_LIMIT

MAX_N = 8  # choices per request, and prompts per completion request
MAX_STOPS = 4
MAX_INPUTS = 64  # texts (or token-id lists) per embeddings request
REF = "#/components/schemas/{model}"

NonEmpty = Annotated[str, Field(min_length=1)]


def whole(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# whole floats become ints, then the strict check rejects 1.5, true and "1"
Tokens = Annotated[int, Field(ge=1), BeforeValidator(whole)]
Choices = Annotated[int, Field(ge=1, le=MAX_N), BeforeValidator(whole)]
Seed = Annotated[int, Field(ge=0, le=SEED_LIMIT - 1), BeforeValidator(whole)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0), BeforeValidator(whole)]], Field(min_length=1)]  # < vocab: describe


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # unknown OpenAI fields are ignored


class ContentPart(Request):
    type: str = Field(description='"text" parts are read; others (images, …) are ignored')
    text: str = ""


class Message(Request):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        """Content as text; OpenAI clients may send a list of {"type": "text", "text": …} parts."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if p.type == "text")


class StreamOptions(Request):
    include_usage: bool = Field(False, description="end the stream with a chunk that carries `usage`")


class Sampling(Request):
    model: str | None = Field(None, description="the served model's id (GET /v1/models); another is 404")
    max_tokens: Tokens | None = Field(None, description="capped so prompt and reply fit the context")
    temperature: float = Field(0.7, ge=0, le=2, description="0: greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    n: Choices = Field(1, description="choices per prompt; they share one prefill")
    stream: bool = Field(False, description="answer with server-sent events")
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=MAX_STOPS)] | None = Field(
        None, description="the reply ends before the first of these strings")
    seed: Seed | None = None
    stream_options: StreamOptions | None = None


class ChatRequest(Sampling):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"messages": [{"role": "user", "content": "안녕하세요"}], "max_tokens": 32},
        {"messages": [{"role": "system", "content": "친절한 비서"}, {"role": "user", "content": "배고파"}],
         "stream": True, "stream_options": {"include_usage": True}, "temperature": 0},
    ]})
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Tokens | None = Field(None, description="max_tokens under its newer name")


class CompletionRequest(Sampling):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "대한민국은", "max_tokens": 32},
        {"prompt": ["대한민국은", "서울은"], "n": 2, "seed": 1, "stream": True},
    ]})
    prompt: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_N)] = Field(
        description=f"one text, or up to {MAX_N}: prompt p's choice s is choice p·n + s")


class TokenizeRequest(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"messages": [{"role": "user", "content": "안녕하세요"}]}]})
    messages: list[Message] = Field(min_length=1, description="counted as /v1/chat/completions renders them")


class EmbeddingRequest(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"input": "대한민국의 수도는 서울이다."},
        {"input": ["첫째 문단", "둘째 문단"], "encoding_format": "base64"},
    ]})
    input: (NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_INPUTS)] | TokenIds
            | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)]) = Field(
        description=f"a text, up to {MAX_INPUTS} texts, or token ids (one list, or up to {MAX_INPUTS}); a text is "
                    "BOS + its tokens; what is longer than the context is cut to its first context tokens")
    model: str | None = Field(None, description="the served model's id (GET /v1/models); another is 404")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each embedding as the base64 of its little-endian float32 bytes")


# The names an error's `param` is made of (pydantic's locations also hold union member tags)
FIELDS = frozenset(name for m in (ChatRequest, CompletionRequest, TokenizeRequest, EmbeddingRequest, Message,
                                  ContentPart, StreamOptions)
                   for name in m.model_fields)


# What the handlers return (documentation only: the handlers build plain dicts).


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = Field(description="the request field at fault")
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    queued: int = Field(ge=0, description="requests waiting for the engine")
    running: int = Field(ge=0, description="requests in the batch being decoded")


class Tokenized(BaseModel):
    count: int = Field(ge=1, description="prompt tokens, BOS and the assistant's turn marker included")
    max_model_len: int = Field(description="the model's context in tokens")
    tokens: list[int]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


Finish = Literal["stop", "length"]  # a stop token or string; max_tokens or the context


class Reply(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int = Field(ge=0)
    message: Reply
    finish_reason: Finish


class Completed(BaseModel):
    id: str
    created: int
    model: str
    usage: Usage


class ChatCompletion(Completed):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]


class CompletionChoice(BaseModel):
    index: int = Field(ge=0)
    text: str
    logprobs: None
    finish_reason: Finish


class Completion(Completed):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]


class Delta(BaseModel):
    role: Literal["assistant"] = Field("assistant", description="in each choice's first chunk")
    content: str = ""


class ChatChunkChoice(BaseModel):
    index: int = Field(ge=0)
    delta: Delta
    finish_reason: Finish | None


class Chunk(BaseModel):
    id: str
    created: int
    model: str
    usage: Usage = Field(None, description="only in the last chunk, with stream_options.include_usage "
                         "(its `choices` is empty)")


class ChatCompletionChunk(Chunk):
    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice]


class CompletionChunkChoice(BaseModel):
    index: int = Field(ge=0)
    text: str
    logprobs: None
    finish_reason: Finish | None


class CompletionChunk(Chunk):
    object: Literal["text_completion"]
    choices: list[CompletionChunkChoice]


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int = Field(ge=0, description="the input's position")
    embedding: list[float] | str = Field(description="mean of the final hidden states (after the final norm), "
                                         "unit length; with encoding_format base64, its float32 bytes in base64")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(ge=1)
    total_tokens: int = Field(ge=1)


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


REQUESTS = (ChatRequest, CompletionRequest, TokenizeRequest, EmbeddingRequest)
ANSWERS = (ErrorResponse, Health, Tokenized, ModelList, ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk,
           EmbeddingList)


def ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ref(ErrorResponse)}}}


def answers(reply: type[BaseModel], chunk: type[BaseModel]) -> dict:
    """The responses of a generating operation: its reply as JSON or, with `stream: true`, as
    server-sent events (each event's `data` is a chunk, an error, or `[DONE]` at the end)."""
    event = {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
        {"const": "[DONE]"},
        {"type": "string", "contentMediaType": "application/json",
         "contentSchema": {"anyOf": [ref(chunk), ref(ErrorResponse)]}},
    ]}}}
    return {
        200: {"description": "the reply; with `stream: true`, `data: {chunk}` events ending in `data: [DONE]` "
              "(an error after the stream began comes as a `data: {\"error\": …}` event)",
              "content": {"application/json": {"schema": ref(reply)}, "text/event-stream": {"schema": event}}},
        400: error("invalid request: the field at fault is `error.param`; a prompt longer than the context "
                   "has code `context_length_exceeded`"),
        404: error("`model` is not the served model (code `model_not_found`)"),
    }


def describe(spec: dict, model_name: str, keyed: bool, requests: tuple = (), answers: tuple = (),
             vocab: int | None = None) -> dict:
    """FastAPI's generated document, made true for this server (see the module's docstring)."""
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # this server answers 400, never 422
        schemas.pop(name, None)
    # pydantic's own schemas: FastAPI's copies went through a model that made every bound a float
    # (the largest seed, 2^64 - 1, became 2^64)
    models = [(m, "validation") for m in (*REQUESTS, *requests)] + [(m, "serialization") for m in (*ANSWERS, *answers)]
    schemas.update(models_json_schema(models, ref_template=REF)[1]["$defs"])
    for name in ("ChatRequest", "CompletionRequest", "EmbeddingRequest"):
        schemas[name]["properties"]["model"]["anyOf"][0] = {"type": "string", "enum": [model_name]}
    if vocab is not None:  # token ids are below the served model's vocabulary size
        ids, many = schemas["EmbeddingRequest"]["properties"]["input"]["anyOf"][2:]
        for item in (ids["items"], many["items"]["items"]):
            item["maximum"] = vocab - 1
    if keyed:
        components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer",
                                                    "description": "the server's --api-key"}}
    for path, item in spec["paths"].items():
        for op in item.values():
            responses = op["responses"]
            responses.pop("422", None)
            if keyed and (path.startswith("/v1/") or path == "/tokenize"):
                op["security"] = [{"apiKey": []}]
                responses["401"] = error("missing or incorrect API key (code `invalid_api_key`)")
            responses["500"] = error("the server failed (details only in its log)")
    return spec

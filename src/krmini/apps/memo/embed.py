"""Embedders for dense search, and the optional reranker.

    st:PATH_OR_NAME   a sentence-transformers model (`pip install 'krmini[memo]'`): a folder it saved, or
                      a name it finds in its cache or on the Hub (it downloads only what it is told to);
                      safetensors weights only. Passages and queries go through `encode_document` and
                      `encode_query`, so a model with query/passage prompts (E5, BGE) gets them.
    openai:URL        POST URL/v1/embeddings of an OpenAI-compatible server (ours: `krmini serve`; vLLM,
                      Ollama, TEI, OpenAI), BATCH texts per request; the model from --embed-model (default:
                      the first of URL/v1/models), the key from --embed-api-key or OPENAI_API_KEY.

Every embedder returns float32 rows of unit length and names itself by `Identity` (kind, name,
dimension): the index stores it with its vectors (vectors.py), and vectors of another model are
refused, since they do not compare.

`--rerank st:PATH_OR_NAME` is a sentence-transformers CrossEncoder: it scores (question, passage)
pairs, and the top `RERANK_DEPTH` hits are reordered by that score.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from krmini.argtypes import number
from krmini.chat.remote import KEY_ENV, OpenAIBackend, server_root
from krmini.errors import KrminiError

ST, OPENAI = "st:", "openai:"
BATCH = 64  # texts per /v1/embeddings request
RERANK_DEPTH = 20
MODES = ("lexical", "dense", "hybrid")
DENSE_WEIGHT = 0.25  # hybrid: the dense ranking's weight against the lexical one's 1 (search.fuse, docs/memo-dense.md)


@dataclass(frozen=True)
class Identity:
    kind: str  # "st" or "openai"
    name: str  # the model's folder (absolute) or name; the served model's id
    dim: int
    spec: str  # what opens it again: st:NAME or openai:URL

    def __str__(self) -> str:
        return f"{self.kind}:{self.name} ({self.dim}-dim)"

    def same_model(self, other: Identity) -> bool:
        """The server's address may change; the model and its dimension may not."""
        return (self.kind, self.name, self.dim) == (other.kind, other.name, other.dim)


class Embedder(Protocol):
    identity: Identity

    def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        """(len(texts), dim) float32 rows of unit length."""
        ...


def unit_rows(rows: np.ndarray, where: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.isfinite(rows).all() or (norms == 0).any():
        raise KrminiError(f"{where}: an embedding is zero or not finite")
    return rows / norms


def _sentence_transformers():
    try:
        import sentence_transformers
    except ImportError:
        raise KrminiError("st: models need sentence-transformers: pip install 'krmini[memo]'") from None
    return sentence_transformers


def _load(cls, flag: str, name: str):
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own lines only: no loading bars on stderr
    local = Path(name).expanduser()
    resolved = str(local.resolve()) if local.exists() else name
    try:
        return resolved, cls(resolved, model_kwargs={"use_safetensors": True})
    except Exception as exc:  # transformers and the Hub raise many kinds; the first line says which
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise KrminiError(f"{flag} st:{name}: cannot load a sentence-transformers model ({reason})") from None


class STEmbedder:
    def __init__(self, name: str):
        self.name, self.model = _load(_sentence_transformers().SentenceTransformer, "--embed", name)
        dim = self.model.get_embedding_dimension()
        self.identity = Identity("st", self.name, int(dim), ST + self.name)

    def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        encode = self.model.encode_query if query else self.model.encode_document
        rows = encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
        return unit_rows(rows, self.identity.spec)


class OpenAIEmbedder:
    def __init__(self, url: str, model: str | None = None, api_key: str | None = None):
        base = server_root(url, "--embed openai:")
        self.http = OpenAIBackend(base, api_key or os.environ.get(KEY_ENV), model)
        self.where = f"{base}/v1/embeddings"
        if model is None:
            answer = self.http.request("GET", "/v1/models")
            models = answer.get("data") if isinstance(answer, dict) else None
            if not models or not isinstance(models[0], dict) or not isinstance(models[0].get("id"), str):
                raise KrminiError(f"{base}/v1/models: the server lists no model; pass --embed-model")
            model = models[0]["id"]
        self.model = model
        dim = self._request(["차원"]).shape[1]  # one short text: the server answers, and its dimension is known
        self.identity = Identity("openai", model, dim, OPENAI + base)

    def _request(self, texts: list[str]) -> np.ndarray:
        answer = self.http.request("POST", "/v1/embeddings", {"model": self.model, "input": texts,
                                                                 "encoding_format": "float"})
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != len(texts):
            got = f"{len(data)} items" if isinstance(data, list) else "no list"
            raise KrminiError(f"{self.where}: expected `data` with {len(texts)} embeddings, got {got}")
        try:
            rows = [item["embedding"] for item in sorted(data, key=lambda item: item["index"])]
            matrix = np.asarray(rows, dtype=np.float32)
        except (KeyError, TypeError, ValueError):
            raise KrminiError(f"{self.where}: expected `data` items {{index, embedding: [numbers]}} "
                              "of one length (encoding_format float)") from None
        if matrix.ndim != 2 or matrix.shape[1] == 0:
            raise KrminiError(f"{self.where}: expected `data` items {{index, embedding: [numbers]}} of one length")
        return unit_rows(matrix, self.where)

    def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        out = [self._request(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)]
        matrix = np.concatenate(out) if out else np.zeros((0, self.identity.dim), np.float32)
        if matrix.shape[1] != self.identity.dim:
            raise KrminiError(f"{self.where}: embeddings of {matrix.shape[1]} numbers, earlier {self.identity.dim}")
        return matrix


def open_asked_or_stored(args, identity, hint: str | None) -> Embedder:
    """The embedder `args` names (--embed, --embed-model, --embed-api-key), else the one the index
    stored (`identity`); an error opening it ends with `hint` when there is one."""
    spec = args.embed or identity.spec
    model = args.embed_model or (identity.name if not args.embed and identity.kind == "openai" else None)
    try:
        return open_embedder(spec, model, args.embed_api_key)
    except KrminiError as exc:
        if hint is not None:
            raise KrminiError(f"{exc} ({hint})") from None
        raise


def open_embedder(spec: str, model: str | None = None, api_key: str | None = None) -> Embedder:
    if spec.startswith(OPENAI):
        return OpenAIEmbedder(spec[len(OPENAI):], model, api_key)
    if model is not None:
        raise KrminiError("--embed-model: only with --embed openai:URL (an st: model is named by its path)")
    if spec.startswith(ST) and spec[len(ST):]:
        return STEmbedder(spec[len(ST):])
    raise KrminiError(f"--embed: expected st:PATH_OR_NAME or openai:URL, got {spec!r}")


class Reranker:
    def __init__(self, spec: str):
        if not spec.startswith(ST) or not spec[len(ST):]:
            raise KrminiError(f"--rerank: expected st:PATH_OR_NAME (a sentence-transformers CrossEncoder), got {spec!r}")
        name, self.model = _load(_sentence_transformers().CrossEncoder, "--rerank", spec[len(ST):])
        self.name = ST + name

    def scores(self, query: str, passages: list[str]) -> list[float]:
        return [float(s) for s in self.model.predict([(query, p) for p in passages], show_progress_bar=False)]


def add_embed_args(p: argparse.ArgumentParser, index: bool = False) -> None:
    what = ("embed the chunks with this model (kept by the index: later runs embed only new chunks)" if index else
            "the embedder to search with (default: the one the index was embedded with)")
    p.add_argument("--embed", metavar="st:MODEL|openai:URL", help=what)
    p.add_argument("--embed-model", metavar="NAME",
                   help="with --embed openai:URL, the model name (default: the first of /v1/models)")
    p.add_argument("--embed-api-key", metavar="KEY", help="with --embed openai:URL, the key (default: $OPENAI_API_KEY)")
    if not index:
        p.add_argument("--mode", choices=MODES,
                       help="lexical (BM25), dense (embeddings) or hybrid (both, fused); default: hybrid when the "
                            "index has vectors, else lexical")
        p.add_argument("--dense-weight", type=number(0), default=DENSE_WEIGHT, metavar="W",
                       help=f"hybrid: the dense ranking's weight against the lexical one's 1 (default {DENSE_WEIGHT:g}, "
                            "measured with weak embedders; a strong one may earn more)")
        p.add_argument("--rerank", metavar="st:MODEL",
                       help=f"reorder the top {RERANK_DEPTH} hits with this sentence-transformers CrossEncoder")

"""One engine worker: a single thread owns the model and serves generation requests in turn.

Requests from any number of HTTP handlers are queued; the worker generates one at a time and passes
events back through each request's own callback (text pieces, then a final `Done`). One owner means
no two requests ever touch the model or its KV cache at once, and a batching engine can later
replace the loop without changing the HTTP layer. Stop strings are matched on the decoded text,
holding back any tail that could still become a stop string.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from krmini.errors import KrminiError
from krmini.infer.generate import SamplingConfig, TextStream, generate_ids
from krmini.infer.load import LoadedModel


@dataclass
class Done:
    finish_reason: str  # "stop" (stop token or string), "length" (max_tokens or context) or "cancelled"
    completion_tokens: int
    error: str | None = None
    internal: bool = False  # the error is ours (500), not the request's (400)


@dataclass
class Job:
    prompt_ids: list[int]
    sampling: SamplingConfig
    stop_ids: set[int]
    stop: list[str]
    emit: Callable[[str | Done], None]  # called from the worker thread
    cancelled: threading.Event = field(default_factory=threading.Event)


class StopStrings:
    """Cut streamed text at the first stop string, never emitting text that could start one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was hit)."""
        self.buffer += piece
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            text, self.buffer = self.buffer[: min(hits)], ""
            return text, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])), default=0)
        text, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return text, False

    def flush(self) -> str:
        text, self.buffer = self.buffer, ""
        return text


class Engine:
    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, name="krmini-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.queue.put(job)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _serve(self) -> None:
        while (job := self.queue.get()) is not None:
            if job.cancelled.is_set():
                job.emit(Done("cancelled", 0))
                continue
            try:
                job.emit(self._generate(job))
            except KrminiError as exc:
                job.emit(Done("error", 0, str(exc)))
            except Exception as exc:  # a bug must fail this request, never stop the worker for all others
                job.emit(Done("error", 0, f"internal error: {type(exc).__name__}: {exc}", internal=True))

    def _generate(self, job: Job) -> Done:
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        stream, stops = TextStream(tokenizer), StopStrings(job.stop)
        context = model.config.max_position_embeddings
        steps = min(job.sampling.max_new_tokens, context - len(job.prompt_ids))
        count = 0
        for tid in generate_ids(model, job.prompt_ids, job.sampling, job.stop_ids):
            count += 1
            if job.cancelled.is_set():
                return Done("cancelled", count)
            text, hit = stops.feed(stream.push(tid))
            if text:
                job.emit(text)
            if hit:
                return Done("stop", count)
        text, hit = stops.feed(stream.flush())
        text += "" if hit else stops.flush()
        if text:
            job.emit(text)
        return Done("stop" if hit or count < steps else "length", count)

"""One engine worker: a single thread owns the model, and concurrent requests share batches.

HTTP handlers queue jobs. The worker takes every job waiting (up to `max_batch`) and runs them as one
batch through the inference engine (`krmini.infer.engine.Engine.stream_batch`: one prefill, one
decode loop, stop strings held back), passing each job's text pieces and a final `Done` back through
its callback. A job that arrives mid-batch waits for the next batch. One owner means no two
requests ever touch the model or its KV cache at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from krmini.errors import KrminiError
from krmini.infer.compiled import CompiledDecoder
from krmini.infer.engine import Engine as InferenceEngine
from krmini.infer.load import LoadedModel
from krmini.infer.sampling import SamplingConfig


@dataclass
class Done:
    finish_reason: str  # "stop" (stop token or string), "length" (max_tokens or context) or "error"
    completion_tokens: int
    error: str | None = None
    internal: bool = False  # the error is ours (500), not the request's (400)


@dataclass
class Job:
    prompt_ids: list[int]  # already templated, BOS included
    sampling: SamplingConfig  # stop strings travel in `sampling.stop`
    emit: Callable[[str | Done], None]  # called from the worker thread
    cancelled: threading.Event = field(default_factory=threading.Event)


class Engine:
    def __init__(self, loaded: LoadedModel, stop_ids: set[int], max_batch: int = 16,
                 decoder: CompiledDecoder | None = None) -> None:
        self.loaded = loaded
        self.core = InferenceEngine(loaded.model, loaded.tokenizer, stop_ids=stop_ids, decoder=decoder)
        self.max_batch = max_batch
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, name="krmini-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.queue.put(job)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _serve(self) -> None:
        running = True
        while running:
            job = self.queue.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    running = False
                    break
                jobs.append(nxt)
            self._run([j for j in jobs if not j.cancelled.is_set() and self._accepts(j)])

    def _accepts(self, job: Job) -> bool:
        """Check one job alone, so a bad request fails by itself rather than its whole batch."""
        try:
            job.sampling.validate()
            self.core.prompt_ids(job.prompt_ids, job.sampling)
        except KrminiError as exc:
            job.emit(Done("error", 0, str(exc)))
            return False
        return True

    def _run(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        counts = [0] * len(jobs)
        finished = [False] * len(jobs)
        try:
            for ev in self.core.stream_batch([(j.prompt_ids, j.sampling) for j in jobs]):
                job = jobs[ev.request]
                counts[ev.request] += ev.token_id is not None
                if job.cancelled.is_set():
                    if all(j.cancelled.is_set() for j in jobs):
                        return
                    continue
                if ev.text:
                    job.emit(ev.text)
                if ev.finish_reason:
                    finished[ev.request] = True
                    job.emit(Done(ev.finish_reason, counts[ev.request]))
        except Exception as exc:  # a bug must fail these requests, never stop the worker for all others
            for job, done in zip(jobs, finished, strict=True):
                if not done:
                    job.emit(Done("error", 0, f"internal error: {type(exc).__name__}: {exc}", internal=True))

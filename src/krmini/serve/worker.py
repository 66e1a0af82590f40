"""The server's worker: one thread owns the engine, and concurrent requests share batches.

HTTP handlers check each request on arrival (`Engine.prepare`: settings, prompt, context — once)
and queue it as a job. The worker takes every job waiting (up to `max_batch`) and runs them as one
batch through the inference engine (`Engine.stream_prepared`: one prefill, one decode loop, stop
strings held back). A request with `n` choices is one job whose samples share its prefill. Each
event goes back through the job's callback as (choice index, text piece or `Done`). A job that
arrives mid-batch waits for the next batch. One owner means no two requests ever touch the model or
its KV cache at once.

Embeddings (`embed`) run in the caller's thread under the same lock as the worker's batches, so the
model still has one user at a time.

Jobs in a batch do not share their fate: a job whose client left (`cancelled`) stops being decoded
at the next step, and a job that fails inside the engine ends alone with an internal error while the
others finish normally. Only a failure of the shared forward pass fails the whole batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from krmini.infer.engine import Engine
from krmini.infer.sampling import SamplingConfig

log = logging.getLogger("krmini.serve")  # the server's log: what a client is not told


@dataclass
class Done:
    finish_reason: str  # "stop" (stop token or string), "length" (max_tokens or context) or "error"
    completion_tokens: int
    error: str | None = None
    internal: bool = False  # the error is ours (500), not the request's (400)


@dataclass
class Job:
    prompt_ids: list[int]  # through `Engine.prepare`: templated, BOS included, fitted to the context
    sampling: SamplingConfig  # `n` choices; stop strings travel in `sampling.stop`
    emit: Callable[[int, str | Done], None]  # (choice index, event), called from the worker thread
    cancelled: threading.Event = field(default_factory=threading.Event)


class Worker:
    def __init__(self, engine: Engine, max_batch: int = 16) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.running = 0  # jobs in the batch being decoded now (/health reports it)
        self.lock = threading.Lock()  # held by a batch or an embedding: one user of the model at a time
        self.thread = threading.Thread(target=self._serve, name="krmini-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.queue.put(job)

    def embed(self, ids_batch: list[list[int]]):
        """`Engine.embed`, between batches (it blocks: call it from a thread of its own)."""
        with self.lock:
            return self.engine.embed(ids_batch)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _serve(self) -> None:
        running = True
        while running:
            job = self.queue.get()
            if job is None:
                return
            jobs, rows = [job], job.sampling.n
            while rows < self.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    running = False
                    break
                jobs.append(nxt)
                rows += nxt.sampling.n
            jobs = [j for j in jobs if not j.cancelled.is_set()]
            self.running = len(jobs)
            try:
                with self.lock:
                    self._run(jobs)
            finally:
                self.running = 0

    def _run(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        counts = [[0] * j.sampling.n for j in jobs]
        finished = [[False] * j.sampling.n for j in jobs]
        requests = [(j.prompt_ids, j.sampling) for j in jobs]
        try:
            for ev in self.engine.stream_prepared(requests, cancelled=lambda r: jobs[r].cancelled.is_set()):
                job, count = jobs[ev.request], counts[ev.request]
                count[ev.sample] += ev.token_id is not None
                if ev.error is not None:
                    log_failure(ev.error, "one request")
                    job.emit(ev.sample, Done("error", count[ev.sample], "internal server error", internal=True))
                    finished[ev.request][ev.sample] = True
                    continue
                if ev.text:
                    job.emit(ev.sample, ev.text)
                if ev.finish_reason:
                    finished[ev.request][ev.sample] = True
                    job.emit(ev.sample, Done(ev.finish_reason, count[ev.sample]))
        except Exception as exc:  # a bug must fail these requests, never stop the worker for all others
            log_failure(exc, f"a batch of {len(jobs)}")
            for job, done in zip(jobs, finished, strict=True):
                for sample, ended in enumerate(done):
                    if not ended:
                        job.emit(sample, Done("error", 0, "internal server error", internal=True))


def log_failure(exc: Exception, what: str) -> None:
    """The details go to the server's log; clients get a plain "internal server error"."""
    log.error("%s failed inside the engine: %s: %s", what, type(exc).__name__, exc)

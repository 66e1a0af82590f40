"""The server's worker: one thread owns the engine, and concurrent requests share batches.

HTTP handlers check each request on arrival (`Engine.prepare`: settings, prompt, context — once)
and queue it as a job. The worker takes every job waiting (up to `max_batch`) and runs them as one
batch through the inference engine (`Engine.stream_prepared`: one prefill, one decode loop, stop
strings held back). A request with `n` choices is one job whose samples share its prefill. Each
event goes back through the job's callback as (choice index, text piece or `Done`). A job that
arrives mid-batch waits for the next batch. One owner means no two requests ever touch the model or
its KV cache at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from krmini.infer.engine import Engine
from krmini.infer.sampling import SamplingConfig


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
        self.thread = threading.Thread(target=self._serve, name="krmini-worker", daemon=True)
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
            self._run([j for j in jobs if not j.cancelled.is_set()])

    def _run(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        counts = [[0] * j.sampling.n for j in jobs]
        finished = [[False] * j.sampling.n for j in jobs]
        try:
            for ev in self.engine.stream_prepared([(j.prompt_ids, j.sampling) for j in jobs]):
                job = jobs[ev.request]
                counts[ev.request][ev.sample] += ev.token_id is not None
                if job.cancelled.is_set():
                    if all(j.cancelled.is_set() for j in jobs):
                        return
                    continue
                if ev.text:
                    job.emit(ev.sample, ev.text)
                if ev.finish_reason:
                    finished[ev.request][ev.sample] = True
                    job.emit(ev.sample, Done(ev.finish_reason, counts[ev.request][ev.sample]))
        except Exception as exc:  # a bug must fail these requests, never stop the worker for all others
            for job, done in zip(jobs, finished, strict=True):
                for sample, ended in enumerate(done):
                    if not ended:
                        job.emit(sample, Done("error", 0, f"internal error: {type(exc).__name__}: {exc}",
                                              internal=True))

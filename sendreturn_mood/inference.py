"""The one inference worker: every ready window of every room, run as batches in a thread.

Why one worker: the model costs far less per window in a batch than alone, and a single consumer keeps the
per-room order of results without locks. Why a thread: onnxruntime releases the GIL, so the event loop keeps
reading audio and sending updates while the model runs; the loop never waits on the model.

Rules:
- the queue is bounded (`queue_size` windows); `submit` waits when it is full, which slows only the source that
  is submitting (its websocket reads pause, TCP pushes back) - never the event loop or other rooms' sends;
- each batch takes everything queued (at most `max_batch`), grouped by frame count (windows of one model have the
  same count except a short final tail window), each group one `predict` call;
- if a batch fails, its windows are retried one by one so one room's bad window reaches that room only;
- results are delivered on the event loop, in submission order, through the `deliver` callback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .metrics import ServerMetrics
from .model import MoodModel, Prediction
from .pipeline import Window

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 1024


@dataclass
class Job:
    """One window waiting for the model. `owner`/`generation` are opaque to the worker (the server's room and
    its track generation); `arrival` is the perf_counter time at which the window's last audio byte arrived."""

    owner: Any
    window: Window
    arrival: float
    generation: int = 0
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class Result:
    moods: np.ndarray | None  # [n_moods] softmax, None on failure
    genres: np.ndarray | None  # [n_genres] or None
    error: Exception | None = None
    embedding: np.ndarray | None = None  # [d] the model's embedding, when it has one (track-change detection)


Deliver = Callable[[Job, Result], None]


def _result(pred: Prediction, k: int) -> Result:
    return Result(
        pred.moods[k],
        None if pred.genres is None else pred.genres[k],
        embedding=None if pred.embeddings is None else pred.embeddings[k],
    )


class InferenceWorker:
    """Single consumer of a bounded queue of windows; runs the model in one background thread."""

    def __init__(
        self,
        model: MoodModel,
        deliver: Deliver,
        max_batch: int = 64,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.model = model
        self.deliver = deliver
        self.max_batch = max(1, int(max_batch))
        self.metrics = metrics
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max(1, queue_size))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="inference-worker")

    async def stop(self) -> None:
        """Stop the worker; windows still queued are cancelled (their `done` futures too)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            job = self._queue.get_nowait()
            job.done.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, job: Job) -> Job:
        """Queue a window; waits while the queue is full (back-pressure on the submitting source only)."""
        await self._queue.put(job)
        if self.metrics:
            self.metrics.queue_depth.set(self._queue.qsize())
        return job

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            if self.metrics:
                self.metrics.queue_depth.set(self._queue.qsize())
            results, stats = await loop.run_in_executor(self._executor, self._infer, [j.window.logmel for j in jobs])
            if self.metrics:
                for size, seconds in stats:
                    self.metrics.batches.observe(size)
                    self.metrics.inference_seconds.observe(seconds)
                    self.metrics.windows.inc(size)
            owners: set[int] = set()
            for job, result in zip(jobs, results):
                if id(job.owner) in owners:
                    # A second window of the same owner in this batch (a source streaming faster than real time):
                    # let the woken sender tasks write the earlier updates first, so a client that keeps up never
                    # sees its bounded outbox conflate because of a burst delivered in one go. In real time a
                    # batch holds one window per room and is delivered without yielding (lower latency).
                    await asyncio.sleep(0)
                    owners.clear()
                owners.add(id(job.owner))
                try:
                    self.deliver(job, result)
                except Exception:  # a delivery bug must not stop the worker for every other room
                    log.exception("delivering an inference result failed")
                if not job.done.done():
                    job.done.set_result(None)

    def _infer(self, windows: list[np.ndarray]) -> tuple[list[Result], list[tuple[int, float]]]:
        """Runs in the worker thread: group by frame count, one predict per group, isolate failures.
        Returns the results and (batch size, seconds) per predict call; metrics are updated on the loop."""
        results: list[Result | None] = [None] * len(windows)
        stats: list[tuple[int, float]] = []
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, w in enumerate(windows):
            groups.setdefault(w.shape, []).append(i)
        for idx in groups.values():
            t0 = time.perf_counter()
            try:
                pred = self.model.predict(np.stack([windows[i] for i in idx]))
                for k, i in enumerate(idx):
                    results[i] = _result(pred, k)
            except Exception as e:  # retry alone: only the window(s) that really fail get an error
                log.warning("batch of %d failed (%s); retrying windows one by one", len(idx), e)
                for i in idx:
                    results[i] = self._one(windows[i])
            stats.append((len(idx), time.perf_counter() - t0))
        return [r if r is not None else Result(None, None, RuntimeError("no result")) for r in results], stats

    def _one(self, window: np.ndarray) -> Result:
        try:
            pred = self.model.predict(window[None])
            return _result(pred, 0)
        except Exception as e:
            return Result(None, None, e)

"""The one inference worker: every ready window of every room, run as batches in a thread.

Why one worker: a single consumer keeps the per-room order of results without locks, and windows of many rooms can
share a model call. Why a thread: onnxruntime releases the GIL, so the event loop keeps reading audio and sending
updates while the model runs; the loop never waits on the model.

The worker is a plain thread reading a thread-safe queue, and a whole batch comes back to the loop as one callback
(`call_soon_threadsafe`). Why not an asyncio task handing each batch to an executor: every await of such a task
waits for its turn behind every other ready callback, so on a busy loop (hundreds of sources) each batch paid several
full rounds of the loop before its results went out; here the loop is involved once per batch, and the thread
collects windows, waits for the tick and runs the model on its own.

Batches are real: after the first window of a batch arrives the thread waits `tick` seconds (a few ms,
`analysis.batch_tick_ms`) for the windows of other rooms falling due meanwhile, so they share one model call, one
thread hand-off and one callback instead of one each. When windows are already waiting (the model was busy) it does
not wait. Every hand-off needs the GIL, which a busy event loop holds for up to the interpreter's switch interval
(5 ms by default), so the worker lowers the switch interval to `GIL_SWITCH_INTERVAL` (a waiting thread then gets the
GIL within 1 ms; with no thread waiting nothing changes).

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
import collections
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..metrics import ServerMetrics
from .contract import MoodModel, Prediction
from ..audio.pipeline import Window

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 1024
DEFAULT_TICK = 0.005  # seconds the worker waits for more windows after the first of a batch
GIL_SWITCH_INTERVAL = 0.001  # seconds; Python's default of 0.005 delays every hand-off to and from the worker thread


@dataclass(eq=False)
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
    """One window's outcome: its Prediction (the model's outputs by name), or the error that lost it."""

    prediction: Prediction | None
    error: Exception | None = None


Deliver = Callable[[Job, Result], None]


class InferenceWorker:
    """Single consumer of a bounded queue of windows; runs the model in one background thread."""

    def __init__(
        self,
        model: MoodModel,
        deliver: Deliver,
        max_batch: int = 64,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        metrics: ServerMetrics | None = None,
        tick: float = DEFAULT_TICK,
    ) -> None:
        self.model = model
        self.deliver = deliver
        self.max_batch = max(1, int(max_batch))
        self.tick = max(0.0, float(tick))
        self.metrics = metrics
        self._size = max(1, queue_size)
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._slots: asyncio.Semaphore | None = None  # created on the loop by start()
        self._pending: set[Job] = set()  # submitted, not yet delivered (cancelled by stop)
        self._ready: collections.deque[tuple[Job, Result]] = collections.deque()  # back from the model, on the loop
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if sys.getswitchinterval() > GIL_SWITCH_INTERVAL:
            sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._slots = asyncio.Semaphore(self._size)
            self._thread = threading.Thread(target=self._thread_main, name="inference", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Stop the worker; windows still queued or running are cancelled (their `done` futures too)."""
        if self._thread is not None:
            self._queue.put(None)
            thread, self._thread = self._thread, None
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10.0)
        for job in list(self._pending):
            job.done.cancel()
        self._pending.clear()
        self._ready.clear()

    @property
    def depth(self) -> int:
        """Windows submitted and not yet delivered."""
        return len(self._pending)

    async def submit(self, job: Job) -> Job:
        """Queue a window; waits while the queue is full (back-pressure on the submitting source only)."""
        assert self._slots is not None, "start() the worker first"
        await self._slots.acquire()
        self._pending.add(job)
        self._queue.put(job)
        if self.metrics:
            self.metrics.queue_depth.set(len(self._pending))
        return job

    # ------------------------------------------------------------------------------------------ worker thread

    def _thread_main(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            if self.tick and self.max_batch > 1 and self._queue.empty():
                time.sleep(self.tick)  # the windows of other rooms due within the tick join this batch
            stop = False
            while len(jobs) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
            try:
                results, stats = self._infer([j.window.logmel for j in jobs])
            except Exception as e:  # a bug here must not silently stop the worker: every room would wait forever
                log.exception("inference batch failed")
                results, stats = [Result(None, e) for _ in jobs], []
            try:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._on_batch, jobs, results, stats)
            except RuntimeError:  # the loop is closed: nobody is waiting for these results any more
                return
            if stop:
                return

    # ------------------------------------------------------------------------------------------ on the loop

    def _on_batch(self, jobs: list[Job], results: list[Result], stats: list[tuple[int, float]]) -> None:
        """A batch is back (called on the loop by the worker thread): queue its results behind any not yet delivered."""
        if self.metrics:
            for size, seconds in stats:
                self.metrics.batches.observe(size)
                self.metrics.inference_seconds.observe(seconds)
                self.metrics.windows.inc(size)
        self._ready.extend(zip(jobs, results))
        if not self._drain_scheduled:
            self._deliver_ready()

    def _deliver_ready(self) -> None:
        """Deliver queued results in submission order. A second window of the same owner (a source streaming faster
        than real time) waits for the next round of the loop, so the sender tasks woken by the earlier update write it
        first and a client that keeps up never sees its bounded outbox conflate because of a burst delivered in one
        go. In real time a batch holds one window per room and goes out in one callback."""
        self._drain_scheduled = False
        owners: set[int] = set()
        while self._ready:
            job, result = self._ready[0]
            if job not in self._pending:  # cancelled by stop()
                self._ready.popleft()
                continue
            if id(job.owner) in owners:
                assert self._loop is not None
                self._drain_scheduled = True
                self._loop.call_soon(self._deliver_ready)
                return
            self._ready.popleft()
            owners.add(id(job.owner))
            self._pending.discard(job)
            if self._slots is not None:
                self._slots.release()
            try:
                self.deliver(job, result)
            except Exception:  # a delivery bug must not stop the worker for every other room
                log.exception("delivering an inference result failed")
            if not job.done.done():
                job.done.set_result(None)
        if self.metrics:
            self.metrics.queue_depth.set(len(self._pending))

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
                    results[i] = Result(pred[k])
            except Exception as e:  # retry alone: only the window(s) that really fail get an error
                log.warning("batch of %d failed (%s); retrying windows one by one", len(idx), e)
                for i in idx:
                    results[i] = self._one(windows[i])
            stats.append((len(idx), time.perf_counter() - t0))
        return [r if r is not None else Result(None, RuntimeError("no result")) for r in results], stats

    def _one(self, window: np.ndarray) -> Result:
        try:
            return Result(self.model.predict(window[None])[0])
        except Exception as e:
            return Result(None, e)

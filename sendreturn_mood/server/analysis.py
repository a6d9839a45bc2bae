"""POST /v1/analyze: a whole audio file in, `analyze --json`'s object plus `features` out.

The analysis itself is `room.offline.analyze_upload` (the same decoding and the same `analyze_audio` as the
`analyze` command), run in worker processes (`AnalysisPool`): never on the event loop, never in the inference
worker's thread, in a session (a CPU group) of their own under SCHED_IDLE, so live rooms' updates keep their latency while uploads are
analysed. The endpoint is bounded everywhere before it spends anything:

- token first (a JWT with the `analyze` role, or a static token; 401), before a byte of the body is read;
- `analyze.max_concurrent` analyses admitted (running or waiting for a worker); beyond: 429 with Retry-After;
- the body: `analyze.max_bytes` (413 from Content-Length before reading, or as soon as a chunked body passes it),
  within `analyze.upload_timeout_seconds` (408); empty: 400; recognised as wav/mp3/flac/ogg by its first bytes,
  not by a name or a Content-Type (415 otherwise);
- the audio: `analyze.max_seconds` (413), truncated or corrupt (422 saying what failed);
- `analyze.timeout_seconds` per analysis once a worker has it (504; the worker is killed and replaced).

There is deliberately no "analyze this URL": the server would fetch whatever address a client names, from inside
the network it runs in (server-side request forgery: cloud metadata endpoints, internal services, the Redis
broker). The client uploads the audio it has.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import multiprocessing
import os
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

from .. import protocol
from ..config import AnalyzeSettings, Settings
from ..metrics import ServerMetrics
from ..audio.files import SNIFF_BYTES, sniff_format
from ..protocol import ANALYZE_ROLE, Refusal
from .auth import Authenticator
from .routing import header, json_response, response

log = logging.getLogger(__name__)

WORKER_NICE = 19  # where SCHED_IDLE is not available: analysis processes yield the CPU to the server
WORKER_START_SECONDS = 60.0  # a worker process (imports + model load) must be ready within this
RETRY_AFTER_DEFAULT = 5  # seconds, before any analysis has been timed
MAX_NAME = 200  # characters of the `name` query parameter kept as the result's `file`


def lower_priority() -> None:
    """This process gets the CPU only when the server's event loop and inference thread do not want it: Linux's
    SCHED_IDLE policy (a weight of 3 against 1024 for a normal process), else the lowest nice value. First a session
    of its own: with autogroup scheduling (Linux's default on desktops and many servers) a session is a CPU group,
    and in the server's group the analysis would spend that group's fair share, so the server would wait behind the
    machine's other groups on its next wake-up; in a group of its own it spends its own (a group of the lowest
    priority, autogroup nice 19, starved the analyses outright on a busy machine: 120 s for a 30 s clip)."""
    try:
        os.setsid()
    except OSError:  # not allowed: the policy below still applies
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
        return
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass
    try:
        os.nice(WORKER_NICE)
    except OSError:  # pragma: no cover - not allowed either: run at the server's priority
        pass


def _worker_main(conn: Any, model_path: str, config: Settings) -> None:
    """One analysis process: load the model once, then analyse what arrives until the pipe closes."""
    lower_priority()
    from threadpoolctl import threadpool_limits

    from ..model.contract import MoodModel
    from ..room.offline import AnalyzeError, TooLong, analyze_upload

    threadpool_limits(limits=1)
    model = MoodModel(model_path, threads=1)
    conn.send(("ready", None))
    while True:
        try:
            upload, name, max_seconds = conn.recv()
            data = Path(upload).read_bytes()
        except (EOFError, OSError):
            return
        try:
            # encoded here: the server passes the bytes on, without building or encoding the object on its loop
            reply: tuple[str, Any] = ("ok", json.dumps(analyze_upload(data, name, model, config, max_seconds)).encode())
        except TooLong as e:
            reply = ("too_long", str(e))
        except AnalyzeError as e:
            reply = ("bad_audio", str(e))
        except Exception as e:  # a bug, not the client's audio: said as a server error, the worker carries on
            reply = ("error", f"{type(e).__name__}: {e}")
        conn.send(reply)


class Worker:
    """One analysis process and its pipe. Blocking calls: run them in a thread."""

    def __init__(self, model_path: str, config: Settings) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs threads (the inference worker)
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, model_path, config), daemon=True,
                                   name="sendreturn-analyze")
        self.process.start()
        child.close()

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout):
            raise TimeoutError("the analysis worker did not start in time")
        self.conn.recv()

    def call(self, data: bytes, name: str, max_seconds: float) -> tuple[str, Any]:
        """The upload goes through a temporary file, written in one call: not through the pipe, whose 64 KiB
        writes would wake this thread (and take the GIL from the event loop) once per chunk the idle-priority
        worker reads."""
        with tempfile.NamedTemporaryFile(prefix="sendreturn-upload-") as f:
            f.write(data)
            f.flush()
            self.conn.send((f.name, name, max_seconds))
            return self.conn.recv()  # type: ignore[no-any-return]

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class AnalysisPool:
    """`workers` analysis processes, started on first use and replaced when one times out or dies."""

    def __init__(self, workers: int, model_path: str, config: Settings, timeout: float) -> None:
        self.size = workers
        self.model_path = model_path
        self.config = config
        self.timeout = timeout
        self._idle: asyncio.Queue[Worker | None] | None = None
        self._workers: set[Worker] = set()  # every live worker process, idle or busy (close() kills them all)
        self.durations: deque[float] = deque(maxlen=20)  # recent analyses' seconds (for Retry-After)

    def _queue(self) -> asyncio.Queue[Worker | None]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.size):
                self._idle.put_nowait(None)  # a slot whose process starts when it is first needed
        return self._idle

    async def run(self, data: bytes, name: str, max_seconds: float) -> tuple[str, Any]:
        idle = self._queue()
        worker = await idle.get()
        try:
            if worker is None or not worker.process.is_alive():
                if worker is not None:
                    self._retire(worker)
                worker = Worker(self.model_path, self.config)
                self._workers.add(worker)
                await asyncio.to_thread(worker.wait_ready, WORKER_START_SECONDS)
            started = time.monotonic()
            try:
                reply = await asyncio.wait_for(asyncio.to_thread(worker.call, data, name, max_seconds), self.timeout)
            except TimeoutError:
                self._retire(worker)
                worker = None
                raise
            except (EOFError, OSError):  # the process died under it (killed, out of memory)
                self._retire(worker)
                worker = None
                return ("error", "the analysis worker died")
            self.durations.append(time.monotonic() - started)
            return reply
        except BaseException:
            if worker is not None and not worker.process.is_alive():
                self._retire(worker)
                worker = None
            raise
        finally:
            idle.put_nowait(worker)

    def _retire(self, worker: Worker) -> None:
        self._workers.discard(worker)
        worker.kill()

    def retry_after(self, waiting: int) -> int:
        """Seconds until a new request would likely be admitted: the queue ahead of it at the recent pace."""
        if not self.durations:
            return RETRY_AFTER_DEFAULT
        mean = sum(self.durations) / len(self.durations)
        return max(1, math.ceil(mean * max(1, waiting) / self.size))

    def close(self) -> None:
        """Kill every worker process, idle or busy (a busy one's request then fails, as the server is closing)."""
        for worker in list(self._workers):
            self._retire(worker)


def upload_name(query: str) -> str | None:
    """The optional `name` query parameter (the result's `file`): printable characters only, at most MAX_NAME."""
    try:
        pairs = parse_qsl(query, max_num_fields=protocol.MAX_QUERY_FIELDS)
    except ValueError:
        return None
    name = next((v for k, v in pairs if k == "name"), "")
    return "".join(c for c in name if c.isprintable())[:MAX_NAME] or None


class AnalyzeEndpoint:
    """The route's handler (`handle`) with its admission count and its pool."""

    def __init__(
        self, settings: AnalyzeSettings, auth: Authenticator, model_path: str, config: Settings, metrics: ServerMetrics
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.metrics = metrics
        self.pool = AnalysisPool(settings.worker_processes, model_path, config, settings.timeout_seconds)
        self.admitted = 0
        # (upload, answer) -> the answer to send: the server keeps the analysis for prepared tracks and adds its id
        self.keep: Callable[[bytes, bytes], Awaitable[bytes]] | None = None

    async def handle(self, connection: Any, request: Any, match: Any) -> Any:
        """The route: every answer counted by its code (`sendreturn_analyses_total`)."""
        try:
            answer = await self._handle(request)
        except Refusal as r:
            self.metrics.analyses.inc(code=r.code)
            raise
        self.metrics.analyses.inc(code="ok" if answer.status_code == 200 else protocol.SERVER_ERROR)
        return answer

    async def _handle(self, request: Any) -> Any:
        s = self.settings
        if not s.enabled:
            raise Refusal(protocol.NOT_FOUND, "this server does not analyse uploads (analyze.enabled is false)")
        query = protocol.parse_query(urlsplit(request.path).query)
        self._authorize(query.get("token"), header(request, "Authorization", None))
        if self.admitted >= s.max_concurrent:
            wait = self.pool.retry_after(self.admitted)
            raise Refusal(
                protocol.RATE_LIMITED,
                f"{self.admitted} analyses are running or waiting, the most this server takes (analyze.max_concurrent); "
                f"retry after {wait} s",
                (("Retry-After", str(wait)),),
            )
        self.admitted += 1
        try:
            data = await request.body.read(s.max_bytes, s.upload_timeout_seconds, "audio file")
            kind = sniff_format(data[:SNIFF_BYTES])
            if kind is None:
                raise Refusal(
                    protocol.UNSUPPORTED_MEDIA,
                    f"the body is not audio this server reads: wav, mp3, flac and ogg are recognised by their "
                    f"content (it starts with {data[:SNIFF_BYTES]!r})",
                )
            name = upload_name(urlsplit(request.path).query) or f"upload.{kind}"
            started = time.monotonic()
            try:
                status, value = await self.pool.run(data, name, s.max_seconds)
                self.metrics.analysis_seconds.observe(time.monotonic() - started)
            except TimeoutError:
                raise Refusal(protocol.TIMEOUT, f"the analysis took longer than {s.timeout_seconds:g} s (analyze.timeout_seconds)") from None
        finally:
            self.admitted -= 1
        if status == "ok":
            if self.keep is not None:
                value = await self.keep(data, value)
            return response(200, value, "application/json")
        if status == "too_long":
            raise Refusal(protocol.TOO_BIG, value)
        if status == "bad_audio":
            raise Refusal(protocol.BAD_AUDIO, value)
        log.error("analysis of an upload failed: %s", value)
        return json_response(500, {"error": {"code": protocol.SERVER_ERROR, "message": "the analysis failed (server error)"}})

    def _authorize(self, token: str | None, authorization: str | None) -> None:
        if not self.auth.enabled:
            return
        grant = self.auth.verify(protocol.request_token(token, authorization))
        if ANALYZE_ROLE not in grant.roles:
            raise Refusal(protocol.UNAUTHORIZED, f"this access token does not grant the {ANALYZE_ROLE} role")

    def close(self) -> None:
        self.pool.close()

"""The websocket server: protocol v1 on /v1/rooms/{room}, plus HTTP (/healthz, /metrics, the browser page) on the
same port.

    source frames -> decode -> token-bucket rate limit -> AnalysisStream (resample, log-mel, window) -> worker queue
    worker (one thread, batched over all rooms) -> deliver() on the loop -> MoodTracker -> RoomRegistry.publish
    publish -> every member's bounded Outbox -> one sender task per connection -> websocket

What is fatal (protocol v1 leaves it to the server): `too_big` (close 1009; frames beyond WS_SIZE_SLACK times the
limit are closed with 1009 by the websocket layer itself, without an error message) and unexpected handler failures
(`server_error`, close 1011). `bad_message`, `bad_audio`, `not_allowed`, `rate_limited` (the frame is dropped; at most
one rate_limited error per second) and inference `server_error` (that window is lost, to that room only) are not.
A second source that races another one past the handshake check gets a fatal `not_allowed` and close 1008. Close
1003 is not used. A listener's `preset` parameter is validated but ignored (the source sets the room's preset).

`latency_ms` is measured from the arrival of the websocket message that completed the window (for the tail window:
the `end` message) to the moment the update is handed to the members' outboxes; the update is encoded once for the
whole room, so per-client send time is not included.

Extension beyond PROTOCOL.md (additive): a plain `GET /v1/rooms/{room}` (no upgrade) returns the room's state as
JSON (source present, listener count, seq, track, preset, audio seconds), 404 when nobody is connected.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import logging
import mimetypes
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import __version__, pcm, protocol
from .inference import InferenceWorker, Job, Result
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServerMetrics
from .model import MoodModel
from .pipeline import AnalysisStream
from .protocol import ConnectParams, Refusal
from .rooms import CONTROL, MOOD, Outbox, Room, RoomError, RoomRegistry

log = logging.getLogger(__name__)

WS_SIZE_SLACK = 4  # the websocket layer accepts up to this many times max_message_bytes so we can answer too_big
RATE_ERROR_INTERVAL = 1.0  # at most one rate_limited error per connection per second
INFERENCE_QUEUE_SIZE = 1024  # windows; beyond it sources wait (back-pressure), see inference.py
STATIC_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
STATIC_HIDDEN_SUFFIXES = (".py", ".pyc")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
}


def static_root() -> Path:
    return Path(str(resources.files("sendreturn_mood.static")))


class TokenBucket:
    """Audio-seconds budget: starts full at `burst`, refills at `rate` seconds of audio per wall-clock second."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.t = time.monotonic()

    def take(self, seconds: float) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if seconds > self.tokens:
            return False
        self.tokens -= seconds
        return True


@dataclass(eq=False)
class Client:
    """One websocket connection as a room member."""

    params: ConnectParams
    outbox: Outbox

    @property
    def role(self) -> str:
        return self.params.role

    def deliver(self, text: str, kind: str) -> None:
        self.outbox.deliver(text, kind)


@dataclass(eq=False)
class SourceSession:
    """A source connection's audio path (lives with the connection, not the room)."""

    stream: AnalysisStream
    bucket: TokenBucket
    last_job: Job | None = None
    last_rate_error: float = -1e9


class MoodServer:
    """One process serving protocol v1. `await start()`, then `port`; `await close()` to stop (clients get 1001)."""

    def __init__(self, config: dict[str, Any], model: MoodModel | None = None) -> None:
        from .analyze import window_plan  # H-pipeline's modules; imported here so a broken one names itself
        from .effects import load_presets
        from .tracker import tracker_from_config

        self.config = config
        s = config["server"]
        self.model = model or MoodModel(config["model"]["path"], threads=int(config["model"]["threads"]))
        self.info = self.model.info
        self.presets = load_presets(config["effects"]["file"], config["effects"]["default_preset"])
        self.presets.check_moods(self.info.mood_labels)
        self._tracker_from_config = tracker_from_config
        # The same window geometry as `analyze` (one function), so both cut identical windows from the same audio;
        # welcome reports the geometry actually used (whole frames).
        self.plan = window_plan(self.info, config)
        self.window_seconds = self.info.frontend.frames_to_seconds(self.plan.window_frames)
        self.hop_seconds = self.info.frontend.frames_to_seconds(self.plan.hop_frames)
        self.max_message_bytes = int(s["max_message_bytes"])
        self.max_connections = int(s["max_connections"])
        self.tokens = [str(t) for t in (s["auth_tokens"] or [])]
        self.metrics = ServerMetrics()
        self.rooms = RoomRegistry(self._make_tracker, int(s["max_rooms"]), self.metrics)
        self.worker: InferenceWorker | None = None
        self.connections = 0
        self.closing = False
        self._server: Server | None = None
        self._static = static_root()
        self._warm_up()
        self._model_public = {
            "name": self.info.name,
            "version": self.info.version,
            "moods": self.info.mood_labels,
            "genres": list(self.info.genres),
            # protocol v1 extension: where each mood sits on the valence/arousal plane (valence/arousal are the
            # probability-weighted mean of these), so clients can draw the plane without hard-coding the model
            "coordinates": {m.label: {"valence": m.valence, "arousal": m.arousal} for m in self.info.moods},
        }

    # ------------------------------------------------------------------------------------------------ lifecycle

    def _warm_up(self) -> None:
        """Pay one-off costs at start-up, not on the first client: the mel filterbank (librosa import, seconds),
        the resampler and the model's first run."""
        stream = AnalysisStream(self.info.frontend, 48000, self.plan)
        stream.push(np.zeros(48000 // 10, dtype=np.float32))
        windows = stream.finish()
        shape = (1, self.info.frontend.n_mels, self.plan.window_frames)
        self.model.predict(windows[-1].logmel[None] if windows else np.zeros(shape, dtype=np.float32))

    def _make_tracker(self, preset: str | None) -> Any:
        return self._tracker_from_config(self.info, self.config, self.presets, preset)

    async def start(self) -> None:
        try:  # one BLAS thread: the machine's cores belong to the inference worker and the event loop
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1)
        except Exception:  # pragma: no cover - threadpoolctl is a dependency, but never fail start-up on it
            log.debug("threadpoolctl unavailable", exc_info=True)
        s = self.config["server"]
        self.worker = InferenceWorker(
            self.model, self._deliver, int(self.config["analysis"]["max_batch"]), INFERENCE_QUEUE_SIZE, self.metrics
        )
        self.worker.start()
        self._server = await serve(
            self._handle,
            s["host"],
            int(s["port"]),
            process_request=self._process_request,
            compression=None,
            max_size=self.max_message_bytes * WS_SIZE_SLACK,
            ping_interval=s["ping_interval_seconds"],
            ping_timeout=s["ping_timeout_seconds"],
            close_timeout=2,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def host(self) -> str:
        assert self._server is not None
        return str(next(iter(self._server.sockets)).getsockname()[0])

    @property
    def url(self) -> str:
        host = self.host
        return f"ws://{'[' + host + ']' if ':' in host else host}:{self.port}"

    async def close(self) -> None:
        """Stop accepting, close every client with 1001, wait (bounded) for handlers, stop the worker."""
        self.closing = True
        if self._server is not None:
            self._server.close(close_connections=True)
            try:
                await asyncio.wait_for(self._server.wait_closed(), float(self.config["server"]["shutdown_timeout_seconds"]))
            except TimeoutError:
                log.warning("some connections did not close within the shutdown timeout")
        if self.worker is not None:
            await self.worker.stop()

    async def __aenter__(self) -> "MoodServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------------ HTTP

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if not upgrade:
            return self._http(request)
        try:
            params = protocol.parse_connect(request.path, request.headers.get("Authorization"), self.presets.names)
            protocol.check_token(params, self.tokens)
            if self.closing:
                raise Refusal(protocol.SERVER_FULL, "the server is shutting down")
            if self.connections >= self.max_connections:
                raise Refusal(protocol.SERVER_FULL, f"this server already has its maximum of {self.max_connections} connections")
            try:
                self.rooms.check_join(params.room, params.is_source)
            except RoomError as e:
                raise Refusal(e.code, e.message) from None
        except Refusal as r:
            self.metrics.refusals.inc(code=r.code)
            log.info("refused %s: %s %s", request.path[:120], r.code, r.message)
            return _response(r.status, r.body(), "application/json")
        connection.sr_params = params  # type: ignore[attr-defined]  # read by _handle
        return None

    def _http(self, request: Request) -> Response:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _json(200, self.health())
        if path == "/metrics":
            self.metrics.queue_depth.set(self.worker.depth if self.worker else 0)
            return _response(200, self.metrics.render().encode(), METRICS_CONTENT_TYPE)
        if path.startswith(protocol.ROOM_PATH_PREFIX):
            try:
                name = protocol.room_from_path(path)
            except Refusal as r:
                return _response(r.status, r.body(), "application/json")
            room = self.rooms.get(name or "")
            if room is None:
                return _json(404, {"error": {"code": "not_found", "message": f"no room {name!r} (nobody is connected to it)"}})
            return _json(200, room.info())
        return self._static_file(path)

    def health(self) -> dict[str, Any]:
        return {
            "status": "shutting_down" if self.closing else "ok",
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "model": {"name": self.info.name, "version": self.info.version, "path": str(self.model.path)},
            "rooms": len(self.rooms),
            "connections": self.connections,
        }

    def _static_file(self, path: str) -> Response:
        """Files of sendreturn_mood/static/ ('/' = index.html). Every path segment must be a plain name (no '..',
        no hidden files, no Python files) and the resolved file must lie inside the folder: no traversal."""
        rel = unquote(path).lstrip("/") or "index.html"
        parts = rel.split("/")
        not_found = _json(404, {"error": {"code": "not_found", "message": f"nothing at {path[:100]!r}"}})
        if not all(STATIC_NAME_RE.match(p) and ".." not in p for p in parts) or rel.endswith(STATIC_HIDDEN_SUFFIXES):
            return not_found
        root = self._static.resolve()
        file = root.joinpath(*parts).resolve()
        if not file.is_relative_to(root) or not file.is_file() or "__pycache__" in file.parts:
            return not_found
        ctype = CONTENT_TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return _response(200, file.read_bytes(), ctype, cache=False)

    # ------------------------------------------------------------------------------------------------ websocket

    async def _handle(self, ws: ServerConnection) -> None:
        params: ConnectParams = ws.sr_params  # type: ignore[attr-defined]
        outbox = Outbox(int(self.config["server"]["send_queue_size"]), self.metrics)
        client = Client(params, outbox)
        sender = asyncio.get_running_loop().create_task(self._send_loop(ws, outbox))
        self.connections += 1
        self.metrics.connections.inc(role=params.role)
        self.metrics.connections_total.inc(role=params.role)
        room: Room | None = None
        try:
            try:
                room = self.rooms.join(params.room, client, params.is_source, params.preset if params.is_source else None)
            except RoomError as e:
                self._error(client, protocol.NOT_ALLOWED, e.message, fatal=True)
                outbox.close(protocol.CLOSE_POLICY, e.code)
                return
            client.deliver(
                protocol.encode(protocol.welcome(params, self._model_public, self.window_seconds, self.hop_seconds, room.preset)),
                CONTROL,
            )
            session = None
            if params.is_source:
                self.rooms.publish(room, protocol.source_state(True))
                s = self.config["server"]
                session = SourceSession(
                    AnalysisStream(self.info.frontend, params.sample_rate, self.plan),
                    TokenBucket(float(s["rate_limit_factor"]), float(s["rate_limit_burst_seconds"])),
                )
            async for message in ws:
                arrival = time.perf_counter()
                if len(message) > self.max_message_bytes:
                    self._error(client, protocol.TOO_BIG, f"message of {len(message)} bytes; the limit is {self.max_message_bytes}", fatal=True)
                    outbox.close(protocol.CLOSE_TOO_BIG, "message too big")
                    break
                if isinstance(message, bytes):
                    await self._on_audio(client, room, session, message, arrival)
                elif await self._on_text(client, room, session, message):
                    break  # `end`: the last update is queued, the outbox closes with 1000
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection handler failed (room %s, %s)", params.room, params.role)
            self._error(client, protocol.SERVER_ERROR, "internal server error", fatal=True)
            outbox.close(protocol.CLOSE_SERVER_ERROR, "server error")
        finally:
            if room is not None:
                if self.rooms.leave(room, client) and not room.closed:
                    self.rooms.publish(room, protocol.source_state(False))
            self.connections -= 1
            self.metrics.connections.dec(role=params.role)
            outbox.close(protocol.CLOSE_NORMAL)
            try:
                await asyncio.wait_for(sender, float(self.config["server"]["shutdown_timeout_seconds"]))
            except (TimeoutError, asyncio.CancelledError):
                sender.cancel()

    async def _send_loop(self, ws: ServerConnection, outbox: Outbox) -> None:
        """The only writer of a connection: a slow client blocks only this task; its outbox conflates meanwhile."""
        try:
            while (item := await outbox.next()) is not None:
                await ws.send(item[1])
                self.metrics.messages_sent.inc()
            code, reason = outbox.closing or (protocol.CLOSE_NORMAL, "")
            await ws.close(code, reason)
        except ConnectionClosed:
            pass

    def _error(self, client: Client, code: str, message: str, fatal: bool = False) -> None:
        self.metrics.errors.inc(code=code)
        client.deliver(protocol.encode(protocol.error(code, message, fatal)), CONTROL)

    async def _on_audio(self, client: Client, room: Room, session: SourceSession | None, data: bytes, arrival: float) -> None:
        if session is None:
            self._error(client, protocol.NOT_ALLOWED, "listeners cannot send audio (connect with role=source)")
            return
        p = client.params
        try:
            mono = pcm.decode(data, p.encoding, p.channels)
        except pcm.BadAudio as e:
            self._error(client, protocol.BAD_AUDIO, f"{e}; frame dropped")
            return
        seconds = len(mono) / p.sample_rate
        self.metrics.audio_bytes.inc(len(data))
        if not session.bucket.take(seconds):
            if arrival - session.last_rate_error >= RATE_ERROR_INTERVAL:
                session.last_rate_error = arrival
                s = self.config["server"]
                self._error(
                    client,
                    protocol.RATE_LIMITED,
                    f"audio is arriving faster than {s['rate_limit_factor']}x real time beyond a "
                    f"{s['rate_limit_burst_seconds']} s burst; frames are being dropped",
                )
            return
        self.metrics.audio_seconds.inc(seconds)
        room.audio_seconds += seconds
        assert self.worker is not None
        for window in session.stream.push(mono):
            session.last_job = await self.worker.submit(Job(room, window, arrival, room.generation))

    async def _on_text(self, client: Client, room: Room, session: SourceSession | None, text: str) -> bool:
        """Handle a text message; True when the connection should end (after `end`)."""
        try:
            msg = protocol.parse_client_message(text)
        except protocol.MessageError as e:
            self._error(client, e.code, e.message)
            return False
        if isinstance(msg, protocol.Keepalive):
            return False
        if session is None:
            self._error(client, protocol.NOT_ALLOWED, f"only the room's source may send '{type(msg).__name__.lower()}' messages")
            return False
        if isinstance(msg, protocol.Track):
            session.stream.reset()
            self.rooms.new_track(room, msg.to_dict())
            return False
        if isinstance(msg, protocol.PresetChange):
            try:
                room.tracker.set_preset(msg.name)
            except KeyError:
                self._error(client, protocol.BAD_MESSAGE, f"unknown preset {msg.name[:40]!r}; known: {', '.join(self.presets.names)}")
            return False
        # End: analyse the tail, wait until every window of this source has been delivered, then close with 1000.
        assert self.worker is not None
        for window in session.stream.finish():
            session.last_job = await self.worker.submit(Job(room, window, time.perf_counter(), room.generation))
        if session.last_job is not None:
            try:
                await session.last_job.done
            except asyncio.CancelledError:
                if not self.closing:
                    raise
        client.outbox.close(protocol.CLOSE_NORMAL, "end of stream")
        return True

    # ------------------------------------------------------------------------------------------------ results

    def _deliver(self, job: Job, result: Result) -> None:
        """Called by the worker on the event loop, in submission order."""
        room: Room = job.owner
        if room.closed or job.generation != room.generation:
            self.metrics.dropped_windows.inc()
            return
        if result.error is not None or result.moods is None:
            log.warning("inference failed for room %s: %s", room.name, result.error)
            self.metrics.errors.inc(code=protocol.SERVER_ERROR)
            self.rooms.publish(room, protocol.error(protocol.SERVER_ERROR, "analysis of a window failed; it was skipped"))
            return
        analysis = room.tracker.update(result.moods, result.genres, job.window.stream_time)
        latency = time.perf_counter() - job.arrival
        msg = protocol.mood(room.name, self.rooms.next_seq(room), analysis, room.track, latency * 1000.0)
        self.metrics.latency.observe(latency)
        self.metrics.updates.inc()
        self.rooms.publish(room, msg, MOOD)


def _response(status: int, body: bytes, content_type: str, cache: bool = False) -> Response:
    st = http.HTTPStatus(status)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
        ]
    )
    if not cache:
        headers["Cache-Control"] = "no-store"
    return Response(st.value, st.phrase, headers, body)


def _json(status: int, obj: Any) -> Response:
    return _response(status, json.dumps(obj).encode(), "application/json")

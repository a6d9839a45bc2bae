"""The websocket server: protocol v1 on /v1/rooms/{room}, plus HTTP (/healthz, /metrics, the browser page) on the
same port. This module only moves bytes: what a connection's messages mean is `session.Session`'s business (events
in, actions out), what a room does with a window's model output is `rooms.Room`'s, and how a room reaches its
members on other processes is the broker's (`broker.py`).

    frames -> Session.receive -> [Reply | Broadcast | Submit | RoomChanged | Drain | Close] -> carried out here
    Submit -> worker (one thread, batched over all rooms) -> _deliver on the loop -> Room.on_window -> publish
    publish -> every local member's bounded Outbox (+ the broker) -> one sender task per connection -> websocket

What is fatal (protocol v1 leaves it to the server): `too_big` (close 1009; frames beyond WS_SIZE_SLACK times the
limit are closed with 1009 by the websocket layer itself, without an error message) and unexpected handler failures
(`server_error`, close 1011). `bad_message`, `bad_audio`, `not_allowed`, `rate_limited` (the frame is dropped; at most
one rate_limited error per second) and inference `server_error` (that window is lost, to that room only) are not.
A second source that races another one past the handshake check (the broker's claim is atomic, the check is not)
gets a fatal `not_allowed` and close 1008. Close 1003 is not used. A listener's `preset` parameter is validated but
ignored (the source sets the room's preset).

`latency_ms` is measured from the arrival of the websocket message that completed the window (for the tail window:
the `end` message) to the moment the update is handed to the members' outboxes; the update is encoded once for the
whole room, so per-client send time is not included.

Extension beyond PROTOCOL.md (additive): a plain `GET /v1/rooms/{room}` (no upgrade) returns the room's state as
JSON (source present, listener count, seq, track, preset, audio seconds), across every process of the cluster; 404
when nobody is connected.
"""

from __future__ import annotations

import asyncio
import email.utils
import gc
import http
import itertools
import json
import logging
import mimetypes
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers, MultipleValuesError
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .. import __version__, protocol
from .auth import OPEN, Authenticator, Grant, SourceReservations, install_log_redaction, redact
from ..broker.base import Broker, Claim, make_broker
from ..config import ConfigError
from ..room.effects import load_presets
from ..model.inference import InferenceWorker, Job, Result
from .limits import ClientLimits, KeyedRateLimiter, origin_policy_from_config
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import ServerMetrics
from ..model.contract import MoodModel
from ..audio.pipeline import AnalysisStream, window_plan
from ..protocol import ConnectParams, Refusal
from ..room.rooms import CONTROL, Outbox, Room, RoomError, RoomRegistry
from ..room.session import Broadcast, Close, Drain, Reply, RoomChanged, Session, SessionSettings, Submit
from ..room.trackchange import TrackChangeError, detector_from_config
from ..room.tracker import NonFiniteOutput, tracker_from_config

log = logging.getLogger(__name__)

WS_MAX_QUEUE = 4  # received messages buffered per connection before reading pauses (TCP pushes back): bounds memory
WS_SIZE_SLACK = 4  # the websocket layer accepts up to this many times max_message_bytes so we can answer too_big
INFERENCE_QUEUE_SIZE = 1024  # windows; beyond it sources wait (back-pressure), see inference.py
WS_MAX_QUEUE = 4  # frames the websocket layer buffers per connection before it stops reading (default 16 x 4 MiB)
TAKEOVER_WAIT_SECONDS = 3.0  # a reserving source reconnecting waits this long for its old connection to leave
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


@dataclass(eq=False)
class Connection:
    """One websocket connection as a room member: its bounded outbox, and the last window it submitted."""

    params: ConnectParams
    outbox: Outbox
    last_job: Job | None = field(default=None)
    grant: Grant = OPEN
    address: str = ""

    @property
    def role(self) -> str:
        return self.params.role

    def deliver(self, text: str, kind: str) -> None:
        self.outbox.deliver(text, kind)


class MoodServer:
    """One process serving protocol v1. `await start()`, then `port`; `await close()` to stop (clients get 1001)."""

    def __init__(self, config: dict[str, Any], model: MoodModel | None = None, broker: Broker | None = None) -> None:
        self.config = config
        s = config["server"]
        self.model = model or MoodModel(config["model"]["path"], threads=int(config["model"]["threads"]))
        self.info = self.model.info
        self.presets = load_presets(config["effects"]["file"], config["effects"]["default_preset"])
        self.presets.check_moods(self.info.mood_labels)
        # The same window geometry as `analyze` (one function), so both cut identical windows from the same audio;
        # welcome reports the geometry actually used (whole frames).
        self.plan = window_plan(self.info, config)
        self.window_seconds = self.info.frontend.frames_to_seconds(self.plan.window_frames)
        self.hop_seconds = self.info.frontend.frames_to_seconds(self.plan.hop_frames)
        self.max_message_bytes = int(s["max_message_bytes"])
        self.max_connections = int(s["max_connections"])
        self.auth = Authenticator.from_config(config)  # AuthError (a ConfigError) for an unusable secret or token
        self.reservations = SourceReservations(float(s["auth"]["reserve_seconds"]), int(s["max_rooms"]))
        self.origins = origin_policy_from_config(s, [str(s["host"])])
        self.client_limits = ClientLimits(int(s["max_connections_per_address"]), int(s["max_rooms_per_address"]))
        per_minute = float(s["room_creations_per_minute"])
        self.room_creations = KeyedRateLimiter(per_minute / 60.0, per_minute)
        per_second = float(s["http_requests_per_second"])
        self.http_requests = KeyedRateLimiter(per_second, 2 * per_second)
        self.metrics = ServerMetrics()
        self.broker = broker or make_broker(config, self.metrics)
        self.metrics.node.set(1, node=self.broker.node, broker=self.broker.kind)
        self.rooms = RoomRegistry(self._make_tracker, int(s["max_rooms"]), self.metrics, self.broker, self._make_detector)
        self.broker.on_source_lost = self._source_lost
        self.worker: InferenceWorker | None = None
        self.connections = 0
        self.closing = False
        self._server: Server | None = None
        self._metrics_server: Server | None = None
        self._static = static_root()
        self._holder_ids = itertools.count(1)
        try:  # a detector the model cannot feed (feature: embedding, and the model has none) fails here, not on join
            self._make_detector()
        except TrackChangeError as e:
            raise ConfigError(str(e)) from None
        self._warm_up()
        model_public = {
            "name": self.info.name,
            "version": self.info.version,
            "moods": self.info.mood_labels,
            "genres": list(self.info.genres),
            # protocol v1 extension: where each mood sits on the valence/arousal plane (valence/arousal are the
            # probability-weighted mean of these), so clients can draw the plane without hard-coding the model
            "coordinates": {m.label: {"valence": m.valence, "arousal": m.arousal} for m in self.info.moods},
        }
        self.settings = SessionSettings(
            max_message_bytes=self.max_message_bytes,
            rate_limit_factor=float(s["rate_limit_factor"]),
            rate_limit_burst_seconds=float(s["rate_limit_burst_seconds"]),
            plan=self.plan,
            frontend=self.info.frontend,
            window_seconds=self.window_seconds,
            hop_seconds=self.hop_seconds,
            model_public=model_public,
            presets=tuple(self.presets.names),
        )

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
        return tracker_from_config(self.info, self.config, self.presets, preset)

    def _make_detector(self) -> Any:
        return detector_from_config(self.config, self.info, self.window_seconds, self.model.has_embedding)

    async def start(self) -> None:
        """Connect the broker (BrokerError when it cannot be reached), start the worker, listen."""
        try:  # one BLAS thread: the machine's cores belong to the inference worker and the event loop
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1)
        except Exception:  # pragma: no cover - threadpoolctl is a dependency, but never fail start-up on it
            log.debug("threadpoolctl unavailable", exc_info=True)
        # The ~100k objects of start-up (numpy, scipy, onnxruntime, librosa's filterbank) never become garbage; frozen,
        # the cyclic GC stops walking them: its full passes shrink from ~100 ms (a stall of the loop and of every
        # room's updates) to the size of the per-connection state.
        gc.collect()
        gc.freeze()
        s = self.config["server"]
        # the websockets library logs request lines and headers at debug level: never with a token in them
        install_log_redaction("websockets.server", "websockets", __name__)
        await self.broker.start(self.rooms)
        a = self.config["analysis"]
        self.worker = InferenceWorker(
            self.model, self._deliver, int(a["max_batch"]), INFERENCE_QUEUE_SIZE, self.metrics, a["batch_tick_ms"] / 1000
        )
        self.worker.start()
        try:
            self._server = await serve(
                self._handle,
                s["host"],
                int(s["port"]),
                process_request=self._process_request,
                compression=None,
                max_size=self.max_message_bytes * WS_SIZE_SLACK,
                max_queue=WS_MAX_QUEUE,
                ping_interval=s["ping_interval_seconds"],
                ping_timeout=s["ping_timeout_seconds"],
                close_timeout=2,
                reuse_port=bool(s["reuse_port"]) or None,
            )
            if s["metrics_port"] is not None:
                self._metrics_server = await serve(
                    self._handle, s["host"], int(s["metrics_port"]), process_request=self._metrics_only, reuse_port=None
                )
        except BaseException:
            if self._server is not None:
                self._server.close()
            await self.worker.stop()
            await self.broker.close()
            raise

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
        """Stop accepting, close every client with 1001, wait (bounded) for handlers, stop the worker and broker."""
        self.closing = True
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self._server is not None:
            self._server.close(close_connections=True)
            try:
                await asyncio.wait_for(self._server.wait_closed(), float(self.config["server"]["shutdown_timeout_seconds"]))
            except TimeoutError:
                log.warning("some connections did not close within the shutdown timeout")
        if self.worker is not None:
            await self.worker.stop()
        await self.broker.close()

    async def __aenter__(self) -> "MoodServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------------ HTTP

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Every HTTP request: plain GETs are answered here, websocket handshakes are checked (refused with a JSON
        4xx/503) or let through. Nothing a client sends may end in a 500 with a traceback: odd requests (duplicated
        headers, control characters) are 400s."""
        try:
            upgrade = "websocket" in _header(request, "Upgrade").lower()
            if not upgrade:
                return await self._http(connection, request)
            params = await self._check_handshake(connection, request)
        except Refusal as r:
            self.metrics.refusals.inc(code=r.code)
            log.info("refused %s: %s %s", redact(request.path), r.code, r.message)
            return _response(r.status, r.body(), "application/json")
        except Exception:
            log.exception("handling the request for %s failed", redact(request.path))
            return _json(500, {"error": {"code": protocol.SERVER_ERROR, "message": "internal server error"}})
        connection.sr_params = params  # type: ignore[attr-defined]  # read by _handle
        return None

    async def _check_handshake(self, connection: ServerConnection, request: Request) -> tuple[ConnectParams, Grant]:
        """The handshake's checks, cheapest first. Refusal for anything refused."""
        self.origins.check(_header(request, "Origin", None), _header(request, "Host", None))
        params = protocol.parse_connect(request.path, _header(request, "Authorization", None), self.presets.names)
        grant = self.auth.authorize(params.token, params.room, params.role)
        if self.closing:
            raise Refusal(protocol.SERVER_FULL, "the server is shutting down")
        if self.connections >= self.max_connections:
            raise Refusal(protocol.SERVER_FULL, f"this server already has its maximum of {self.max_connections} connections")
        address = _address(connection)
        self.client_limits.check(address, params.room)
        takeover = params.is_source and self.reservations.check(params.room, grant, time.time())
        if takeover:
            await self._replace_source(params.room, grant)
        elif params.is_source:  # a reservation held on another process of the cluster
            holder = await self.broker.reserved_for(params.room)
            if holder is not None and holder != grant.subject:
                raise Refusal(protocol.SOURCE_TAKEN, f"room {protocol.shown(params.room)}'s source slot is reserved for its source")
        try:
            self.rooms.check_join(params.room, params.is_source)
        except RoomError as e:
            raise Refusal(e.code, e.message) from None
        if params.is_source and await self.broker.source_present(params.room):
            raise Refusal(protocol.SOURCE_TAKEN, f"room {protocol.shown(params.room)} already has a source")
        if self.rooms.get(params.room) is None and not self.room_creations.allow(address):
            raise Refusal(protocol.RATE_LIMITED, "this address is opening rooms too fast (server.room_creations_per_minute)")
        return params, grant

    async def _replace_source(self, name: str, grant: Grant) -> None:
        """A reserving source reconnects while its old connection is still registered (half-dead TCP): close the
        old one and wait (bounded) for it to leave, so the new one is not refused by its own ghost."""
        room = self.rooms.get(name)
        old = room.source if room is not None else None
        if isinstance(old, Connection) and old.grant.subject == grant.subject:
            log.info("room %s: the source reconnected; closing its previous connection", name)
            old.outbox.close(protocol.CLOSE_POLICY, "replaced by a new connection of the same source")
            deadline = time.monotonic() + TAKEOVER_WAIT_SECONDS
            while room is not None and room.source is old and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

    async def _metrics_only(self, connection: ServerConnection, request: Request) -> Response:
        """`server.metrics_port`: this process's /metrics and /healthz on a port of its own (with `--workers`, each
        worker has one, so Prometheus scrapes every worker, not whichever the kernel picks); nothing else there."""
        if urlsplit(request.path).path in ("/metrics", "/healthz"):
            return await self._http(connection, request)
        return _json(404, {"error": {"code": "not_found", "message": "this port serves /metrics and /healthz only"}})

    async def _http(self, connection: ServerConnection, request: Request) -> Response:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _json(200, await self.health())
        if path == "/metrics":
            self.metrics.queue_depth.set(self.worker.depth if self.worker else 0)
            return _response(200, self.metrics.render().encode(), METRICS_CONTENT_TYPE)
        if path.startswith(protocol.ROOM_PATH_PREFIX):
            return await self._room_state(connection, request)
        return self._static_file(path)

    async def _room_state(self, connection: ServerConnection, request: Request) -> Response:
        """GET /v1/rooms/{room}: rate-limited per address, and when auth is on it needs a token for that room (any
        role), so room names, tracks and titles cannot be probed (issue 13). Refusal for everything refused."""
        if not self.http_requests.allow(_address(connection)):
            raise Refusal(protocol.RATE_LIMITED, "too many requests from this address (server.http_requests_per_second)")
        name = protocol.room_from_path(request.path) or ""
        if self.auth.enabled:
            token = protocol.parse_query(urlsplit(request.path).query).get("token")
            authorization = _header(request, "Authorization", None)
            if token is None and authorization is not None:
                token = protocol.bearer_token(authorization)
            grant = self.auth.verify(token)
            if not grant.covers(name):
                raise Refusal(protocol.UNAUTHORIZED, f"this access token is not valid for room {protocol.shown(name)}")
        info = await self.broker.snapshot(name)
        if info is None:
            raise Refusal(protocol.NOT_FOUND, f"no room {protocol.shown(name)} (nobody is connected to it)")
        return _json(200, info)

    async def health(self) -> dict[str, Any]:
        broker = await self.broker.health()
        status = "shutting_down" if self.closing else ("ok" if broker["connected"] else "degraded")
        return {
            "status": status,
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "model": {"name": self.info.name, "version": self.info.version, "path": str(self.model.path)},
            "rooms": len(self.rooms),
            "connections": self.connections,
            "broker": broker,
        }

    def _static_file(self, path: str) -> Response:
        """Files of sendreturn_mood/static/ ('/' = index.html). Every path segment must be a plain name (no '..',
        no hidden files, no Python files), so the path stays inside the folder: no traversal."""
        rel = unquote(path).lstrip("/") or "index.html"
        parts = rel.split("/")
        not_found = _json(404, {"error": {"code": "not_found", "message": f"nothing at {path[:100]!r}"}})
        if not all(STATIC_NAME_RE.match(p) and ".." not in p for p in parts) or rel.endswith(STATIC_HIDDEN_SUFFIXES):
            return not_found
        root = self._static.resolve()
        file = root.joinpath(*parts)  # plain names only (checked above): no traversal; a symlink inside is the package's own (static/client -> clients/js/src)
        if not file.is_relative_to(root) or not file.is_file() or "__pycache__" in file.parts:
            return not_found
        ctype = CONTENT_TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return _response(200, file.read_bytes(), ctype, cache=False)

    # ------------------------------------------------------------------------------------------------ websocket

    async def _handle(self, ws: ServerConnection) -> None:
        params, grant = ws.sr_params  # type: ignore[attr-defined]
        s = self.config["server"]
        outbox = Outbox(int(s["send_queue_size"]), self.metrics, int(s["send_queue_bytes"]))
        conn = Connection(params, outbox, grant=grant, address=_address(ws))
        try:
            self.client_limits.add(conn.address, params.room)  # two handshakes may have raced past the check
        except Refusal as r:
            await ws.close(protocol.CLOSE_POLICY, r.message[:120])
            return
        sender = asyncio.get_running_loop().create_task(self._send_loop(ws, conn.outbox))
        self.connections += 1
        self.metrics.connections.inc(role=params.role)
        self.metrics.connections_total.inc(role=params.role)
        room: Room | None = None
        claim: Claim | None = None
        try:
            room, claim = await self._join(conn)
            if room is None:
                return
            session = Session(params, room, self.settings, time.perf_counter())
            if not await self._carry_out(conn, room, session.open()):
                return
            async for message in ws:
                heard = room.audio_seconds
                actions = session.receive(message, time.perf_counter())
                if room.audio_seconds != heard:  # an accepted audio frame
                    self.metrics.audio_seconds.add(room.audio_seconds - heard)
                    self.metrics.audio_bytes.add(len(message))
                if not await self._carry_out(conn, room, actions):
                    break  # `end` (the last update is queued, the outbox closes with 1000) or a fatal error
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection handler failed (room %s, %s)", params.room, params.role)
            self._reply(conn, protocol.error(protocol.SERVER_ERROR, "internal server error", True))
            conn.outbox.close(protocol.CLOSE_SERVER_ERROR, "server error")
        finally:
            if room is not None and self.rooms.leave(room, conn):
                self.rooms.publish(room, protocol.source_state(False))
            if claim is not None:
                await self.broker.release_source(params.room, claim.holder)
                self.reservations.disconnected(params.room, grant, time.time())
                if grant.reserve and grant.subject is not None:
                    self.broker.hold_source(params.room, grant.subject, self.reservations.hold_seconds, connected=False)
            self.client_limits.remove(conn.address, params.room)
            self.connections -= 1
            self.metrics.connections.dec(role=params.role)
            conn.outbox.close(protocol.CLOSE_NORMAL)
            try:
                await asyncio.wait_for(sender, float(self.config["server"]["shutdown_timeout_seconds"]))
            except (TimeoutError, asyncio.CancelledError):
                sender.cancel()

    async def _join(self, conn: Connection) -> tuple[Room | None, Claim | None]:
        """Join the room: a source first claims the room's source slot from the broker (atomic across the
        cluster); a listener learns the room's shared state (preset, a source elsewhere). (None, None): refused,
        the fatal error is queued."""
        params = conn.params
        claim = None
        if params.is_source:
            claim = await self.broker.claim_source(params.room, f"{self.broker.node}/{next(self._holder_ids)}")
            if claim is None:
                self._refuse(conn, f"room {protocol.shown(params.room)} already has a source")
                return None, None
        try:
            preset = (params.preset or claim.preset) if claim else None
            room = self.rooms.join(
                params.room, conn, params.is_source, preset, claim.last_seq if claim else 0, params.track_detection
            )
        except RoomError as e:
            if claim is not None:
                await self.broker.release_source(params.room, claim.holder)
            self._refuse(conn, e.message)
            return None, None
        if not params.is_source:
            await self.broker.sync_room(room)
        else:
            self.reservations.connected(params.room, conn.grant)
            if conn.grant.reserve and conn.grant.subject is not None:
                self.broker.hold_source(params.room, conn.grant.subject, self.reservations.hold_seconds, connected=True)
        return room, claim

    def _source_lost(self, room: Room) -> None:
        """The broker found this room's source slot held by another process (it was claimed there while Redis was
        unreachable from here): the local source must go, the other one keeps the room."""
        if isinstance(room.source, Connection):
            self._refuse(room.source, f"room {room.name!r} has a source on another server process now")

    def _refuse(self, conn: Connection, message: str) -> None:
        self._reply(conn, protocol.error(protocol.NOT_ALLOWED, message, True))
        conn.outbox.close(protocol.CLOSE_POLICY, protocol.SOURCE_TAKEN)

    async def _carry_out(self, conn: Connection, room: Room, actions: list[Any]) -> bool:
        """Carry out a session's actions in order; False when the connection is to stop reading."""
        for action in actions:
            if isinstance(action, Submit):
                assert self.worker is not None
                conn.last_job = await self.worker.submit(Job(room, action.window, action.arrival, action.generation))
            elif isinstance(action, Reply):
                self._reply(conn, action.message)
            elif isinstance(action, Broadcast):
                self.rooms.publish(room, action.message)
            elif isinstance(action, RoomChanged):
                self.broker.room_changed(room)
            elif isinstance(action, Drain):
                if conn.last_job is not None:
                    try:
                        await conn.last_job.done
                    except asyncio.CancelledError:
                        if not self.closing:
                            raise
                conn.outbox.close(action.code, action.reason)
                return False
            elif isinstance(action, Close):
                conn.outbox.close(action.code, action.reason)
                return False
        return True

    def _reply(self, conn: Connection, message: dict[str, Any]) -> None:
        if message["type"] == "error":
            self.metrics.errors.inc(code=message["code"])
        conn.deliver(protocol.encode(message), CONTROL)

    async def _send_loop(self, ws: ServerConnection, outbox: Outbox) -> None:
        """The only writer of a connection: a slow client blocks only this task; its outbox conflates meanwhile."""
        try:
            while (item := await outbox.next()) is not None:
                await ws.send(item[1])
                self.metrics.messages_sent.add()
            code, reason = outbox.closing or (protocol.CLOSE_NORMAL, "")
            await ws.close(code, reason)
        except ConnectionClosed:
            pass

    # ------------------------------------------------------------------------------------------------ results

    def _deliver(self, job: Job, result: Result) -> None:
        """Called by the worker on the event loop, in submission order."""
        room: Room = job.owner
        if not room.is_current(job.generation):
            self.metrics.dropped_windows.inc()
            return
        if result.error is not None or result.moods is None:
            log.warning("inference failed for room %s: %s", room.name, result.error)
            self.metrics.errors.inc(code=protocol.SERVER_ERROR)
            self.rooms.publish(room, protocol.error(protocol.SERVER_ERROR, "analysis of a window failed; it was skipped"))
            return
        latency = time.perf_counter() - job.arrival
        try:
            messages = room.on_window(
                job.generation, result.moods, result.genres, job.window.stream_time, latency * 1000.0,
                job.window.logmel, result.embedding,
            )
        except NonFiniteOutput:  # the room's smoothing, detector and seq are untouched; this window is lost
            log.warning("room %s: the model's outputs for a window were not finite; it was skipped", room.name)
            self.metrics.errors.inc(code=protocol.SERVER_ERROR)
            self.rooms.publish(room, protocol.error(protocol.SERVER_ERROR, "analysis of a window failed; it was skipped"))
            return
        if not messages:
            self.metrics.dropped_windows.inc()
            return
        self.metrics.latency.observe(latency)
        self.metrics.updates.add()
        for msg in messages:  # a track_change (control: never conflated) comes before its window's mood
            if msg["type"] == "track_change":
                self.metrics.track_changes.inc()
            self.rooms.publish(room, msg)


def _header(request: Request, name: str, default: str | None = "") -> Any:
    """A header that must appear at most once: a duplicated Authorization, Upgrade, Origin or Host is a 400, not
    a guess (which of two Authorization values would count?) and not a 500 (MultipleValuesError)."""
    try:
        return request.headers.get(name, default)
    except MultipleValuesError:
        raise Refusal(protocol.BAD_REQUEST, f"the {name} header may appear only once") from None


def _address(connection: ServerConnection) -> str:
    """The client's address (the TCP peer: behind a proxy, the proxy's)."""
    try:
        peer = connection.remote_address
        return str(peer[0]) if peer else "?"
    except Exception:  # a transport already gone
        return "?"


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

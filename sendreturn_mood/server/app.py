"""The websocket server: protocol v1 on /v1/rooms/{room}, plus HTTP (/healthz, /metrics, the browser page) on the
same port. `MoodServer` builds the parts from the configuration, starts and stops them, and holds the HTTP routing
table; each concern lives in a module of its own:

    routing.py     the routing table and response helpers        static.py     the browser page and JS client
    handshake.py   the websocket handshake's checks              connection.py one connection's loop (its Session)
    delivery.py    the model's results back to their rooms       room_routes.py GET /v1/rooms/{room}, its tracks
    analysis.py    POST /v1/analyze                              bodies.py     requests with a body (PUT, POST)
    prepared.py    prepared tracks: analysis and playback        auth.py, reservations.py, redaction.py, limits.py

What a connection's messages mean is `room.session.Session`'s business (events in, actions out), what a room does
with a window's model output is `room.rooms.Room`'s, and how a room reaches its members on other processes is the
broker's.

What is fatal (protocol v1 leaves it to the server): `too_big` (close 1009; frames beyond WS_SIZE_SLACK times the
limit are closed with 1009 by the websocket layer itself, without an error message) and unexpected handler failures
(`server_error`, close 1011). `bad_message`, `bad_audio`, `not_allowed`, `rate_limited` (the frame is dropped; at most
one rate_limited error per second) and inference `server_error` (that window is lost, to that room only) are not.
A second source that races another one past the handshake check gets a fatal `not_allowed` and close 1008. Close
1003 is not used. A listener's `preset` parameter is validated but ignored (the source sets the room's preset).

Extension beyond PROTOCOL.md (additive): a plain `GET /v1/rooms/{room}` (no upgrade) returns the room's state as
JSON (source present, listener count, seq, track, preset, audio seconds), across every process of the cluster; 404
when nobody is connected. `PUT`/`GET`/`DELETE /v1/rooms/{room}/tracks/{id}`: a room's prepared tracks (prepared.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from .. import __version__, protocol
from ..audio.pipeline import AnalysisStream, window_plan
from ..broker.base import Broker
from ..broker.factory import make_broker, make_store
from ..config import ConfigError, Settings
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import ServerMetrics
from ..model.contract import MoodModel
from ..model.inference import DEFAULT_QUEUE_SIZE, InferenceWorker
from ..outputs.base import Outputs
from ..protocol import Refusal
from ..room.effects import load_presets
from ..room.rooms import RoomRegistry
from ..room.session import SessionSettings
from ..room.trackchange import TrackChangeError, detector_from_config
from ..room.tracker import tracker_from_config
from .auth import Authenticator
from .connection import Admission, ConnectionLoop, OutboxSettings
from .delivery import ResultDelivery
from .handshake import HandshakeChecks, check_addressing, select_subprotocol
from .limits import ClientLimits, KeyedRateLimiter, origin_policy_from_config
from .shared_limits import AddressLimits, SharedRateLimiter
from .prepared import Playback, TrackPreparer
from .redaction import install_log_redaction, redact
from .reservations import SourceReservations
from .keepalive import KeepaliveConnection
from .analysis import AnalyzeEndpoint
from .bodies import BodyExchange, front_door
from .requestline import connection_factory
from .room_routes import ROOM_STATE_PATH, TRACK_PATH, RoomRoutes
from .routing import Router, error_response, header, json_response, response, route
from .static import StaticFiles, static_root

__all__ = ["MoodServer", "WS_SIZE_SLACK", "static_root"]

log = logging.getLogger(__name__)

WS_MAX_QUEUE = 4  # frames the websocket layer buffers per connection before it stops reading (TCP pushes back): bounds memory
WS_SIZE_SLACK = 4  # the websocket layer accepts up to this many times max_message_bytes so we can answer too_big
ANALYZE_PATH = r"/v1/analyze"


class MoodServer:
    """One process serving protocol v1. `await start()`, then `port`; `await close()` to stop (clients get 1001)."""

    def __init__(self, config: Settings, model: MoodModel | None = None, broker: Broker | None = None) -> None:
        self.config = config
        s = config.server
        self.model = model or MoodModel(config.model.path, threads=config.model.threads)
        self.info = self.model.info
        self.presets = load_presets(config.effects.file, config.effects.default_preset)
        self.presets.check_moods(self.info.mood_labels)
        # The same window geometry as `analyze` (one function), so both cut identical windows from the same audio;
        # welcome reports the geometry actually used (whole frames).
        self.plan = window_plan(self.info, config)
        self.window_seconds = self.info.frontend.frames_to_seconds(self.plan.window_frames)
        self.hop_seconds = self.info.frontend.frames_to_seconds(self.plan.hop_frames)
        self.max_message_bytes = s.max_message_bytes
        self.admission = Admission(s.max_connections)
        self.auth = Authenticator.from_config(config)  # AuthError (a ConfigError) for an unusable secret or token
        self.reservations = SourceReservations(s.auth.reserve_seconds, s.max_rooms)
        self.metrics = ServerMetrics()
        self.broker = broker or make_broker(config, self.metrics)
        # per address, counted over the whole cluster when the broker can count (shared_limits.py)
        self.client_limits = AddressLimits(ClientLimits(s.max_connections_per_address, s.max_rooms_per_address), self.broker)
        room_creations = SharedRateLimiter(
            "rooms", KeyedRateLimiter(s.room_creations_per_minute / 60.0, s.room_creations_per_minute), self.broker
        )
        self.http_requests = SharedRateLimiter(
            "http", KeyedRateLimiter(s.http_requests_per_second, 2 * s.http_requests_per_second), self.broker
        )
        self.metrics.node.set(1, node=self.broker.node, broker=self.broker.kind)
        self.outputs = Outputs(config, self.broker, self.presets, self.hop_seconds, self.metrics)
        self.rooms = RoomRegistry(
            self._make_tracker, s.max_rooms, self.metrics, self.broker, self._make_detector, self.outputs.sinks_for
        )
        try:  # a detector the model cannot feed (feature: embedding, and the model has none) fails here, not on join
            self._make_detector()
        except TrackChangeError as e:
            raise ConfigError(str(e)) from None
        self._warm_up()
        self.settings = SessionSettings(
            max_message_bytes=self.max_message_bytes,
            rate_limit_factor=s.rate_limit_factor,
            rate_limit_burst_seconds=s.rate_limit_burst_seconds,
            clock_check_seconds=s.clock_check_seconds,
            plan=self.plan,
            frontend=self.info.frontend,
            window_seconds=self.window_seconds,
            hop_seconds=self.hop_seconds,
            model_public=self._model_public(),
            presets=tuple(self.presets.names),
            lead_seconds=config.prepared.lead_seconds,
        )
        self.tracks = TrackPreparer(self.model, config, make_store(config))
        self.playback = Playback(self.rooms, self.metrics)
        a = config.analysis
        self.worker = InferenceWorker(
            self.model, ResultDelivery(self.rooms, self.metrics), a.max_batch, DEFAULT_QUEUE_SIZE, self.metrics, a.batch_tick_ms / 1000
        )
        outboxes = OutboxSettings(s.send_queue_size, s.send_queue_bytes, s.shutdown_timeout_seconds)
        self.connection_loop = ConnectionLoop(
            self.admission, outboxes, self.settings, self.rooms, self.broker, self.worker, self.reservations,
            self.client_limits, self.metrics, self.tracks, self.playback,
            expiry_leeway=s.auth.leeway_seconds if s.auth.close_at_expiry else None,
        )
        self.broker.on_source_lost = self.connection_loop.source_lost
        self.origins = origin_policy_from_config(s, [s.host])
        self.handshake = HandshakeChecks(
            self.admission,
            tuple(self.presets.names),
            self.auth,
            self.client_limits,
            self.reservations,
            self.rooms,
            self.broker,
            room_creations,
        )
        self.static = StaticFiles(static_root())
        self.room_routes = RoomRoutes(
            self.auth, self.broker, self.tracks, self.http_requests, tuple(self.presets.names), config.analyze
        )
        self.analyze = AnalyzeEndpoint(config.analyze, self.auth, str(self.model.path), config, self.metrics)
        self.analyze.keep = self.tracks.keep_analysis  # a finished analysis can become a room's prepared track
        self._body_exchanges: set[asyncio.Task[None]] = set()  # requests with a body being served (bodies.py)
        # The HTTP routing table: the first route whose pattern matches the whole path (and answers the method)
        # handles the request. Add a route here.
        self.http = Router(
            [
                route(r"/healthz", self._healthz),
                route(r"/metrics", self._metrics),
                route(TRACK_PATH, self.room_routes.track, ("GET", "PUT", "DELETE")),
                route(ROOM_STATE_PATH, self.room_routes.room_state),
                route(ANALYZE_PATH, self.analyze.handle, methods=("POST",)),
                route(r"/.*", self._static_file),
            ]
        )
        # `server.metrics_port`: this process's /metrics and /healthz on a port of its own (with `--workers`, each
        # worker has one, so Prometheus scrapes every worker, not whichever the kernel picks); nothing else there.
        self.metrics_http = Router(
            [route(r"/healthz", self._healthz), route(r"/metrics", self._metrics)],
            not_found="this port serves /metrics and /healthz only",
        )
        self._server: Server | None = None
        self._metrics_server: Server | None = None

    def _model_public(self) -> dict[str, Any]:
        """The model as welcome describes it."""
        return {
            "name": self.info.name,
            "version": self.info.version,
            "moods": self.info.mood_labels,
            "genres": list(self.info.genres),
            # protocol v1 extension: where each mood sits on the valence/arousal plane (valence/arousal are the
            # probability-weighted mean of these), so clients can draw the plane without hard-coding the model
            "coordinates": {m.label: {"valence": m.valence, "arousal": m.arousal} for m in self.info.moods},
        }

    @property
    def connections(self) -> int:
        return self.admission.connections

    @property
    def closing(self) -> bool:
        return self.admission.closing

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
        s = self.config.server
        # the websockets library logs request lines and headers at debug level: never with a token in them
        install_log_redaction("websockets.server", "websockets", __name__)
        await self.broker.start(self.rooms)
        await self.tracks.store.start()
        await self.outputs.start()
        self.worker.start()
        try:
            self._server = await serve(
                self.connection_loop,
                s.host,
                s.port,
                process_request=self._process_request,
                create_connection=front_door(self._body_request, self._body_exchanges, KeepaliveConnection),
                select_subprotocol=select_subprotocol,
                compression=None,
                max_size=self.max_message_bytes * WS_SIZE_SLACK,
                max_queue=WS_MAX_QUEUE,
                ping_interval=s.ping_interval_seconds,
                ping_timeout=s.ping_timeout_seconds,
                close_timeout=2,
                reuse_port=s.reuse_port or None,
            )
            if s.metrics_port is not None:
                self._metrics_server = await serve(
                    self.connection_loop, s.host, s.metrics_port, process_request=self._process_metrics_request,
                    create_connection=connection_factory(), reuse_port=None,
                )
        except BaseException:
            if self._server is not None:
                self._server.close()
            await self.worker.stop()
            await self.tracks.store.close()
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
        self.admission.closing = True
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self._server is not None:
            self._server.close(close_connections=True)
            for task in list(self._body_exchanges):  # uploads in progress: their connections close now
                task.cancel()
            self.analyze.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), self.config.server.shutdown_timeout_seconds)
            except TimeoutError:
                log.warning("some connections did not close within the shutdown timeout")
        await self.worker.stop()
        self.playback.close()
        self.tracks.close()
        await self.tracks.store.close()
        await self.broker.close()
        self.outputs.close()

    async def __aenter__(self) -> "MoodServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------------ HTTP

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Every HTTP request: plain GETs go to the routing table, websocket handshakes are checked (refused with a
        JSON 4xx/503) or let through. Nothing a client sends may end in a 500 with a traceback: odd requests
        (duplicated headers, control characters) are 400s. Every request, plain or upgrade, first passes the same
        addressing rules (`handshake.check_addressing`)."""
        try:
            method = getattr(request, "method", "GET")
            check_addressing(request, self.origins)
            if "websocket" not in header(request, "Upgrade").lower():
                return await self.http.dispatch(connection, request, method)
            if method != "GET":  # RFC 6455: a handshake is a GET
                raise Refusal(protocol.METHOD_NOT_ALLOWED, f"a websocket handshake is a GET, not {protocol.shown(method, 20)}")
            params = await self.handshake.check(connection, request)
        except Refusal as r:
            self.metrics.refusals.inc(code=r.code)
            log.info("refused %s: %s %s", redact(request.path), r.code, r.message)
            extra = (("Allow", "GET"),) if r.code == protocol.METHOD_NOT_ALLOWED else ()
            return response(r.status, r.body(), "application/json", extra=extra + tuple(r.headers))
        except Exception:
            log.exception("handling the request for %s failed", redact(request.path))
            return error_response(500, protocol.SERVER_ERROR, "internal server error")
        connection.sr_params = params  # type: ignore[attr-defined]  # read by the connection loop
        return None

    async def _process_metrics_request(self, connection: ServerConnection, request: Request) -> Response:
        """`server.metrics_port`: the same addressing rules, then its two routes."""
        try:
            check_addressing(request, self.origins)
        except Refusal as r:
            return response(r.status, r.body(), "application/json")
        return await self.metrics_http.dispatch(connection, request, getattr(request, "method", "GET"))

    async def _body_request(self, exchange: BodyExchange, request: Request) -> Response:
        """A request with a body (bodies.py): the addressing rules every request passes, then the same routing
        table (404, or 405 with Allow, for what no route answers). Anything unexpected is a 500."""
        try:
            check_addressing(request, self.origins)
            return await self.http.dispatch(exchange, request, request.method)  # type: ignore[arg-type]
        except Refusal as r:
            self.metrics.refusals.inc(code=r.code)
            log.info("refused %s %s: %s %s", request.method, redact(request.path), r.code, r.message)
            return error_response(r.status, r.code, r.message, r.headers)
        except Exception:
            log.exception("handling %s %s failed", request.method, redact(request.path))
            return error_response(500, protocol.SERVER_ERROR, "internal server error")

    async def _healthz(self, connection: ServerConnection, request: Request, match: re.Match[str]) -> Response:
        return json_response(200, await self.health())

    async def _metrics(self, connection: ServerConnection, request: Request, match: re.Match[str]) -> Response:
        self.metrics.queue_depth.set(self.worker.depth)
        return response(200, self.metrics.render().encode(), METRICS_CONTENT_TYPE)

    async def _static_file(self, connection: ServerConnection, request: Request, match: re.Match[str]) -> Response:
        return self.static.response(urlsplit(request.path).path)

    async def health(self) -> dict[str, Any]:
        broker = await self.broker.health()
        status = "shutting_down" if self.closing else ("ok" if broker["connected"] else "degraded")
        return {
            "status": status,
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "model": {"name": self.info.name, "version": self.info.version},  # no path: it says how the host is laid out
            "rooms": len(self.rooms),
            "connections": self.connections,
            "broker": broker,
        }

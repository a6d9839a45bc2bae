"""The websocket connection loop: one accepted connection from its first frame to its close.

A connection joins its room (a source claims the room's source slot from the broker first), then feeds every frame
to its sans-I/O `Session` and carries out the actions that come back, in order:

    frames -> Session.receive -> [Reply | Broadcast | Submit | RoomChanged | Drain | Close] -> carried out here
    play   -> [Fetch] -> the room's prepared track from the store -> Session.play -> [..., Follow] -> Playback

It never writes to the websocket itself: everything goes through the connection's bounded `Outbox`, and one sender
task per connection is the only writer, so a slow client blocks nobody but itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .. import protocol
from ..broker.base import Broker, Claim, ClusterUnavailable
from ..metrics import ServerMetrics
from ..model.inference import InferenceWorker, Job
from ..protocol import ConnectParams, Refusal
from ..room.rooms import CONTROL, Outbox, Room, RoomError, RoomRegistry
from ..room.session import Broadcast, Close, Drain, Fetch, Follow, Reply, RoomChanged, Session, SessionSettings, Submit
from .auth import Grant, OPEN
from .shared_limits import AddressLimits
from .prepared import Playback, TrackPreparer
from .reservations import SourceReservations
from .routing import address

log = logging.getLogger(__name__)


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


class Admission:
    """How many connections this process holds, and whether it is shutting down: the handshake checks read it,
    the connection loop counts in it."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.connections = 0
        self.closing = False

    def check(self) -> None:
        """Refusal(server_full) while shutting down or full."""
        if self.closing:
            raise Refusal(protocol.SERVER_FULL, "the server is shutting down")
        if self.connections >= self.max_connections:
            raise Refusal(protocol.SERVER_FULL, f"this server already has its maximum of {self.max_connections} connections")


@dataclass(frozen=True)
class OutboxSettings:
    queue_size: int  # messages a connection's outbox holds before mood updates conflate
    queue_bytes: int
    shutdown_timeout: float  # seconds a closing connection's sender may take to flush


class ConnectionLoop:
    """The websocket handler (`serve(ConnectionLoop(...))`): runs each accepted connection; the handshake has
    already been checked and left `(params, grant)` on the connection as `sr_params`."""

    def __init__(
        self,
        admission: Admission,
        outboxes: OutboxSettings,
        settings: SessionSettings,
        rooms: RoomRegistry,
        broker: Broker,
        worker: InferenceWorker,
        reservations: SourceReservations,
        client_limits: AddressLimits,
        metrics: ServerMetrics,
        tracks: TrackPreparer | None = None,
        playback: Playback | None = None,
        expiry_leeway: float | None = None,
    ) -> None:
        self.admission = admission
        self.expiry_leeway = expiry_leeway  # server.auth.close_at_expiry: close this long after a token's exp
        self.tracks = tracks
        self.playback = playback
        self._noted: dict[str, tuple[str, float] | None] = {}  # room -> the prepared track the store was told of
        self.outboxes = outboxes
        self.settings = settings
        self.rooms = rooms
        self.broker = broker
        self.worker = worker
        self.reservations = reservations
        self.client_limits = client_limits
        self.metrics = metrics
        self._holder_ids = itertools.count(1)

    async def __call__(self, ws: ServerConnection) -> None:
        params, grant = ws.sr_params  # type: ignore[attr-defined]
        outbox = Outbox(self.outboxes.queue_size, self.metrics, self.outboxes.queue_bytes)
        conn = Connection(params, outbox, grant=grant, address=address(ws))
        try:
            self.client_limits.add(conn.address, params.room)  # two handshakes may have raced past the check
        except Refusal as r:
            await ws.close(protocol.CLOSE_POLICY, r.message[:120])
            return
        sender = asyncio.get_running_loop().create_task(self._send_loop(ws, conn.outbox))
        self.admission.connections += 1
        self.metrics.connections.inc(role=params.role)
        self.metrics.connections_total.inc(role=params.role)
        room: Room | None = None
        claim: Claim | None = None
        expiry = self._close_at_expiry(conn)
        try:
            room, claim = await self._join(conn)
            if room is None:
                return
            session = Session(params, room, self.settings, time.perf_counter())
            if not params.is_source and room.prepared is None and self.tracks is not None:
                room.last_timeline = await self.tracks.timeline_elsewhere(room.name, self.settings.hop_seconds) or room.last_timeline
            if not await self._carry_out(conn, room, session.open(), session):
                return
            async for message in ws:
                heard = room.audio_seconds
                actions = session.receive(message, time.perf_counter())
                if room.audio_seconds != heard:  # an accepted audio frame
                    self.metrics.audio_seconds.add(room.audio_seconds - heard)
                    self.metrics.audio_bytes.add(len(message))
                if not await self._carry_out(conn, room, actions, session):
                    break  # `end` (the last update is queued, the outbox closes with 1000) or a fatal error
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection handler failed (room %s, %s)", params.room, params.role)
            self._reply(conn, protocol.error(protocol.SERVER_ERROR, "internal server error", True))
            conn.outbox.close(protocol.CLOSE_SERVER_ERROR, "server error")
        finally:
            if expiry is not None:
                expiry.cancel()
            if room is not None and self.rooms.leave(room, conn):
                self.rooms.publish(room, protocol.source_state(False))
                await self._note_playing(room)  # the follower went with its source
            if claim is not None:
                await self.broker.release_source(params.room, claim.holder)
                self.reservations.disconnected(params.room, grant, time.time())
                if grant.reserve and grant.subject is not None:
                    self.broker.hold_source(params.room, grant.subject, self.reservations.hold_seconds, connected=False)
            self.client_limits.remove(conn.address, params.room)
            self.admission.connections -= 1
            self.metrics.connections.dec(role=params.role)
            conn.outbox.close(protocol.CLOSE_NORMAL)
            try:
                await asyncio.wait_for(sender, self.outboxes.shutdown_timeout)
            except (TimeoutError, asyncio.CancelledError):
                sender.cancel()

    async def _join(self, conn: Connection) -> tuple[Room | None, Claim | None]:
        """Join the room: a source first claims the room's source slot from the broker (atomic across the
        cluster); a listener learns the room's shared state (preset, a source elsewhere). (None, None): refused,
        the fatal error is queued."""
        params = conn.params
        claim = None
        if params.is_source:
            try:
                claim = await self.broker.claim_source(params.room, f"{self.broker.node}/{next(self._holder_ids)}")
            except ClusterUnavailable as e:  # the broker went away after the handshake's check: try again later
                self._reply(conn, protocol.error(protocol.NOT_ALLOWED, str(e), True))
                conn.outbox.close(protocol.CLOSE_TRY_AGAIN_LATER, protocol.CLUSTER_UNAVAILABLE)
                return None, None
            if claim is None:
                self.refuse(conn, f"room {protocol.shown(params.room)} already has a source")
                return None, None
        try:
            preset = (params.preset or claim.preset) if claim else None
            room = self.rooms.join(
                params.room, conn, params.is_source, preset, claim.last_seq if claim else 0, params.track_detection
            )
        except RoomError as e:
            if claim is not None:
                await self.broker.release_source(params.room, claim.holder)
            self.refuse(conn, e.message)
            return None, None
        if not params.is_source:
            await self.broker.sync_room(room)
        else:
            self.reservations.connected(params.room, conn.grant)
            if conn.grant.reserve and conn.grant.subject is not None:
                self.broker.hold_source(params.room, conn.grant.subject, self.reservations.hold_seconds, connected=True)
        return room, claim

    def source_lost(self, room: Room) -> None:
        """The broker found this room's source slot held by another process (it was claimed there while Redis was
        unreachable from here): the local source must go, the other one keeps the room."""
        if isinstance(room.source, Connection):
            self.refuse(room.source, f"room {room.name!r} has a source on another server process now")

    def refuse(self, conn: Connection, message: str) -> None:
        """A fatal not_allowed for a source that may not have (or keep) the room: close 1008."""
        self._reply(conn, protocol.error(protocol.NOT_ALLOWED, message, True))
        conn.outbox.close(protocol.CLOSE_POLICY, protocol.SOURCE_TAKEN)

    async def _carry_out(self, conn: Connection, room: Room, actions: list[Any], session: Session | None = None) -> bool:
        """Carry out a session's actions in order; False when the connection is to stop reading."""
        for action in actions:
            if isinstance(action, Fetch):  # `play`: the track from the store (Redis: any process prepared it)
                track = await self.tracks.get(room.name, action.play.track) if self.tracks is not None else None
                if session is not None and not await self._carry_out(conn, room, session.play(track, action.play, time.perf_counter())):
                    return False
                continue
            if isinstance(action, Follow):
                if self.playback is not None:
                    self.playback.follow(room)
                await self._note_playing(room)
                continue
            if isinstance(action, Submit):
                conn.last_job = await self.worker.submit(Job(room, action.window, action.arrival, action.generation))
            elif isinstance(action, Reply):
                self._reply(conn, action.message)
            elif isinstance(action, Broadcast):
                self.rooms.publish(room, action.message)
            elif isinstance(action, RoomChanged):
                self.broker.room_changed(room)
                await self._note_playing(room)
            elif isinstance(action, Drain):
                if conn.last_job is not None:
                    try:
                        await conn.last_job.done
                    except asyncio.CancelledError:
                        if not self.admission.closing:
                            raise
                conn.outbox.close(action.code, action.reason)
                return False
            elif isinstance(action, Close):
                conn.outbox.close(action.code, action.reason)
                return False
        return True

    def _close_at_expiry(self, conn: Connection) -> asyncio.TimerHandle | None:
        """`server.auth.close_at_expiry`: when the connection's token expires (its `exp` plus the leeway the
        handshake allowed), a fatal `unauthorized` error and close 1008. Off (the default), a connection outlives
        its token: tokens are checked at the handshake."""
        exp = conn.grant.expires_at
        if self.expiry_leeway is None or exp is None:
            return None

        def expire() -> None:
            self._reply(conn, protocol.error(protocol.UNAUTHORIZED, "the access token expired; reconnect with a fresh one", True))
            conn.outbox.close(protocol.CLOSE_POLICY, "access token expired")

        delay = max(0.0, exp + self.expiry_leeway - time.time())
        return asyncio.get_running_loop().call_later(delay, expire)

    async def _note_playing(self, room: Room) -> None:
        """Tell the store which prepared track the room follows, when that changed (a listener joining on another
        process reads it for the timeline)."""
        f = room.prepared
        playing = (f.track.id, f.lead) if f is not None else None
        if self.tracks is not None and playing != self._noted.get(room.name):
            self._noted[room.name] = playing
            await self.tracks.store.set_playing(room.name, *(playing or (None,)))

    def _reply(self, conn: Connection, message: dict[str, Any] | str) -> None:
        if isinstance(message, str):  # already encoded (a prepared track's timeline)
            conn.deliver(message, CONTROL)
            return
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

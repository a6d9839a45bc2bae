"""The websocket handshake's checks, cheapest first, before anything is allocated for the connection: the connect
parameters, the token, room for one more connection, the address's limits, the source slot (reserved,
taken here or elsewhere in the cluster), the room's capacity, the address's rate of new rooms. Each refusal is a
`protocol.Refusal` (HTTP status + JSON body).

A second source that races another one past these checks (the broker's claim is atomic, the checks are not) is
refused when it joins (connection.py).

To add a rule: one more step in `HandshakeChecks.check`, raising Refusal; it sees the request and the parsed params.

Before any of them, every request (a handshake or plain HTTP) passes `check_addressing`: the Host header, and the
Origin of a web page.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request

from .. import protocol
from ..broker.base import Broker, ClusterUnavailable
from ..protocol import ConnectParams, Refusal
from ..room.rooms import RoomError, RoomRegistry
from .auth import Authenticator, Grant
from .connection import Admission, Connection
from .limits import OriginPolicy
from .shared_limits import AddressLimits, SharedRateLimiter
from .reservations import SourceReservations
from .routing import address, header

log = logging.getLogger(__name__)

TAKEOVER_WAIT_SECONDS = 3.0  # a reserving source reconnecting waits this long for its old connection to leave


def check_addressing(request: Request, origins: OriginPolicy) -> None:
    """What every request must say about where it is going, before any route or handshake check sees it: HTTP/1.1
    requires a Host header (a handshake or GET without one is a 400, RFC 9112 3.2); a loopback server answers only
    requests addressed to it (the Host rule against DNS rebinding, `OriginPolicy.allows_host`); a web page's Origin
    must be allowed, for plain HTTP as for websocket handshakes. Refusal for anything refused."""
    host = header(request, "Host", None)
    if host is None and getattr(request, "protocol", "HTTP/1.1") == "HTTP/1.1":
        raise Refusal(protocol.BAD_REQUEST, "an HTTP/1.1 request needs a Host header")
    origins.check_host(host)
    origins.check(header(request, "Origin", None), host)


def select_subprotocol(connection: ServerConnection, offered: Sequence[str]) -> str | None:
    """`sendreturn.v1` when the client offers it (engines such as UE's IWebSocket pass a Protocols list; a browser
    that offers one requires the server to pick it), else none: a client offering nothing, or only names this
    server does not know, is served the same protocol without a subprotocol header."""
    return protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None


class HandshakeChecks:
    def __init__(
        self,
        admission: Admission,
        presets: tuple[str, ...],
        auth: Authenticator,
        client_limits: AddressLimits,
        reservations: SourceReservations,
        rooms: RoomRegistry,
        broker: Broker,
        room_creations: SharedRateLimiter,
    ) -> None:
        self.admission = admission
        self.presets = presets
        self.auth = auth
        self.client_limits = client_limits
        self.reservations = reservations
        self.rooms = rooms
        self.broker = broker
        self.room_creations = room_creations

    async def check(self, connection: ServerConnection, request: Request) -> tuple[ConnectParams, Grant]:
        """The handshake's checks, cheapest first (after `check_addressing`). Refusal for anything refused."""
        params = protocol.parse_connect(request.path, header(request, "Authorization", None), self.presets)
        grant = self.auth.authorize(params.token, params.room, params.role)
        self.admission.check()
        client = address(connection)
        await self.client_limits.check(client, params.room)
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
        try:
            if params.is_source and await self.broker.source_present(params.room):
                raise Refusal(protocol.SOURCE_TAKEN, f"room {protocol.shown(params.room)} already has a source")
        except ClusterUnavailable as e:
            raise Refusal(protocol.CLUSTER_UNAVAILABLE, str(e), (("Retry-After", str(max(1, math.ceil(e.retry_after)))),)) from None
        if self.rooms.get(params.room) is None and not await self.room_creations.allow(client):
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

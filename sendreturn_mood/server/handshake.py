"""The websocket handshake's checks, cheapest first, before anything is allocated for the connection: origin,
the connect parameters, the token, room for one more connection, the address's limits, the source slot (reserved,
taken here or elsewhere in the cluster), the room's capacity, the address's rate of new rooms. Each refusal is a
`protocol.Refusal` (HTTP status + JSON body).

A second source that races another one past these checks (the broker's claim is atomic, the checks are not) is
refused when it joins (connection.py).

To add a rule: one more step in `HandshakeChecks.check`, raising Refusal; it sees the request and the parsed params.
"""

from __future__ import annotations

import asyncio
import logging
import time

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request

from .. import protocol
from ..broker.base import Broker
from ..protocol import ConnectParams, Refusal
from ..room.rooms import RoomError, RoomRegistry
from .auth import Authenticator, Grant
from .connection import Admission, Connection
from .limits import ClientLimits, KeyedRateLimiter, OriginPolicy
from .reservations import SourceReservations
from .routing import address, header

log = logging.getLogger(__name__)

TAKEOVER_WAIT_SECONDS = 3.0  # a reserving source reconnecting waits this long for its old connection to leave


class HandshakeChecks:
    def __init__(
        self,
        admission: Admission,
        origins: OriginPolicy,
        presets: tuple[str, ...],
        auth: Authenticator,
        client_limits: ClientLimits,
        reservations: SourceReservations,
        rooms: RoomRegistry,
        broker: Broker,
        room_creations: KeyedRateLimiter,
    ) -> None:
        self.admission = admission
        self.origins = origins
        self.presets = presets
        self.auth = auth
        self.client_limits = client_limits
        self.reservations = reservations
        self.rooms = rooms
        self.broker = broker
        self.room_creations = room_creations

    async def check(self, connection: ServerConnection, request: Request) -> tuple[ConnectParams, Grant]:
        """The handshake's checks, cheapest first. Refusal for anything refused."""
        self.origins.check(header(request, "Origin", None), header(request, "Host", None))
        params = protocol.parse_connect(request.path, header(request, "Authorization", None), self.presets)
        grant = self.auth.authorize(params.token, params.room, params.role)
        self.admission.check()
        client = address(connection)
        self.client_limits.check(client, params.room)
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
        if self.rooms.get(params.room) is None and not self.room_creations.allow(client):
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

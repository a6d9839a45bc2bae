"""Reserved source slots: a room has one source, and when it drops (network change, laptop lid) another client could
take the room before it reconnects. A source whose token says `reserve: true` holds the slot while connected and for
`server.auth.reserve_seconds` after it leaves; meanwhile only a source with the same `sub` may take the room.

The registry of rooms forgets a room when its last member leaves; a reservation must outlive that (the source is
reconnecting), so it lives here, keyed by room name, on this process (the Redis broker shares it across a cluster).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from .. import protocol
from ..protocol import Refusal
from .auth import Grant


@dataclass
class _Hold:
    subject: str
    until: float  # math.inf while the source is connected


class SourceReservations:
    """Room -> the subject whose source slot is held. Bounded: the oldest entries go first when full."""

    def __init__(self, hold_seconds: float, max_entries: int = 10_000) -> None:
        self.hold_seconds = float(hold_seconds)
        self.max_entries = max(1, int(max_entries))
        self._holds: OrderedDict[str, _Hold] = OrderedDict()

    def __len__(self) -> int:
        return len(self._holds)

    def holder(self, room: str, now: float) -> str | None:
        """The subject holding `room`'s source slot at `now`, or None."""
        hold = self._holds.get(room)
        if hold is None:
            return None
        if hold.until <= now:
            del self._holds[room]
            return None
        return hold.subject

    def check(self, room: str, grant: Grant, now: float) -> bool:
        """May this grant's source take `room` now? Refusal(source_taken) if the slot is held for someone else.
        Returns True when the grant is the holder itself (it may replace a still-registered old connection)."""
        holder = self.holder(room, now)
        if holder is None:
            return False
        if grant.subject == holder:
            return True
        hold = self._holds[room]
        left = "" if math.isinf(hold.until) else f" for {max(0.0, hold.until - now):.0f} more seconds"
        raise Refusal(protocol.SOURCE_TAKEN, f"room {protocol.shown(room)}'s source slot is reserved for its source{left}")

    def connected(self, room: str, grant: Grant) -> None:
        """A source with a reserving grant joined: hold the slot while it is connected."""
        if grant.reserve and grant.subject is not None:
            self._put(room, _Hold(grant.subject, math.inf))

    def disconnected(self, room: str, grant: Grant, now: float) -> None:
        """It left: keep the slot for hold_seconds (only if it is still the holder)."""
        hold = self._holds.get(room)
        if hold is not None and grant.reserve and hold.subject == grant.subject:
            hold.until = now + self.hold_seconds

    def _put(self, room: str, hold: _Hold) -> None:
        self._holds.pop(room, None)
        self._holds[room] = hold
        while len(self._holds) > self.max_entries:
            self._holds.popitem(last=False)

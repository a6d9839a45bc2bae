"""Room state in one place, and the one function that broadcasts to a room.

A room exists while anyone is connected to it; it has at most one source and any number of listeners. Its state
(members, seq, current track, track generation, mood tracker and preset) lives only here, behind `RoomRegistry`,
and every message to a room's members goes through `RoomRegistry.publish`. That is the seam where rooms could later
be spread over several processes (publish to a broker channel per room, members subscribe) without touching the
audio path.

Members are anything with `deliver(text, kind)`: the server's per-connection outbox (`Outbox` below), which is
bounded and conflates mood updates so that a slow client only hurts itself.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from . import protocol
from .metrics import ServerMetrics

log = logging.getLogger(__name__)

MOOD = "mood"  # message kind that may be conflated (dropped oldest-first from a full outbox)
CONTROL = "control"  # welcome, source, error: not conflated
CONTROL_SLACK = 32  # an outbox holds at most send_queue_size + this many messages; beyond, new ones are dropped


class Member(Protocol):
    role: str

    def deliver(self, text: str, kind: str) -> None: ...


class RoomError(protocol.ProtocolError):
    """A join the registry refuses; `code` is a protocol refusal code (source_taken, server_full)."""


@dataclass(eq=False)
class Room:
    name: str
    tracker: Any  # sendreturn_mood.tracker.MoodTracker
    source: Member | None = None
    listeners: set[Member] = field(default_factory=set)
    seq: int = 0
    track: dict[str, str] | None = None
    generation: int = 0  # bumped on every track change / new source: results of older windows are discarded
    audio_seconds: float = 0.0
    closed: bool = False

    @property
    def preset(self) -> str:
        return self.tracker.preset

    @property
    def members(self) -> list[Member]:
        return ([self.source] if self.source is not None else []) + list(self.listeners)

    def info(self) -> dict[str, Any]:
        """What `GET /v1/rooms/{room}` shows (no audio, no identities)."""
        return {
            "room": self.name,
            "source": self.source is not None,
            "listeners": len(self.listeners),
            "seq": self.seq,
            "track": self.track,
            "preset": self.preset,
            "audio_seconds": round(self.audio_seconds, 3),
        }


class RoomRegistry:
    """All rooms of this process. Every method runs on the event loop thread."""

    def __init__(self, make_tracker: Callable[[str | None], Any], max_rooms: int, metrics: ServerMetrics | None = None) -> None:
        self._make_tracker = make_tracker
        self.max_rooms = max_rooms
        self.metrics = metrics
        self._rooms: dict[str, Room] = {}

    def __len__(self) -> int:
        return len(self._rooms)

    def get(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def names(self) -> list[str]:
        return sorted(self._rooms)

    def check_join(self, name: str, is_source: bool) -> None:
        """Raise RoomError if a join would be refused now (the handshake asks; `join` checks again, because two
        handshakes can pass this check before either joins)."""
        self._check(name, is_source)

    def _check(self, name: str, is_source: bool) -> None:
        room = self._rooms.get(name)
        if room is None and len(self._rooms) >= self.max_rooms:
            raise RoomError(protocol.SERVER_FULL, f"this server already has its maximum of {self.max_rooms} rooms")
        if is_source and room is not None and room.source is not None:
            raise RoomError(protocol.SOURCE_TAKEN, f"room {name!r} already has a source")

    def join(self, name: str, member: Member, is_source: bool, preset: str | None = None) -> Room:
        """Add a member (creating the room if needed). A new source restarts the room's analysis: new track
        generation, no track, smoothing reset, and its `preset` (if given) becomes the room's preset."""
        self._check(name, is_source)
        room = self._rooms.get(name)
        if room is None:
            room = Room(name, self._make_tracker(preset if is_source else None))
            self._rooms[name] = room
        if is_source:
            room.source = member
            room.generation += 1
            room.track = None
            room.tracker.reset()
            if preset is not None:
                room.tracker.set_preset(preset)
        else:
            room.listeners.add(member)
        self._update_gauge()
        return room

    def leave(self, room: Room, member: Member) -> bool:
        """Remove a member; the room disappears with its last member. Returns True if the source left."""
        was_source = room.source is member
        if was_source:
            room.source = None
            room.generation += 1  # windows still queued for this source are discarded
        else:
            room.listeners.discard(member)
        if room.source is None and not room.listeners:
            room.closed = True
            self._rooms.pop(room.name, None)
        self._update_gauge()
        return was_source

    def new_track(self, room: Room, track: dict[str, str]) -> None:
        room.track = track
        room.generation += 1
        room.tracker.reset()

    def next_seq(self, room: Room) -> int:
        room.seq += 1
        return room.seq

    def publish(self, room: Room, message: dict[str, Any], kind: str = CONTROL) -> None:
        """THE broadcast: encode once, hand to every member of the room (the source included)."""
        text = protocol.encode(message)
        for member in room.members:
            member.deliver(text, kind)

    def _update_gauge(self) -> None:
        if self.metrics:
            self.metrics.rooms.set(len(self._rooms))


class Outbox:
    """A client's bounded outgoing queue, drained by one sender task.

    When it is full, the oldest queued mood update is dropped (counted in metrics), so a slow client receives
    fewer, newer updates and never blocks the room. Control messages (welcome, source changes, errors) are not
    conflated; a hard cap of `size + CONTROL_SLACK` items still bounds a client that provokes errors and never reads.
    """

    def __init__(self, size: int, metrics: ServerMetrics | None = None) -> None:
        self.size = max(1, size)
        self.metrics = metrics
        self._items: collections.deque[tuple[str, str]] = collections.deque()
        self._ready = asyncio.Event()
        self._closing: tuple[int, str] | None = None
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def deliver(self, text: str, kind: str) -> None:
        if self._closing is not None:
            return
        if len(self._items) >= self.size + CONTROL_SLACK:
            # A client that never reads but keeps provoking errors: drop rather than grow without bound.
            self.dropped += 1
            if self.metrics:
                self.metrics.dropped.inc()
            return
        if kind == MOOD and sum(1 for k, _ in self._items if k == MOOD) >= self.size:
            for i, (k, _) in enumerate(self._items):
                if k == MOOD:
                    del self._items[i]
                    break
            self.dropped += 1
            if self.metrics:
                self.metrics.dropped.inc()
        self._items.append((kind, text))
        self._ready.set()

    def close(self, code: int, reason: str = "") -> None:
        """Send what is queued, then close the websocket with `code`. Later deliveries are ignored."""
        if self._closing is None:
            self._closing = (code, reason)
            self._ready.set()

    async def next(self) -> tuple[str, str] | None:
        """The next (kind, text) to send, or None once the queue is empty and `close` was called (then `closing`
        holds the close code and reason)."""
        while not self._items:
            if self._closing is not None:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    @property
    def closing(self) -> tuple[int, str] | None:
        return self._closing

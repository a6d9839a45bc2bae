"""The broker: what carries a room across processes. One interface, two implementations.

`MemoryBroker` (the default, `broker.url: null`) is one process on its own: the source slot of a room is a dict
entry, nothing leaves the process, and `python -m sendreturn_mood serve` needs nothing else. `RedisBroker`
(`redis_broker.py`, `broker.url: redis://...`) shares rooms between any number of processes and machines.

What the server asks of a broker, and when:
- handshake of a source: `source_present(room)` (409 source_taken); then, joining, `claim_source(room, holder)` ->
  a `Claim` (a lease with its epoch, and the highest seq the room ever published, so a source that moves to another
  process continues `seq` upward) or None (`409 source_taken`); both raise `ClusterUnavailable` (503
  cluster_unavailable, with Retry-After) when the cluster cannot decide who holds the room; `release_source` when
  it leaves;
- a listener joins: `sync_room(room)` (the room's preset and whether a source is connected elsewhere);
- the first / last local member of a room: `room_opened` / `room_closed` (subscribe / unsubscribe);
  every join and leave: `members_changed`;
- every broadcast: `publish(room, text, kind, seq)`; the registry has already delivered it to the local members;
- the source changed the room's shared state (track, preset): `room_changed`;
- HTTP: `snapshot(room)` (`GET /v1/rooms/{room}`, and a listener's welcome) and `health()` (`/healthz`).

A broker never blocks the caller on the network for a broadcast: `publish` queues (bounded) and returns.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import SendReturnError

if TYPE_CHECKING:
    from ..room.rooms import Room, RoomRegistry


class BrokerError(SendReturnError, RuntimeError):
    """A broker that cannot be used (e.g. the configured Redis cannot be reached at start-up)."""


class ClusterUnavailable(BrokerError):
    """Who holds a room's source cannot be decided now (the broker is unreachable, or it lost its state and the
    processes that held rooms are taking them back): a new source must wait `retry_after` seconds rather than risk
    a second source for the room on another process."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Claim:
    """A granted source slot. `last_seq`: the highest seq the room has published anywhere (0 for a new room)."""

    holder: str
    last_seq: int = 0
    preset: str | None = None  # the room's preset as the cluster knows it (kept when the source sets none)
    epoch: int = 0  # the lease's fencing token: higher for every new lease of the room (0 in memory)


def node_id() -> str:
    """A process's name in the cluster: host, pid and a random part (pids repeat across machines and restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Broker:
    """The in-process broker (and the interface every broker implements)."""

    kind = "memory"

    def __init__(self) -> None:
        self.node = node_id()
        self.registry: RoomRegistry | None = None
        self.on_source_lost: Callable[["Room"], None] | None = None  # the server closes such a source
        self._holders: dict[str, str] = {}

    @property
    def connected(self) -> bool:
        """Whether the cluster behaviour is available (always, in memory)."""
        return True

    async def start(self, registry: "RoomRegistry") -> None:
        self.registry = registry

    async def close(self) -> None:
        pass

    # -------------------------------------------------------------------------------------------- source slot

    async def claim_source(self, room: str, holder: str) -> Claim | None:
        if room in self._holders:
            return None
        self._holders[room] = holder
        local = self.registry.get(room) if self.registry else None
        return Claim(holder, local.seq if local else 0)

    async def release_source(self, room: str, holder: str) -> None:
        if self._holders.get(room) == holder:
            del self._holders[room]

    async def source_present(self, room: str) -> bool:
        """Whether the room has a source anywhere (the handshake's check; the claim itself is atomic)."""
        return room in self._holders

    async def sync_room(self, room: "Room") -> None:
        """Bring a local room's view of the shared state (preset, a source on another process) up to date before
        a listener is welcomed. In memory the local room is the whole truth."""

    async def reserved_for(self, room: str) -> str | None:
        """The subject another process holds this room's source slot for (a reserving token's source that is
        connected there or left less than `server.auth.reserve_seconds` ago), or None. In memory the server's own
        `server.reservations.SourceReservations` is the whole truth, so there is never another process's reservation."""
        return None

    def hold_source(self, room: str, subject: str, seconds: float, connected: bool) -> None:
        """Hold `room`'s source slot for `subject` across the cluster: while its source is connected (`connected`,
        renewed with its lease) or for `seconds` after it left."""

    # -------------------------------------------------------------------------------------------- membership

    def room_opened(self, room: "Room") -> None:
        pass

    def room_closed(self, room: "Room") -> None:
        pass

    def members_changed(self, room: "Room") -> None:
        pass

    # -------------------------------------------------------------------------------------------- messages

    def publish(self, room: "Room", text: str, kind: str, seq: int | None = None) -> None:
        pass  # the registry has delivered it to every member already: they are all here

    def room_changed(self, room: "Room") -> None:
        pass

    # -------------------------------------------------------------------------------------------- per-address limits

    async def address_usage(self, address: str) -> tuple[int, frozenset[str]]:
        """A client address's connections and rooms on the cluster's other processes (none in memory, and none
        known while the cluster cannot be reached: each process then counts alone)."""
        return 0, frozenset()

    def address_changed(self, address: str, rooms: dict[str, int]) -> None:
        """This process's connections of `address` per room are now `rooms` (empty: none)."""

    async def take_token(self, kind: str, key: str, rate: float, burst: float) -> bool | None:
        """Take a token from the cluster's bucket `kind` for `key` (refilled at `rate` per second up to `burst`):
        whether one was there; None when there is no shared bucket (the caller's local one decides)."""
        return None

    # -------------------------------------------------------------------------------------------- HTTP

    async def snapshot(self, room: str) -> dict[str, Any] | None:
        """The room's state across the cluster (the `GET /v1/rooms/{room}` body), None when nobody is in it."""
        local = self.registry.get(room) if self.registry else None
        return local.info() if local else None

    async def health(self) -> dict[str, Any]:
        """The broker's part of `/healthz`."""
        return {"kind": self.kind, "node": self.node, "connected": True}

"""Per-address limits for a whole cluster: with a broker that counts (Redis), a client's connections, rooms, room
creations and HTTP requests are counted over every process, so N processes do not give it N times the allowance.

The local bookkeeping (`limits.ClientLimits`, `limits.KeyedRateLimiter`) always applies as well, and decides alone
in memory or while the broker is unreachable. Checks at the handshake read the other processes' counts; two
handshakes from one address on two processes in the same few milliseconds can both pass (each process still
enforces its own count on `add`)."""

from __future__ import annotations

from ..broker.base import Broker
from .limits import ClientLimits, KeyedRateLimiter


class AddressLimits:
    """`check` at the handshake, `add` / `remove` around a connection's life: the local counts, plus the broker's
    record of this address on the other processes."""

    def __init__(self, local: ClientLimits, broker: Broker) -> None:
        self.local = local
        self.broker = broker

    async def check(self, address: str, room: str) -> None:
        self.local.check(address, room)
        elsewhere = await self.broker.address_usage(address)
        if elsewhere[0]:
            self.local.check(address, room, elsewhere)

    def add(self, address: str, room: str) -> None:
        self.local.add(address, room)
        self.broker.address_changed(address, self.local.rooms_of(address))

    def remove(self, address: str, room: str) -> None:
        self.local.remove(address, room)
        self.broker.address_changed(address, self.local.rooms_of(address))


class SharedRateLimiter:
    """A token bucket per address shared by the cluster (`kind` names it in the broker), with the local bucket as
    the fallback when the broker cannot count."""

    def __init__(self, kind: str, local: KeyedRateLimiter, broker: Broker) -> None:
        self.kind = kind
        self.local = local
        self.broker = broker

    async def allow(self, key: str) -> bool:
        shared = await self.broker.take_token(self.kind, key, self.local.rate, self.local.burst)
        return self.local.allow(key) if shared is None else shared

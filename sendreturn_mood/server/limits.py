"""Bounds on what one client can cause, as pure bookkeeping the server consults at the handshake (no I/O here).

- `OriginPolicy`: which web pages may open a websocket to this server. Browsers send `Origin` and any page the user
  opens could otherwise join, listen to or stream into a local server. Non-browser clients send no Origin
  and are not affected.
- `ClientLimits`: connections and rooms per client address, so one client holding `max_rooms` idle listeners cannot
  shut everyone else out.
- `KeyedRateLimiter`: token buckets per key (client address), bounded in the number of keys: room creations per
  address, HTTP room-state requests per address (room names could be probed at ~1,000 requests/s).

Client addresses are the TCP peer's: behind a reverse proxy every client has the proxy's address, so raise the
per-address limits there (or let the proxy enforce them).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import urlsplit

from .. import protocol
from ..config import ServerSettings
from ..protocol import Refusal

MAX_TRACKED_KEYS = 10_000  # rate-limiter buckets kept (least recently used go first)


def is_loopback(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (hostnames other than localhost are not resolved)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(netloc: str, default_port: int | None) -> tuple[str, int | None]:
    parsed = urlsplit("//" + netloc)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    return (parsed.hostname or ""), (port if port is not None else default_port)


@dataclass(frozen=True)
class OriginPolicy:
    """Allow-list for the `Origin` header of browser connections.

    Allowed: no Origin (not a browser); the page's own origin (Origin's host:port equal to the Host header, and when
    the server listens on loopback the Host must be a loopback name too, which stops DNS-rebinding pages); any
    http(s) origin on localhost when `allow_localhost`; and every entry of `allowed` (an exact origin such as
    "https://game.example.com", a wildcard subdomain "https://*.example.com", or "*" for any)."""

    allowed: tuple[str, ...] = ()
    allow_localhost: bool = True
    server_is_loopback: bool = True
    allowed_hosts: tuple[str, ...] = ()  # Host names a loopback server answers besides loopback names ("*": any)

    def allows(self, origin: str | None, host_header: str | None) -> bool:
        if origin is None:
            return True
        origin = origin.strip()
        if "*" in self.allowed:
            return True
        lowered = origin.lower()
        for entry in self.allowed:
            e = entry.lower().rstrip("/")
            if e == lowered:
                return True
            if "://*." in e:
                scheme, _, suffix = e.partition("://*.")
                o_scheme, _, o_rest = lowered.partition("://")
                if o_scheme == scheme and o_rest.endswith("." + suffix) and "/" not in o_rest:
                    return True
        parts = urlsplit(lowered)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            return False  # "null" (sandboxed frames, file://) and anything odd
        default = 443 if parts.scheme == "https" else 80
        o_host, o_port = _host_port(parts.netloc, default)
        if self.allow_localhost and is_loopback(o_host):
            return True
        if host_header:
            h_host, h_port = _host_port(host_header.strip().lower(), default)
            if (o_host, o_port) == (h_host, h_port) and (not self.server_is_loopback or is_loopback(h_host)):
                return True
        return False

    def allows_host(self, host_header: str | None) -> bool:
        """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 reaches a loopback server with
        `Host: evil.example` (and, for a same-origin GET, no Origin at all). A loopback server therefore answers only
        requests addressed to a loopback name, to a name in `allowed_hosts`, or to the host of an allowed origin (a
        reverse proxy in front of it keeping the public Host). A server bound to other addresses answers any Host."""
        if not self.server_is_loopback or "*" in self.allowed_hosts or "*" in self.allowed:
            return True
        host, _ = _host_port((host_header or "").strip().lower(), None)
        if is_loopback(host):
            return True
        names = {h.lower() for h in self.allowed_hosts}
        names |= {_host_port(urlsplit(o.lower()).netloc, None)[0] for o in self.allowed if "://" in o and "*" not in o}
        suffixes = [o.lower().partition("://*.")[2].rstrip("/") for o in self.allowed if "://*." in o]
        return host in names or any(host.endswith("." + s) for s in suffixes if s)

    def check_host(self, host_header: str | None) -> None:
        """Refusal (HTTP 403 forbidden_origin) for a request addressed to a name this server does not answer."""
        if not self.allows_host(host_header):
            raise Refusal(
                protocol.FORBIDDEN_ORIGIN,
                f"this server does not answer requests for host {protocol.shown(host_header, 80)} "
                "(it listens on loopback: server.allowed_hosts, or an origin in server.allowed_origins)",
            )

    def check(self, origin: str | None, host_header: str | None) -> None:
        """Refusal (HTTP 403 forbidden_origin) for an origin that is not allowed."""
        if not self.allows(origin, host_header):
            raise Refusal(
                protocol.FORBIDDEN_ORIGIN,
                f"web pages from origin {protocol.shown(origin, 80)} may not connect (server.allowed_origins)",
            )


@dataclass
class _Bucket:
    tokens: float
    t: float


class KeyedRateLimiter:
    """One token bucket per key (`rate` per second, `burst` at most), at most `max_keys` keys (LRU)."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max(1, int(max_keys))
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, cost: float = 1.0, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        b = self._buckets.pop(key, None)
        if b is None:
            b = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + max(0.0, now - b.t) * self.rate)
        b.t = now
        ok = b.tokens >= cost
        if ok:
            b.tokens -= cost
        self._buckets[key] = b
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok


@dataclass
class _Usage:
    connections: int = 0
    rooms: dict[str, int] = field(default_factory=dict)


class ClientLimits:
    """Connections and distinct rooms per client address. `check` at the handshake, `add`/`remove` around the
    connection's life (so two handshakes racing past `check` are still bounded by `add`)."""

    def __init__(self, max_connections: int, max_rooms: int) -> None:
        self.max_connections = int(max_connections)
        self.max_rooms = int(max_rooms)
        self._usage: dict[str, _Usage] = {}

    def check(self, address: str, room: str, elsewhere: tuple[int, frozenset[str]] = (0, frozenset())) -> None:
        """Refusal(rate_limited, HTTP 429) if `address` may not open another connection to `room`. `elsewhere`: the
        address's connections and rooms on the cluster's other processes (a broker counts them), added to ours."""
        u = self._usage.get(address)
        if u is None and not elsewhere[0]:
            return
        connections = (u.connections if u else 0) + elsewhere[0]
        if connections >= self.max_connections:
            raise Refusal(protocol.RATE_LIMITED, f"this address already has {connections} connections (the limit per address)")
        # counted without copying the address's rooms: one address (a game server, a benchmark) may hold thousands,
        # and this runs at every handshake
        here = u.rooms if u else {}
        if room in here or room in elsewhere[1]:
            return
        rooms = len(here) + (len(elsewhere[1] - here.keys()) if elsewhere[1] else 0)
        if rooms >= self.max_rooms:
            raise Refusal(protocol.RATE_LIMITED, f"this address is already in {rooms} rooms (the limit per address)")

    def add(self, address: str, room: str) -> None:
        self.check(address, room)
        u = self._usage.setdefault(address, _Usage())
        u.connections += 1
        u.rooms[room] = u.rooms.get(room, 0) + 1

    def remove(self, address: str, room: str) -> None:
        u = self._usage.get(address)
        if u is None:
            return
        u.connections -= 1
        left = u.rooms.get(room, 0) - 1
        if left > 0:
            u.rooms[room] = left
        else:
            u.rooms.pop(room, None)
        if u.connections <= 0:
            del self._usage[address]

    def usage(self, address: str) -> tuple[int, int]:
        u = self._usage.get(address)
        return (0, 0) if u is None else (u.connections, len(u.rooms))

    def rooms_of(self, address: str) -> dict[str, int]:
        """The address's connections per room on this process (what a broker records for the cluster)."""
        u = self._usage.get(address)
        return {} if u is None else dict(u.rooms)

    def __len__(self) -> int:
        return len(self._usage)


def origin_policy_from_config(server: ServerSettings, bind_hosts: Iterable[str]) -> OriginPolicy:
    """The policy for `server.allowed_origins` / `server.allow_localhost_origins` on these bound addresses."""
    return OriginPolicy(
        server.allowed_origins, server.allow_localhost_origins, all(is_loopback(h) for h in bind_hosts), server.allowed_hosts
    )

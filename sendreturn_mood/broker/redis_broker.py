"""Rooms shared by any number of processes and machines through Redis (`broker.url: redis://...`).

The same pattern as Socket.IO's Redis adapter or Django Channels' Redis layer: every process keeps its own local
members; a room's messages go out on one Redis pub/sub channel per room, and every process with listeners in that
room (other than the process of its source) is subscribed to it. What must be decided once for the whole cluster lives in Redis keys:

    {prefix}src:{room}       the room's source slot: "<epoch>|<holder>", with a lease (PX) its process renews; a
                             process that dies stops renewing, the key expires, and listeners elsewhere are told
    {prefix}room:{room}      hash: seq (the highest published or seen anywhere: a source that moves continues above
                             it), epoch (of the latest lease), preset, track, audio_seconds - what
                             `GET /v1/rooms/{room}` and a late listener's welcome need
    {prefix}grace            while present, no new lease is granted: Redis lost its data (a restart) and the
                             processes that held rooms are taking them back
    {prefix}addr:{address}   hash: node -> connections from that client address, node|room -> those to a room
                             (per-address limits across the cluster: server/shared_limits.py)
    {prefix}bucket:{kind}:{address}  a token bucket shared by the cluster (room creations, HTTP requests)
    {prefix}resv:{room}      the subject a reserving source's slot is held for (while it is connected, renewed with
                             its lease, and `server.auth.reserve_seconds` after it left), so no other client can
                             take the room on any process while that source reconnects
    {prefix}members:{room}   hash: node -> listeners of the room on that node
    {prefix}nodes            sorted set: node -> last heartbeat (ms); a node missing heartbeats is dead
    {prefix}node:{node}      hash: connections, rooms of that node (expires with it)
    {prefix}noderooms:{node} set: the rooms that node has members in (expires with it)
    channel {prefix}ch:{room}  "<holder>\\x1f<epoch>\\x1f<kind>\\x1f<seq>\\x1f<json>": the exact text sent to
                             clients, encoded once, with the lease that sent it

A process delivers its own broadcasts to its local members directly (no round trip, and they keep working while
Redis is away) and skips its own messages when they come back on the channel. One writer task sends everything
for Redis in order through pipelines, from one bounded queue: a slow or absent Redis costs memory up to
`broker.max_pending` messages, then the oldest are dropped and counted.

No split brain, the way lease-based systems avoid it. A room's source slot is a lease with an epoch (a fencing
token, from Redis's clock and always above the room's previous one). Every publish carries its lease and is a
script that publishes only while that lease still holds the slot, so a process whose lease lapsed (it could not
renew within `broker.lease_seconds`, e.g. while cut off from Redis) publishes nothing more for that room, and
receivers drop what comes from an older epoch. While a process cannot reach Redis it keeps running the rooms whose
sources it has, for its own members, but refuses a new source (503 `cluster_unavailable`, Retry-After): only Redis
can say nobody else holds the room. Once back it re-registers, raises each room's recorded seq to what its own
listeners have seen, renews its leases (one that lapsed with nobody else taking the room is taken again with a new
epoch and announced; one another process took meanwhile loses its local source, closed with an error) and
re-subscribes. If Redis lost its data (a restart), no new lease is granted for a grace period while the processes
take theirs back. Receivers keep `seq` rising (a late or repeated update is dropped; a gap is announced with a
`resync` message) and `source` messages following the lease that holds the room (room/rooms.py).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from redis import asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .. import protocol
from .base import Broker, BrokerError, Claim, ClusterUnavailable

if TYPE_CHECKING:
    from ..config import Settings
    from ..room.rooms import Room, RoomRegistry

log = logging.getLogger(__name__)

SEP = "\x1f"  # envelope separator: not valid unescaped in JSON text, so it never occurs in a message
STATE_TTL_SECONDS = 24 * 3600  # a room's shared state (seq, preset, track) outlives a quiet room this long
BATCH = 512  # most commands in one pipeline
NODE_TTL_FACTOR = 3  # a node is dead after this many missed heartbeats
BACKOFF_START = 0.1
POOL_CONNECTIONS = 16  # Redis connections per process for commands (pub/sub has its own)
ConnErrors = (RedisError, OSError, ConnectionError, asyncio.TimeoutError)
# What a call on a connection that is being torn down can raise besides ConnErrors (redis-py's internals, e.g. a
# writer already gone): the request paths treat any of these as "Redis is away" rather than fail the request.
CallErrors = (*ConnErrors, AttributeError, RuntimeError)

# The next lease of a room: Redis's clock in ms, and always above the room's last epoch (a clock that steps back,
# or a restart that lost the hash, never makes an older lease look newer). Shared by CLAIM and RENEW.
NEXT_EPOCH = """
local function next_epoch(hash)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local epoch = math.max(now, tonumber(redis.call('HGET', hash, 'epoch') or '0') + 1)
  redis.call('HSET', hash, 'epoch', epoch)
  return epoch
end
"""
# Claim a room's source slot: KEYS = slot, room hash, grace; ARGV = holder, lease ms. Returns {epoch, seq, preset},
# {0} when another lease holds it, {-1, ms} while the grace after a Redis restart lasts.
CLAIM = NEXT_EPOCH + """
local grace = redis.call('PTTL', KEYS[3])
if grace > 0 then return {-1, grace} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local epoch = next_epoch(KEYS[2])
redis.call('SET', KEYS[1], string.format('%d', epoch) .. '|' .. ARGV[1], 'PX', ARGV[2])
return {epoch, redis.call('HGET', KEYS[2], 'seq') or '0', redis.call('HGET', KEYS[2], 'preset') or ''}
"""
# Renew this node's leases: KEYS = n slots then their n room hashes; ARGV = n lease values "<epoch>|<holder>",
# then n holders, then lease ms. Per slot: 0 kept; a new epoch when the lease had lapsed and nobody took the room
# (taken again, grace or not: this process held it); -1 lost (another lease holds it).
RENEW = NEXT_EPOCH + """
local n = #KEYS / 2
local ms = ARGV[#ARGV]
local out = {}
for i = 1, n do
  local cur = redis.call('GET', KEYS[i])
  if cur == ARGV[i] then redis.call('PEXPIRE', KEYS[i], ms); out[i] = 0
  elseif not cur then
    local epoch = next_epoch(KEYS[n + i])
    redis.call('SET', KEYS[i], string.format('%d', epoch) .. '|' .. ARGV[n + i], 'PX', ms)
    out[i] = epoch
  else out[i] = -1 end
end
return out
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Publish for a room, fenced: KEYS = slot, room hash; ARGV = lease value, seq ('' for other than mood updates),
# channel, envelope, state ttl. {1, 0}: published. {0, 0}: fenced (the lease no longer holds the slot). {2, seq}:
# an update at or below the room's recorded seq (listeners elsewhere have seen that far): not published, and the
# publisher continues above `seq`. A mood update's seq is recorded (only upward) in the same step, so a process
# that takes the room over reads a seq at least as high as any listener can have seen.
PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, 0} end
if ARGV[2] ~= '' then
  local cur = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
  if tonumber(ARGV[2]) <= cur then return {2, cur} end
  redis.call('HSET', KEYS[2], 'seq', ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {1, 0}
"""
# Raise a room's recorded seq to what this process's listeners have seen (after a reconnect).
RAISE_SEQ = """
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1]); redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# This node's connections of one client address: KEYS = the address's hash; ARGV = node, state ttl, then pairs of
# room and count. Fields: "<node>" -> connections, "<node>|<room>" -> connections to that room; this node's old
# fields go, the given ones are written (none: the node has no connection from that address any more).
ADDRESS = """
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if f == ARGV[1] or string.sub(f, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then redis.call('HDEL', KEYS[1], f) end
end
local total = 0
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[1] .. '|' .. ARGV[i], ARGV[i + 1]); total = total + tonumber(ARGV[i + 1])
end
if total > 0 then redis.call('HSET', KEYS[1], ARGV[1], total); redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return total
"""
# A token bucket shared by the cluster: KEYS = bucket; ARGV = rate per second, burst, ttl ms. 1: a token taken.
TAKE_TOKEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 't')
local tokens = math.min(burst, (tonumber(b[1]) or burst) + math.max(0, now - (tonumber(b[2]) or now)) * rate)
local ok = 0
if tokens >= 1 then tokens = tokens - 1; ok = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 't', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return ok
"""
SCRIPTS = {"claim": CLAIM, "renew": RENEW, "release": RELEASE, "publish": PUBLISH, "raise_seq": RAISE_SEQ,
           "address": ADDRESS, "take_token": TAKE_TOKEN}

KIND_CODES = {"mood": "m", "control": "c", "source": "s"}
CODE_KINDS = {v: k for k, v in KIND_CODES.items()}
ENDED = "x"  # an envelope's kind for "this lease is over" (posted by a watcher after the slot expired or changed)
WATCH_FRACTION = 10  # remote sources are checked every lease / this: a dead process is told within ~1.1 leases
GRACED_TTL_SECONDS = 7 * 24 * 3600  # how long Redis remembers that the grace after one of its restarts was given


@dataclass(frozen=True)
class Lease:
    """This node's hold on a room's source slot: the holder (a source connection) and the lease's epoch."""

    holder: str
    epoch: int

    @property
    def value(self) -> str:
        return f"{self.epoch}|{self.holder}"


def parse_lease(value: str | None) -> Lease | None:
    if not value:
        return None
    epoch, _, holder = value.partition("|")
    return Lease(holder, int(epoch))


def redact(url: str) -> str:
    """The URL without its password (for logs, /healthz and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + netloc, parts.path, parts.query, parts.fragment))


class RedisBroker(Broker):
    kind = "redis"

    def __init__(self, config: Settings, metrics: Any = None) -> None:
        super().__init__()
        b = config.broker
        self.url = str(b.url)
        self.prefix = b.prefix
        self.lease_ms = int(b.lease_seconds * 1000)
        self.connect_timeout = b.connect_timeout_seconds
        self.max_pending = b.max_pending
        self.backoff_max = b.reconnect_max_seconds
        self.metrics = metrics
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._up = False
        self._closing = False
        self._pending: collections.deque[tuple[str, tuple[Any, ...]]] = collections.deque()
        self._wake = asyncio.Event()
        self._claims: dict[str, Lease] = {}  # room -> this node's lease on its source slot
        self._lease_until: dict[str, float] = {}  # room -> monotonic time this node's lease lapses unless renewed
        self._holds: dict[str, tuple[str, float]] = {}  # room -> (subject, hold seconds) of this node's reserving sources
        self._wanted: set[str] = set()  # rooms with local listeners and a source elsewhere: subscribed
        self._subscribed: set[str] = set()
        self._sub_lock = asyncio.Lock()
        self._sub_dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}
        self._run_id: str | None = None  # the Redis server's run id: another one means Redis restarted
        self._last_ok = 0.0  # monotonic start of the last heartbeat round Redis answered
        self._live: set[str] = set()  # the cluster's live nodes at the last heartbeat
        self._addresses: dict[str, dict[str, int]] = {}  # client address -> this node's connections per room
        self.reconnects = 0

    # ------------------------------------------------------------------------------------------------ keys

    def _k(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    def _channel(self, room: str) -> str:
        return self._k("ch", room)

    @property
    def connected(self) -> bool:
        """Redis answered a heartbeat within the last lease (a connection that stalls is not reachable either)."""
        return self._up and time.monotonic() - self._last_ok < self.lease_ms / 1000

    @property
    def redis(self) -> aioredis.Redis | None:
        """The command connection while Redis is reachable (None otherwise), for counters kept in Redis."""
        return self._redis if self.connected else None

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def start(self, registry: "RoomRegistry") -> None:
        """Connect (a clear BrokerError when Redis cannot be reached within broker.connect_timeout_seconds),
        register this node, then keep the connection alive in the background."""
        self.registry = registry
        try:
            await asyncio.wait_for(self._connect(), self.connect_timeout + 1.0)
        except ConnErrors as e:
            await self._disconnect()
            raise BrokerError(f"cannot reach Redis at {redact(self.url)} (broker.url): {e or type(e).__name__}") from None
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="redis-broker")

    async def close(self) -> None:
        """Leave the cluster cleanly: release this node's slots and registrations, then disconnect."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, *ConnErrors):
                pass
        if self._up and self._redis is not None:
            try:
                await asyncio.wait_for(self._flush_and_leave(), 2.0)
            except ConnErrors:
                pass
        await self._disconnect()

    async def _flush_and_leave(self) -> None:
        assert self._redis is not None
        await self._write_pending()
        pipe = self._redis.pipeline(transaction=False)
        for room, lease in self._claims.items():
            pipe.evalsha(self._scripts["release"], 1, self._k("src", room), lease.value)
        for room in self.registry or []:
            pipe.hdel(self._k("members", room.name), self.node)
        pipe.zrem(self._k("nodes"), self.node)
        pipe.delete(self._k("node", self.node), self._k("noderooms", self.node))
        await pipe.execute()

    async def _connect(self) -> None:
        """Open the command connection and the pub/sub connection; load the scripts; resynchronise this node."""
        # A bounded pool that waits for a free connection: a burst of handshakes (each asks Redis whether the room
        # has a source) must not open a connection each.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=POOL_CONNECTIONS,
            timeout=self.connect_timeout,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=max(2.0, self.lease_ms / 1000),
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._redis = aioredis.Redis(connection_pool=pool, auto_close_connection_pool=True)
        await self._redis.ping()
        for name, src in SCRIPTS.items():
            self._scripts[name] = await self._redis.script_load(src)
        await self._grace_after_restart()
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._k("nodech", self.node))  # always subscribed: the reader never idles out
        self._subscribed = set()
        started = time.monotonic()
        await self._resync()
        self._up = True
        self._last_ok = started
        if self.metrics:
            self.metrics.broker_up.set(1)

    async def _grace_after_restart(self) -> None:
        """Redis restarted since this process last saw it (another run id): its leases may be gone with its data,
        so no new lease is granted for a while (the first process back sets it, once per Redis run) while every
        process that held rooms takes them back (`RENEW` re-takes a lapsed lease whatever the grace)."""
        assert self._redis is not None
        run_id = str((await self._redis.info("server"))["run_id"])
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if restarted and await self._redis.set(self._k("graced", run_id), 1, nx=True, ex=GRACED_TTL_SECONDS):
            grace_ms = self.lease_ms + int(self.backoff_max * 1000)
            await self._redis.set(self._k("grace"), 1, px=grace_ms)
            log.warning("Redis restarted: no new source is accepted for %.1f s while processes take their rooms back", grace_ms / 1000)

    async def _disconnect(self) -> None:
        was_up, self._up = self._up, False
        if self.metrics:
            self.metrics.broker_up.set(0)
        for closer in (self._pubsub, self._redis):
            if closer is not None:
                try:
                    await closer.aclose()
                except Exception:  # a dead connection may fail to close; it is dropped either way
                    pass
        self._pubsub = self._redis = None
        self._subscribed = set()
        if was_up and not self._closing:
            log.warning("lost Redis at %s; serving local members only until it is back", redact(self.url))
        for item in [p for p in self._pending if p[0] == "release"]:  # nobody waits on Redis while it is away
            item[1][2].set()

    async def _supervise(self) -> None:
        """Run the reader, writer, heartbeat and watcher while connected; on any connection error, reconnect with
        backoff."""
        backoff = BACKOFF_START
        while not self._closing:
            if self._up:
                tasks = [
                    asyncio.ensure_future(self._reader()),
                    asyncio.ensure_future(self._writer()),
                    asyncio.ensure_future(self._heartbeat()),
                    asyncio.ensure_future(self._subscriber()),
                    asyncio.ensure_future(self._watcher()),
                ]
                try:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                    for t in done:
                        if t.exception() is not None and not isinstance(t.exception(), ConnErrors):
                            log.error("Redis broker task failed", exc_info=t.exception())
                finally:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                await self._disconnect()
                backoff = BACKOFF_START
            await asyncio.sleep(backoff)
            backoff = min(self.backoff_max, backoff * 2)
            try:
                await asyncio.wait_for(self._connect(), self.connect_timeout + 1.0)
            except ConnErrors as e:
                log.info("Redis at %s still unreachable (%s); retrying in %.1f s", redact(self.url), e, backoff)
                await self._disconnect()
                continue
            self.reconnects += 1
            if self.metrics:
                self.metrics.broker_reconnects.inc()
            log.warning("reconnected to Redis at %s", redact(self.url))

    async def _resync(self) -> None:
        """After (re)connecting: register this node, its rooms and members; raise every local room's recorded seq
        to what its listeners here have seen; renew this node's leases and record their rooms' state; subscribe to
        every room whose source is elsewhere."""
        assert self._redis is not None and self.registry is not None
        await self._heartbeat_once()
        rooms = list(self.registry)
        pipe = self._redis.pipeline(transaction=False)
        for room in rooms:
            self._members(pipe, room)
            if room.seq:
                pipe.evalsha(self._scripts["raise_seq"], 1, self._k("room", room.name), room.seq, STATE_TTL_SECONDS)
            if room.source is not None and room.name in self._claims:
                self._state(pipe, room)
        # this node's per-address counts as they are now (Redis may have lost them; changes queued while it was away
        # are superseded by this)
        self._pending = collections.deque(p for p in self._pending if p[0] != "address")
        for address, counts in list(self._addresses.items()):
            self._address(pipe, address, counts)
            if not counts:  # its fields here are gone with this write
                del self._addresses[address]
        await pipe.execute()
        await self._renew()
        self._live = set(await self._live_nodes())
        async with self._sub_lock:
            names = [r.name for r in rooms if r.listeners and r.source is None]
            if names:
                await self._pubsub.subscribe(*(self._channel(n) for n in names))
            self._subscribed = set(names)
            self._wanted = set(names)

    # ------------------------------------------------------------------------------------------------ source slot

    def _unavailable(self) -> ClusterUnavailable:
        return ClusterUnavailable(
            "the cluster's broker (Redis) cannot be reached from this process, so it cannot tell whether another "
            "process holds this room; try again", max(1.0, min(self.backoff_max, self.lease_ms / 1000)),
        )

    @staticmethod
    def _restarted(grace_ms: int) -> ClusterUnavailable:
        return ClusterUnavailable("the cluster's broker (Redis) restarted; the processes are taking their rooms back first",
                                  max(1.0, grace_ms / 1000))

    async def claim_source(self, room: str, holder: str) -> Claim | None:
        if room in self._claims:
            return None
        if not self.connected or self._redis is None:
            raise self._unavailable()
        sent = time.monotonic()
        try:
            got = await asyncio.wait_for(self._redis.evalsha(
                self._scripts["claim"], 3, self._k("src", room), self._k("room", room), self._k("grace"), holder, self.lease_ms,
            ), self.lease_ms / 1000 / 2)
        except CallErrors:
            raise self._unavailable() from None  # the supervisor notices the lost connection too, and reconnects
        if int(got[0]) == -1:
            raise self._restarted(int(got[1]))
        if int(got[0]) == 0:
            return None
        lease = Lease(holder, int(got[0]))
        self._claims[room] = lease
        self._lease_until[room] = sent + self.lease_ms / 1000
        return Claim(holder, int(got[1] or 0), got[2] or None, lease.epoch)

    async def release_source(self, room: str, holder: str) -> None:
        """Give the slot up after everything the source published (the release waits its turn in the writer's queue,
        so its `source: disconnected` is out first); returns once done, or at once while Redis is away (the lease
        then lapses by itself)."""
        lease = self._claims.get(room)
        if lease is None or lease.holder != holder:
            return
        del self._claims[room]
        self._lease_until.pop(room, None)
        if not self._up:
            return
        done = asyncio.Event()
        self._queue("release", (room, lease.value, done))
        try:
            await asyncio.wait_for(done.wait(), self.connect_timeout)
        except TimeoutError:
            pass

    async def source_present(self, room: str) -> bool:
        if room in self._claims:
            return True
        if not self.connected or self._redis is None:
            raise self._unavailable()
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.exists(self._k("src", room))
            pipe.pttl(self._k("grace"))
            present, grace = await asyncio.wait_for(pipe.execute(), self.lease_ms / 1000 / 2)
        except CallErrors:
            raise self._unavailable() from None
        if not present and int(grace) > 0:
            raise self._restarted(int(grace))
        return bool(present)

    async def reserved_for(self, room: str) -> str | None:
        if not self._up or self._redis is None:
            return None
        try:
            holder = await self._redis.get(self._k("resv", room))
        except CallErrors:
            return None
        return str(holder) if holder else None

    def hold_source(self, room: str, subject: str, seconds: float, connected: bool) -> None:
        if connected:
            self._holds[room] = (subject, seconds)
            ms = self.lease_ms + int(seconds * 1000)
        else:
            self._holds.pop(room, None)
            ms = int(seconds * 1000)
        if ms > 0:
            self._queue("resv", (room, subject, ms))

    def _lapsed(self, room: str) -> bool:
        return time.monotonic() > self._lease_until.get(room, 0.0)

    async def _renew(self) -> None:
        """Renew this node's leases. One that lapsed with nobody else taking the room is this node's again with a
        new epoch (announced: listeners elsewhere may have been told the source left); one that another process
        holds now is lost: its local source is closed."""
        if not self._claims or self._redis is None:
            return
        rooms = list(self._claims)
        leases = [self._claims[r] for r in rooms]
        sent = time.monotonic()
        got = await self._redis.evalsha(
            self._scripts["renew"], 2 * len(rooms), *(self._k("src", r) for r in rooms), *(self._k("room", r) for r in rooms),
            *(x.value for x in leases), *(x.holder for x in leases), self.lease_ms,
        )
        for room, lease, result in zip(rooms, leases, got):
            if self._claims.get(room) != lease:  # released meanwhile
                continue
            local = self.registry.get(room) if self.registry else None
            if int(result) < 0:
                del self._claims[room]
                self._lease_until.pop(room, None)
                if local is not None and local.seq:  # what this node's listeners saw: the new holder goes on above
                    self._queue("raise", (room, local.seq))
                log.warning("room %s: another process holds its source slot now; closing the local source", room)
                if local is not None and self.on_source_lost is not None:
                    self.on_source_lost(local)
                continue
            self._lease_until[room] = sent + self.lease_ms / 1000
            if int(result) > 0:
                self._claims[room] = renewed = Lease(lease.holder, int(result))
                log.info("room %s: its source's lease had lapsed; taken again (epoch %d)", room, renewed.epoch)
                if local is not None and local.source is not None:
                    self._queue("state", (local,))
                    self._queue_publish(room, protocol.encode(protocol.source_state(True)), "source", None)

    # ------------------------------------------------------------------------------------------------ membership

    def room_opened(self, room: "Room") -> None:
        self._queue("sadd", (self._k("noderooms", self.node), room.name))

    def room_closed(self, room: "Room") -> None:
        self._want(room)
        self._queue("srem", (self._k("noderooms", self.node), room.name))

    def members_changed(self, room: "Room") -> None:
        self._want(room)
        self._queue("members", (room,))

    def _want(self, room: "Room") -> None:
        """Subscribe to a room's channel only while it has local listeners and its source is elsewhere: a room whose
        source is here publishes everything its local members need, so its own messages need not come back."""
        wanted = bool(room.listeners) and room.source is None and not room.closed
        if wanted != (room.name in self._wanted):
            (self._wanted.add if wanted else self._wanted.discard)(room.name)
            self._sub_dirty.set()

    def _members(self, pipe: Any, room: "Room") -> None:
        key = self._k("members", room.name)
        if room.listeners and not room.closed:
            pipe.hset(key, self.node, len(room.listeners))
            pipe.expire(key, STATE_TTL_SECONDS)
        else:
            pipe.hdel(key, self.node)

    async def sync_room(self, room: "Room") -> None:
        """Before a listener's welcome: be subscribed to the room (so it misses nothing from now on) and, for a room
        new on this process, learn its preset and who holds its source elsewhere."""
        if room.source is not None or not self._up or self._redis is None:
            return
        try:
            await self._subscribe_now(room.name)
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(self._k("src", room.name))
            pipe.hget(self._k("room", room.name), "preset")
            value, preset = await pipe.execute()
        except CallErrors:
            return
        if room.source is None and len(room.listeners) == 1:  # no one here to tell: the newcomer is not welcomed yet
            lease = parse_lease(value)
            room.remote_source_changed(lease.holder if lease else None, lease.epoch if lease else 0)
            if preset:
                try:
                    room.set_preset(preset)
                except KeyError:  # a preset this process does not have: keep ours
                    pass

    async def _subscribe_now(self, name: str) -> None:
        async with self._sub_lock:
            self._wanted.add(name)
            if name not in self._subscribed and self._pubsub is not None:
                await self._pubsub.subscribe(self._channel(name))
                self._subscribed.add(name)

    async def _subscriber(self) -> None:
        """Keep the pub/sub subscriptions equal to the rooms that have a local member."""
        while True:
            await self._sub_dirty.wait()
            self._sub_dirty.clear()
            async with self._sub_lock:
                add = self._wanted - self._subscribed
                drop = self._subscribed - self._wanted
                if add:
                    await self._pubsub.subscribe(*(self._channel(n) for n in add))
                    self._subscribed |= add
                if drop:
                    await self._pubsub.unsubscribe(*(self._channel(n) for n in drop))
                    self._subscribed -= drop

    # ------------------------------------------------------------------------------------------------ messages

    def publish(self, room: "Room", text: str, kind: str, seq: int | None = None) -> None:
        """Queue a message of this node's source for the room's members elsewhere. Nothing goes out for a room
        whose lease this node does not hold, or whose lease lapsed (it could not be renewed in time: another
        process may hold the room now); the fence in Redis drops what was queued under a lease that lapsed since."""
        if room.name not in self._claims or self._lapsed(room.name):
            if self.metrics:
                self.metrics.broker_fenced.inc()
            return
        self._queue_publish(room.name, text, kind, seq)

    def _queue_publish(self, room: str, text: str, kind: str, seq: int | None) -> None:
        lease = self._claims[room]
        envelope = SEP.join((lease.holder, str(lease.epoch), KIND_CODES.get(kind, "c"), "" if seq is None else str(seq), text))
        self._queue("publish", (room, lease.value, envelope, seq))

    def room_changed(self, room: "Room") -> None:
        self._queue("state", (room,))

    def _queue(self, op: str, args: tuple[Any, ...]) -> None:
        if len(self._pending) >= self.max_pending:
            dropped = self._pending.popleft()
            if dropped[0] == "publish" and self.metrics:
                self.metrics.broker_dropped.inc()
            if dropped[0] == "release":
                dropped[1][2].set()
        self._pending.append((op, args))
        self._wake.set()

    def _state(self, pipe: Any, room: "Room") -> None:
        key = self._k("room", room.name)
        pipe.hset(key, mapping={"preset": room.preset, "audio_seconds": round(room.audio_seconds, 3)})
        if room.track is not None:
            pipe.hset(key, "track", json.dumps(room.track))
        else:
            pipe.hdel(key, "track")
        pipe.expire(key, STATE_TTL_SECONDS)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._write_pending()

    async def _write_pending(self) -> None:
        """Send what is queued, in order, in pipelines. A batch that fails is not retried (at most once: a partly
        applied pipeline retried would repeat messages); the connection error then restarts the broker."""
        assert self._redis is not None
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            pipe = self._redis.pipeline(transaction=False)
            publishes: list[tuple[int, str]] = []  # (index of the reply, room)
            releases = []
            cleared: list[str] = []  # addresses this node no longer has connections from
            for op, args in batch:
                index = len(pipe.command_stack)
                if op == "publish":
                    room, value, envelope, seq = args
                    publishes.append((index, room))
                    pipe.evalsha(self._scripts["publish"], 2, self._k("src", room), self._k("room", room), value,
                                 "" if seq is None else seq, self._channel(room), envelope, STATE_TTL_SECONDS)
                elif op == "release":
                    room, value, done = args
                    releases.append(done)
                    pipe.evalsha(self._scripts["release"], 1, self._k("src", room), value)
                elif op == "address":
                    self._address(pipe, *args)
                    if not args[1]:
                        cleared.append(args[0])
                elif op == "raise":
                    room, seq = args
                    pipe.evalsha(self._scripts["raise_seq"], 1, self._k("room", room), seq, STATE_TTL_SECONDS)
                elif op == "members":
                    self._members(pipe, args[0])
                elif op == "state":
                    self._state(pipe, args[0])
                elif op == "resv":
                    room, subject, ms = args
                    pipe.set(self._k("resv", room), subject, px=ms)
                else:  # sadd / srem
                    getattr(pipe, op)(*args)
            try:
                replies = await pipe.execute()
            except ConnErrors:
                if self.metrics:
                    self.metrics.broker_dropped.inc(len(publishes))
                raise
            finally:
                for done in releases:
                    done.set()
            for address in cleared:
                if not self._addresses.get(address, True):
                    del self._addresses[address]
            self._published(publishes, replies)

    def _published(self, publishes: list[tuple[int, str]], replies: list[Any]) -> None:
        """Count the publish scripts' outcomes; a room whose updates are behind the cluster's seq continues above it."""
        sent = fenced = 0
        for index, name in publishes:
            status, seq = (int(x) for x in replies[index])
            if status == 1:
                sent += 1
            elif status == 0:
                fenced += 1
            else:
                fenced += 1
                room = self.registry.get(name) if self.registry else None
                if room is not None and room.source is not None:
                    self.registry.deliver_messages(room, room.continue_above(seq))
        if self.metrics:
            self.metrics.broker_published.inc(sent)
            self.metrics.broker_fenced.inc(fenced)

    async def _reader(self) -> None:
        """Messages of other processes -> this process's members of that room, through the room's own view of who
        holds it (late messages dropped, source states and seq kept consistent)."""
        assert self._pubsub is not None and self.registry is not None
        prefix = len(self._k("ch")) + 1
        own = self.node + "/"
        burst: set[str] = set()  # rooms that got an update since the reader last yielded to the loop
        while True:
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0)
            if msg is None:  # nothing buffered: wait for more (this is where the loop runs other tasks)
                burst.clear()
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None or msg.get("type") != "message":
                continue
            holder, epoch_text, code, seq_text, text = str(msg["data"]).split(SEP, 4)
            room = self.registry.get(str(msg["channel"])[prefix:])
            if room is None:
                continue
            epoch = int(epoch_text)
            if code == ENDED:  # posted after every message of that lease (see _watch): the lease is over
                if room.remote_holder == holder:
                    self.registry.deliver_messages(room, room.remote_source_changed(None, epoch))
                continue
            if holder.startswith(own):
                continue
            if self.metrics:
                self.metrics.broker_received.inc()
            kind = CODE_KINDS.get(code, "control")
            if kind == "source":
                if epoch < room.epoch:
                    if self.metrics:
                        self.metrics.broker_fenced.inc()
                    continue
                connected = json.loads(text)["state"] == "connected"
                self.registry.deliver_messages(room, room.remote_source_changed(holder if connected else None, epoch))
                continue
            before, current = room.remote_message(holder, epoch, kind, int(seq_text) if seq_text else None)
            self.registry.deliver_messages(room, before)
            if not current:
                if self.metrics:
                    self.metrics.broker_fenced.inc()
                continue
            if kind == "mood":
                if room.name in burst:
                    # A second update of one room in a burst (a source faster than real time, or a backlog after a
                    # stall): let the woken sender tasks write the earlier ones first, as the inference worker does,
                    # so a listener that keeps up never has its bounded outbox conflate because of the burst. In
                    # real time a burst holds one update per room and is delivered without yielding.
                    await asyncio.sleep(0)
                    burst.clear()
                burst.add(room.name)
            self.registry.deliver_local(room, text, kind)

    # ------------------------------------------------------------------------------------------------ liveness

    async def _heartbeat(self) -> None:
        """Every third of a lease: renew leases and refresh this node's registration. A round that takes a lease
        (a stalled connection that neither answers nor fails) counts as a lost connection: reconnect."""
        interval = self.lease_ms / 1000 / 3
        while True:
            await asyncio.sleep(interval)
            started = time.monotonic()
            await asyncio.wait_for(self._heartbeat_round(), self.lease_ms / 1000)
            self._last_ok = started

    async def _heartbeat_round(self) -> None:
        await self._heartbeat_once()
        await self._renew()
        self._live = set(await self._live_nodes())

    async def _heartbeat_once(self) -> None:
        assert self._redis is not None and self.registry is not None
        ttl = self.lease_ms * NODE_TTL_FACTOR
        rooms = list(self.registry)
        connections = sum(len(r.members) for r in rooms)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(self._k("nodes"), {self.node: int(time.time() * 1000)})
        pipe.hset(self._k("node", self.node), mapping={"connections": connections, "rooms": len(rooms)})
        pipe.pexpire(self._k("node", self.node), ttl)
        noderooms = self._k("noderooms", self.node)
        pipe.delete(noderooms)
        if rooms:
            pipe.sadd(noderooms, *(r.name for r in rooms))
            pipe.pexpire(noderooms, ttl)
        for room in rooms:
            if room.source is not None and room.name in self._claims:
                pipe.hset(self._k("room", room.name), "audio_seconds", round(room.audio_seconds, 3))
        for name, (subject, seconds) in self._holds.items():  # a crashed process's holds expire after `seconds`
            pipe.set(self._k("resv", name), subject, px=self.lease_ms + int(seconds * 1000))
        await pipe.execute()

    async def _watcher(self) -> None:
        """A source whose process died (or was cut off) never says goodbye: every tenth of a lease, compare the
        slots of the rooms whose source is elsewhere with the lease this process knows; for one that expired or
        changed hands, post "that lease is over" on the room's channel. It is posted after everything that lease
        published, so every process's reader handles it in order: no update of the old source is lost or follows
        its `source: disconnected`, also when the source reconnects elsewhere at once."""
        while True:
            await asyncio.sleep(self.lease_ms / 1000 / WATCH_FRACTION)
            await self._watch()

    async def _watch(self) -> None:
        if self.registry is None or self._redis is None:
            return
        watched = [r for r in self.registry if r.source is None and r.remote_holder is not None]
        if not watched:
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(self._k("grace"))
        for room in watched:
            pipe.get(self._k("src", room.name))
        grace, *values = await pipe.execute()
        if grace:  # Redis lost its slots; their holders are taking them back
            return
        pipe = self._redis.pipeline(transaction=False)
        ended = 0
        for room, value in zip(watched, values):
            lease = parse_lease(value)
            if room.remote_holder is not None and (lease is None or lease.holder != room.remote_holder):
                pipe.publish(self._channel(room.name), SEP.join((room.remote_holder, str(room.epoch), ENDED, "", "")))
                ended += 1
        if ended:
            await pipe.execute()

    # ------------------------------------------------------------------------------------------------ per-address limits

    async def address_usage(self, address: str) -> tuple[int, frozenset[str]]:
        if not self.connected or self._redis is None:
            return 0, frozenset()
        try:
            fields = await asyncio.wait_for(self._redis.hgetall(self._k("addr", address)), self.lease_ms / 1000 / 2)
        except CallErrors:
            return 0, frozenset()
        others = self._live - {self.node}
        connections, rooms = 0, set()
        for field_name, value in fields.items():
            node, _, room = field_name.partition("|")
            if node in others:
                if room:
                    rooms.add(room)
                else:
                    connections += int(value)
        return connections, frozenset(rooms)

    def address_changed(self, address: str, rooms: dict[str, int]) -> None:
        # kept while empty until written, so a reconnect that drops the queued write still clears this node's fields
        self._addresses[address] = dict(rooms)
        self._queue("address", (address, dict(rooms)))

    def _address(self, pipe: Any, address: str, rooms: dict[str, int]) -> None:
        pairs = [x for room, n in rooms.items() for x in (room, n)]
        pipe.evalsha(self._scripts["address"], 1, self._k("addr", address), self.node, STATE_TTL_SECONDS, *pairs)

    async def take_token(self, kind: str, key: str, rate: float, burst: float) -> bool | None:
        if not self.connected or self._redis is None or rate <= 0:
            return None
        ttl_ms = int(1000 * (burst / rate + 1))
        try:
            got = await asyncio.wait_for(
                self._redis.evalsha(self._scripts["take_token"], 1, self._k("bucket", f"{kind}:{key}"), rate, burst, ttl_ms),
                self.lease_ms / 1000 / 2,
            )
        except CallErrors:
            return None
        return bool(int(got))

    # ------------------------------------------------------------------------------------------------ HTTP

    async def _live_nodes(self) -> list[str]:
        assert self._redis is not None
        since = int(time.time() * 1000) - self.lease_ms * NODE_TTL_FACTOR
        return list(await self._redis.zrangebyscore(self._k("nodes"), since, "+inf"))

    async def snapshot(self, room: str) -> dict[str, Any] | None:
        if not self._up or self._redis is None:
            return await super().snapshot(room)
        try:
            nodes = set(await self._live_nodes())
            pipe = self._redis.pipeline(transaction=False)
            pipe.exists(self._k("src", room))
            pipe.hgetall(self._k("room", room))
            pipe.hgetall(self._k("members", room))
            present, state, members = await pipe.execute()
        except CallErrors:
            return await super().snapshot(room)
        listeners = sum(int(n) for node, n in members.items() if node in nodes)
        if not present and not listeners:
            return None
        return {
            "room": room,
            "source": bool(present),
            "listeners": listeners,
            "seq": int(state.get("seq", 0)),
            "track": json.loads(state["track"]) if state.get("track") else None,
            "preset": state.get("preset") or (self.registry.get(room).preset if self.registry and self.registry.get(room) else None),
            "audio_seconds": float(state.get("audio_seconds", 0.0)),
        }

    async def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "node": self.node,
            "url": redact(self.url),
            "connected": self.connected,
            "reconnects": self.reconnects,
            "pending": len(self._pending),
        }
        if not self._up or self._redis is None:
            return out
        try:
            nodes = await self._live_nodes()
            pipe = self._redis.pipeline(transaction=False)
            for node in nodes:
                pipe.hget(self._k("node", node), "connections")
            connections = await pipe.execute()
            rooms = await self._redis.sunion(*(self._k("noderooms", n) for n in nodes)) if nodes else set()
        except CallErrors:
            out["connected"] = False
            return out
        out["cluster"] = {"nodes": len(nodes), "rooms": len(rooms), "connections": sum(int(c or 0) for c in connections)}
        return out

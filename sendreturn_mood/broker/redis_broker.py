"""Rooms shared by any number of processes and machines through Redis (`broker.url: redis://...`).

The same pattern as Socket.IO's Redis adapter or Django Channels' Redis layer: every process keeps its own local
members; a room's messages go out on one Redis pub/sub channel per room, and every process with listeners in that
room (other than the process of its source) is subscribed to it. What must be decided once for the whole cluster lives in Redis keys:

    {prefix}src:{room}       the room's source slot: the holder's id, with a lease (PX) its process renews; a
                             process that dies stops renewing, the key expires, and listeners elsewhere are told
    {prefix}room:{room}      hash: seq (the highest published: a source that moves continues above it), preset,
                             track, audio_seconds - what `GET /v1/rooms/{room}` and a late listener's welcome need
    {prefix}resv:{room}      the subject a reserving source's slot is held for (while it is connected, renewed with
                             its lease, and `server.auth.reserve_seconds` after it left), so no other client can
                             take the room on any process while that source reconnects
    {prefix}members:{room}   hash: node -> listeners of the room on that node
    {prefix}nodes            sorted set: node -> last heartbeat (ms); a node missing heartbeats is dead
    {prefix}node:{node}      hash: connections, rooms of that node (expires with it)
    {prefix}noderooms:{node} set: the rooms that node has members in (expires with it)
    channel {prefix}ch:{room}  "<node>\\x1f<kind>\\x1f<json>": the exact text sent to clients, encoded once

A process delivers its own broadcasts to its local members directly (no round trip, and they keep working while
Redis is away) and skips its own messages when they come back on the channel. One writer task sends everything
for Redis in order through pipelines, from one bounded queue: a slow or absent Redis costs memory up to
`broker.max_pending` messages, then the oldest are dropped and counted. While Redis is unreachable the process
keeps serving its local members, reconnects with backoff, reports `connected: false` in /healthz and
`sendreturn_broker_up 0` in /metrics; once back it re-registers, re-claims its sources' slots (a source whose
slot another process took meanwhile is closed), re-subscribes and sends what waited.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from redis import asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .. import protocol
from .base import Broker, BrokerError, Claim

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

# Claim a room's source slot; return the room's highest seq and preset, or nil when another holder has it.
CLAIM = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return {redis.call('HGET', KEYS[2], 'seq') or '0', redis.call('HGET', KEYS[2], 'preset') or ''}
"""
# Renew the slots this node holds: KEYS = slots, ARGV = holders..., lease ms. Returns 1 per kept slot, 0 per lost.
RENEW = """
local out = {}
local ms = ARGV[#ARGV]
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  if cur == ARGV[i] then redis.call('PEXPIRE', key, ms); out[i] = 1
  elseif not cur then redis.call('SET', key, ARGV[i], 'PX', ms); out[i] = 1
  else out[i] = 0 end
end
return out
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Record a mood update's seq (only upward) and publish it, atomically: a process that takes the room over reads
# a seq at least as high as the last one any listener can have seen.
PUBLISH_MOOD = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if tonumber(ARGV[1]) > cur then redis.call('HSET', KEYS[1], 'seq', ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return redis.call('PUBLISH', ARGV[2], ARGV[3])
"""

KIND_CODES = {"mood": "m", "control": "c", "source": "s"}
CODE_KINDS = {v: k for k, v in KIND_CODES.items()}


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
        self._claims: dict[str, str] = {}  # room -> holder, for this node's sources
        self._holds: dict[str, tuple[str, float]] = {}  # room -> (subject, hold seconds) of this node's reserving sources
        self._wanted: set[str] = set()  # rooms with local listeners and a source elsewhere: subscribed
        self._subscribed: set[str] = set()
        self._sub_lock = asyncio.Lock()
        self._sub_dirty = asyncio.Event()
        self._watch_after = 0.0  # monotonic time before which lost-source detection waits (after a reconnect)
        self._task: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}
        self.reconnects = 0

    # ------------------------------------------------------------------------------------------------ keys

    def _k(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    def _channel(self, room: str) -> str:
        return self._k("ch", room)

    @property
    def connected(self) -> bool:
        return self._up

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
        for room, holder in self._claims.items():
            pipe.evalsha(self._scripts["release"], 1, self._k("src", room), holder)
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
        for name, src in (("claim", CLAIM), ("renew", RENEW), ("release", RELEASE), ("publish", PUBLISH_MOOD)):
            self._scripts[name] = await self._redis.script_load(src)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._k("nodech", self.node))  # always subscribed: the reader never idles out
        self._subscribed = set()
        await self._resync()
        self._up = True
        self._watch_after = time.monotonic() + self.lease_ms / 1000
        if self.metrics:
            self.metrics.broker_up.set(1)

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

    async def _supervise(self) -> None:
        """Run the reader, writer and heartbeat while connected; on any connection error, reconnect with backoff."""
        backoff = BACKOFF_START
        while not self._closing:
            if self._up:
                tasks = [
                    asyncio.ensure_future(self._reader()),
                    asyncio.ensure_future(self._writer()),
                    asyncio.ensure_future(self._heartbeat()),
                    asyncio.ensure_future(self._subscriber()),
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
        """After (re)connecting: register this node, its rooms and members, re-claim its sources' slots and record
        their rooms' state, and subscribe to every local room. A slot another process holds now is lost."""
        assert self._redis is not None and self.registry is not None
        await self._heartbeat_once()
        rooms = list(self.registry)
        pipe = self._redis.pipeline(transaction=False)
        for room in rooms:
            self._members(pipe, room)
            if room.source is not None and room.name in self._claims:
                self._state(pipe, room)
        await pipe.execute()
        await self._renew()
        async with self._sub_lock:
            names = [r.name for r in rooms if r.listeners and r.source is None]
            if names:
                await self._pubsub.subscribe(*(self._channel(n) for n in names))
            self._subscribed = set(names)
            self._wanted = set(names)

    # ------------------------------------------------------------------------------------------------ source slot

    async def claim_source(self, room: str, holder: str) -> Claim | None:
        if room in self._claims:
            return None
        got: Any = None
        reached = False
        if self._up and self._redis is not None:
            try:
                got = await self._redis.evalsha(self._scripts["claim"], 2, self._k("src", room), self._k("room", room), holder, self.lease_ms)
                reached = True
            except CallErrors:
                pass  # the supervisor notices the lost connection too, and reconnects
        if not reached:
            # Redis is away: serve locally (the local registry still refuses a second local source); the slot
            # is claimed when Redis is back, and the source is closed then if another process has it.
            self._claims[room] = holder
            local = self.registry.get(room) if self.registry else None
            return Claim(holder, local.seq if local else 0)
        if not got:
            return None
        self._claims[room] = holder
        return Claim(holder, int(got[0] or 0), got[1] or None)

    async def release_source(self, room: str, holder: str) -> None:
        if self._claims.get(room) != holder:
            return
        del self._claims[room]
        if self._up and self._redis is not None:
            try:
                await self._redis.evalsha(self._scripts["release"], 1, self._k("src", room), holder)
            except CallErrors:
                pass  # the lease expires by itself

    async def source_present(self, room: str) -> bool:
        if room in self._claims:
            return True
        if not self._up or self._redis is None:
            return False
        try:
            return bool(await self._redis.exists(self._k("src", room)))
        except CallErrors:
            return False

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

    async def _renew(self) -> None:
        """Renew this node's slots; a slot that another holder has now is lost: its local source is closed."""
        if not self._claims or self._redis is None:
            return
        rooms = list(self._claims)
        holders = [self._claims[r] for r in rooms]
        kept = await self._redis.evalsha(
            self._scripts["renew"], len(rooms), *(self._k("src", r) for r in rooms), *holders, self.lease_ms
        )
        for room, ok, holder in zip(rooms, kept, holders):
            if not ok and self._claims.get(room) == holder:
                del self._claims[room]
                local = self.registry.get(room) if self.registry else None
                log.warning("room %s: another process holds its source slot now; closing the local source", room)
                if local is not None and self.on_source_lost is not None:
                    self.on_source_lost(local)

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
        """Before a listener's welcome: be subscribed to the room (so it misses nothing from now on) and learn its
        preset and whether a source is connected elsewhere."""
        if room.source is not None or not self._up or self._redis is None:
            return
        try:
            await self._subscribe_now(room.name)
            pipe = self._redis.pipeline(transaction=False)
            pipe.exists(self._k("src", room.name))
            pipe.hget(self._k("room", room.name), "preset")
            present, preset = await pipe.execute()
        except CallErrors:
            return
        if room.source is None:
            room.remote_source = bool(present)
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
        self._queue("publish", (room.name, f"{self.node}{SEP}{KIND_CODES.get(kind, 'c')}{SEP}{text}", seq))

    def room_changed(self, room: "Room") -> None:
        self._queue("state", (room,))

    def _queue(self, op: str, args: tuple[Any, ...]) -> None:
        if len(self._pending) >= self.max_pending:
            dropped = self._pending.popleft()
            if dropped[0] == "publish" and self.metrics:
                self.metrics.broker_dropped.inc()
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
            published = 0
            for op, args in batch:
                if op == "publish":
                    room, envelope, seq = args
                    published += 1
                    if seq is None:
                        pipe.publish(self._channel(room), envelope)
                    else:
                        pipe.evalsha(
                            self._scripts["publish"], 1, self._k("room", room), seq, self._channel(room), envelope, STATE_TTL_SECONDS
                        )
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
                await pipe.execute()
            except ConnErrors:
                if self.metrics:
                    self.metrics.broker_dropped.inc(published)
                raise
            if self.metrics and published:
                self.metrics.broker_published.inc(published)

    async def _reader(self) -> None:
        """Messages of other processes -> this process's members of that room."""
        assert self._pubsub is not None and self.registry is not None
        prefix = len(self._k("ch")) + 1
        burst: set[str] = set()  # rooms that got an update since the reader last yielded to the loop
        while True:
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0)
            if msg is None:  # nothing buffered: wait for more (this is where the loop runs other tasks)
                burst.clear()
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None or msg.get("type") != "message":
                continue
            node, code, text = str(msg["data"]).split(SEP, 2)
            if node == self.node:
                continue
            room = self.registry.get(str(msg["channel"])[prefix:])
            if room is None:
                continue
            kind = CODE_KINDS.get(code, "control")
            if kind == "source":
                room.remote_source = '"connected"' in text
            if self.metrics:
                self.metrics.broker_received.inc()
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
        """Every third of a lease: renew slots, refresh this node's registration, notice sources that died."""
        interval = self.lease_ms / 1000 / 3
        while True:
            await asyncio.sleep(interval)
            await self._heartbeat_once()
            await self._renew()
            await self._watch_remote_sources()

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

    async def _watch_remote_sources(self) -> None:
        """A source whose process died never says goodbye: when its slot expired, tell the local listeners."""
        if time.monotonic() < self._watch_after or self.registry is None or self._redis is None:
            return
        watched = [r for r in self.registry if r.source is None and r.remote_source]
        if not watched:
            return
        pipe = self._redis.pipeline(transaction=False)
        for room in watched:
            pipe.exists(self._k("src", room.name))
        for room, present in zip(watched, await pipe.execute()):
            if not present and room.remote_source and room.source is None:
                room.remote_source = False
                self.registry.deliver_local(room, protocol.encode(protocol.source_state(False)), "source")

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
            "connected": self._up,
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

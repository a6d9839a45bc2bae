"""The prepared-track store in Redis: every process of a cluster sees the same tracks, under the same bounds.

Keys (under `broker.prefix`):

    {prefix}analysis:{aid}       an TrackAnalysis blob (compressed JSON), expiring with the last track put that uses it
    {prefix}track:{room}:{id}    hash: analysis, title, artist; expires `prepared.ttl_seconds` after its PUT
    {prefix}tracks               sorted set: "{room}\\x1f{id}" -> expiry (ms): the count behind max_tracks
    {prefix}roomtracks:{room}    sorted set: id -> expiry (ms): the count behind max_tracks_per_room
    {prefix}playing:{room}       "{lead}\x1f{track id}" while the room follows a prepared track (for late listeners)

A PUT is one Lua script (expired entries leave the counts, the bounds are checked, the keys written), so two
processes putting at once cannot pass a bound together. Room names never hold ':' (protocol.ROOM_NAME_RE).
"""

from __future__ import annotations

from typing import Any, Callable
import time

from ..room.prepared import TrackAnalysis, PreparedTrack
from .tracks import StoreFull, TrackStore

# KEYS: tracks, roomtracks, track hash, analysis. ARGV: now ms, expiry ms, max tracks, max per room, member, id,
# analysis id, title, artist, ttl s, blob ("" when the analysis should already be stored).
# Returns 0 stored, 1 store full, 2 room full, 3 analysis unknown.
PUT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if ARGV[11] == '' and redis.call('EXISTS', KEYS[4]) == 0 then return 3 end
if not redis.call('ZSCORE', KEYS[1], ARGV[5]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 1 end
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 2 end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[10])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'analysis', ARGV[7], 'title', ARGV[8], 'artist', ARGV[9])
redis.call('EXPIRE', KEYS[3], ARGV[10])
if ARGV[11] == '' then
  if redis.call('TTL', KEYS[4]) < tonumber(ARGV[10]) then redis.call('EXPIRE', KEYS[4], ARGV[10]) end
else
  redis.call('SET', KEYS[4], ARGV[11], 'EX', ARGV[10])
end
return 0
"""


class RedisTrackStore(TrackStore):
    kind = "redis"

    def __init__(
        self, url: str, prefix: str, max_tracks: int, max_tracks_per_room: int, ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(max_tracks, max_tracks_per_room, ttl_seconds, clock)
        self.url = url
        self.prefix = prefix
        self._redis: Any = None
        self._put: Any = None

    def _k(self, kind: str, *parts: str) -> str:
        return f"{self.prefix}{kind}:{':'.join(parts)}" if parts else f"{self.prefix}{kind}"

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(self.url, decode_responses=False)
        self._put = self._redis.register_script(PUT_SCRIPT)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def put(self, room: str, id: str, analysis: TrackAnalysis, title: str | None = None, artist: str | None = None) -> PreparedTrack:
        now_ms = int(self.clock() * 1000)
        ttl = max(1, int(self.ttl))
        stored = await self.analysis(analysis.id) is not None
        keys = [self._k("tracks"), self._k("roomtracks", room), self._k("track", room, id), self._k("analysis", analysis.id)]
        args = [
            now_ms, now_ms + ttl * 1000, self.max_tracks, self.max_tracks_per_room, f"{room}\x1f{id}", id, analysis.id,
            title or "", artist or "", ttl, b"" if stored else analysis.blob,
        ]
        code = int(await self._put(keys=keys, args=args))
        if code == 3:  # expired between the two calls: store it with the blob
            args[-1] = analysis.blob
            code = int(await self._put(keys=keys, args=args))
        if code == 1:
            self._check_room_for(room, self.max_tracks, 0)
        if code == 2:
            self._check_room_for(room, 0, self.max_tracks_per_room)
        self._remember(analysis)
        return PreparedTrack(id, analysis, title, artist)

    async def put_analysis(self, analysis: TrackAnalysis) -> None:
        """Keep an analysis with no track yet for ttl_seconds (Redis expires it; its size is bounded by
        prepared.max_track_seconds, and uploads by analyze.max_concurrent)."""
        await self._redis.set(self._k("analysis", analysis.id), analysis.blob, ex=max(1, int(self.ttl)))
        self._remember(analysis)

    async def analysis(self, analysis_id: str) -> TrackAnalysis | None:
        cached = self._parsed.get(analysis_id)
        if cached is not None and await self._redis.exists(self._k("analysis", analysis_id)):
            return cached
        return self._parse(analysis_id, await self._redis.get(self._k("analysis", analysis_id)))

    async def get(self, room: str, id: str) -> PreparedTrack | None:
        entry = await self._redis.hgetall(self._k("track", room, id))
        if not entry or b"analysis" not in entry:
            return None
        aid = entry[b"analysis"].decode()
        analysis = self._parsed.get(aid)
        if analysis is None:
            analysis = self._parse(aid, await self._redis.get(self._k("analysis", aid)))
        if analysis is None:
            return None
        title, artist = (entry.get(k, b"").decode() or None for k in (b"title", b"artist"))
        return PreparedTrack(id, analysis, title, artist)

    async def delete(self, room: str, id: str) -> bool:
        pipe = self._redis.pipeline()
        pipe.delete(self._k("track", room, id))
        pipe.zrem(self._k("tracks"), f"{room}\x1f{id}")
        pipe.zrem(self._k("roomtracks", room), id)
        found, *_ = await pipe.execute()
        return bool(found)

    async def set_playing(self, room: str, track: str | None, lead: float = 0.0) -> None:
        key = self._k("playing", room)
        if track is None:
            await self._redis.delete(key)
        else:  # expires with the store's tracks: a process that died cannot leave it forever
            await self._redis.set(key, f"{lead!r}\x1f{track}", ex=max(1, int(self.ttl)))

    async def playing(self, room: str) -> tuple[str, float] | None:
        raw = await self._redis.get(self._k("playing", room))
        if raw is None:
            return None
        lead, _, track = raw.decode().partition("\x1f")
        return track, float(lead)

    async def count(self) -> int:
        key = self._k("tracks")
        await self._redis.zremrangebyscore(key, "-inf", int(self.clock() * 1000))
        return int(await self._redis.zcard(key))

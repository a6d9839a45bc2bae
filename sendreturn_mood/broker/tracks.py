"""The prepared-track store: bounded, in this process or in Redis (then any process of the cluster can serve a room).

Two levels, so a track prepared for many rooms is analysed and stored once:

    analysis {id}          the TrackAnalysis blob (compressed JSON; its id is a hash of the audio and the settings)
    track {room}/{id}      a room's track: its title, artist and the id of its analysis

Bounds (`prepared.*` in the config): at most `max_tracks` tracks in all and `max_tracks_per_room` per room (a PUT
beyond is refused: StoreFull, HTTP 507, saying which limit), each kept `ttl_seconds` after it was last put; an
analysis lives while a track refers to it. Replacing a room's track with the same id never counts twice. In Redis
the same rules hold for the whole cluster (keys expire by themselves; the count is a sorted set of expiry times).
"""

from __future__ import annotations

import collections
import time
from typing import Callable

from .. import protocol
from ..room.prepared import TrackAnalysis, PreparedError, PreparedTrack

PARSED_CACHE = 32  # analyses kept parsed (a room that plays a track needs its cues; the same track in many rooms
# is one object)


class StoreFull(protocol.ProtocolError):
    """A PUT the store has no room for (HTTP 507 store_full); the message names the limit."""

    def __init__(self, message: str) -> None:
        super().__init__(protocol.STORE_FULL, message)


class TrackStore:
    """In this process (no broker): dicts, bounded, expired lazily. Every method is a coroutine, as in Redis."""

    kind = "memory"

    def __init__(self, max_tracks: int, max_tracks_per_room: int, ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.max_tracks = max_tracks
        self.max_tracks_per_room = max_tracks_per_room
        self.ttl = ttl_seconds
        self.clock = clock
        self._parsed: collections.OrderedDict[str, TrackAnalysis] = collections.OrderedDict()
        self._tracks: dict[tuple[str, str], tuple[float, str, str | None, str | None]] = {}  # -> expiry, analysis, title, artist
        self._blobs: dict[str, bytes] = {}
        self._kept: dict[str, float] = {}  # analysis -> until when it is kept without a track (put_analysis)
        self._playing: dict[str, tuple[str, float]] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # -------------------------------------------------------------------------------------------- the interface

    async def put(self, room: str, id: str, analysis: TrackAnalysis, title: str | None = None, artist: str | None = None) -> PreparedTrack:
        """Store `analysis` as room's track `id` (replacing one of that id). StoreFull when a bound is reached."""
        self._expire()
        key = (room, id)
        if key not in self._tracks:
            self._check_room_for(room, len(self._tracks), sum(1 for r, _ in self._tracks if r == room))
        self._tracks[key] = (self.clock() + self.ttl, analysis.id, title, artist)
        self._blobs[analysis.id] = analysis.blob
        self._remember(analysis)
        self._drop_unused_blobs()
        return PreparedTrack(id, analysis, title, artist)

    async def put_analysis(self, analysis: TrackAnalysis) -> None:
        """Keep an analysis with no track yet (POST /v1/analyze's), for ttl_seconds: a PUT may refer to it. Kept only
        while tracks and kept analyses together are fewer than max_tracks (each holds as much as a track)."""
        self._expire()
        if analysis.id not in self._blobs and len(self._tracks) + len(self._kept) >= self.max_tracks:
            return  # full: the answer goes out without a reusable id being useful; a PUT uploads the audio instead
        self._blobs[analysis.id] = analysis.blob
        self._kept[analysis.id] = self.clock() + self.ttl

    async def analysis(self, analysis_id: str) -> TrackAnalysis | None:
        """A stored analysis by id (a PUT that refers to one, or the same audio put again), or None."""
        self._expire()
        return self._parse(analysis_id, self._blobs.get(analysis_id))

    async def get(self, room: str, id: str) -> PreparedTrack | None:
        """The room's prepared track `id`, or None (never put, expired, or its analysis unreadable)."""
        self._expire()
        entry = self._tracks.get((room, id))
        if entry is None:
            return None
        _, aid, title, artist = entry
        analysis = self._parse(aid, self._blobs.get(aid))
        return None if analysis is None else PreparedTrack(id, analysis, title, artist)

    async def delete(self, room: str, id: str) -> bool:
        found = self._tracks.pop((room, id), None) is not None
        self._drop_unused_blobs()
        return found

    async def count(self) -> int:
        self._expire()
        return len(self._tracks)

    # -------------------------------------------------------------------------------------------- what rooms play

    async def set_playing(self, room: str, track: str | None, lead: float = 0.0) -> None:
        """The room follows its prepared track `track` (None: none), so a listener joining on any process gets its
        timeline."""
        if track is None:
            self._playing.pop(room, None)
        else:
            self._playing[room] = (track, lead)

    async def playing(self, room: str) -> tuple[str, float] | None:
        """(track id, lead seconds) the room follows, or None."""
        return self._playing.get(room)

    # -------------------------------------------------------------------------------------------- shared rules

    def _check_room_for(self, room: str, total: int, in_room: int) -> None:
        if total >= self.max_tracks:
            raise StoreFull(f"the prepared-track store holds its maximum of {self.max_tracks} tracks (prepared.max_tracks)")
        if in_room >= self.max_tracks_per_room:
            raise StoreFull(
                f"room {protocol.shown(room)} has its maximum of {self.max_tracks_per_room} prepared tracks "
                "(prepared.max_tracks_per_room; DELETE one, or they expire after prepared.ttl_seconds)"
            )

    def _remember(self, analysis: TrackAnalysis) -> None:
        self._parsed[analysis.id] = analysis
        self._parsed.move_to_end(analysis.id)
        while len(self._parsed) > PARSED_CACHE:
            self._parsed.popitem(last=False)

    def _parse(self, aid: str, blob: bytes | None) -> TrackAnalysis | None:
        if blob is None:
            return None
        cached = self._parsed.get(aid)
        if cached is not None:
            self._parsed.move_to_end(aid)
            return cached
        try:
            analysis = TrackAnalysis.from_blob(blob)
        except PreparedError:
            return None
        self._remember(analysis)
        return analysis

    def _expire(self) -> None:
        now = self.clock()
        gone = [k for k, v in self._tracks.items() if v[0] <= now]
        for k in gone:
            del self._tracks[k]
        kept = [a for a, until in self._kept.items() if until <= now]
        for a in kept:
            del self._kept[a]
        if gone or kept:
            self._drop_unused_blobs()

    def _drop_unused_blobs(self) -> None:
        used = {v[1] for v in self._tracks.values()} | set(self._kept)
        for aid in [a for a in self._blobs if a not in used]:
            del self._blobs[aid]
            self._parsed.pop(aid, None)

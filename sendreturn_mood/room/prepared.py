"""Tracks known ahead: a room follows a prepared analysis in step with playback, with no I/O.

When the audio is known before it plays (SEND/RETURN's backend picks the song and every player streams the same
file), the room need not listen to it: the server analyses the file once (`offline.analyze_file`, the same path
as `analyze`, so the same updates), and while the source plays it, the room broadcasts the analysis's updates at
their positions in the track. That is exactly on time (a live room is ~one window late) and almost free (no PCM, no
model).

    TrackAnalysis       what `analyze` says about one file, immutable: the updates and track changes heard in it,
                        at their positions (seconds into the file); shared by every room it is prepared for (its
                        id is a hash of the audio and the settings that shaped it)
    PreparedTrack       one room's track: its id (and title, artist) and its TrackAnalysis
    Follower            playback position -> the cues that are due: play / position reports / pause, the clock
                        running between reports (the caller passes `now`), a jump re-aligning, `lead_seconds`
                        sending every cue that much early

Between reports the follower extrapolates with the caller's clock; a report within JUMP_SECONDS of where the clock
says playback is just re-anchors (drift: nothing is sent twice or skipped), a report further away is a jump (a seek,
a stall): the room re-aligns at once with the update for the new position and carries on from there, without
replaying what lies between.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import SendReturnError
from .. import protocol
from .update import Analysis, Guess, Instant

DUE_TOLERANCE = 1e-6  # seconds: a cue this close ahead of the playback position is due (float rounding, see `due`)
JUMP_SECONDS = 1.0  # a position report further than this from the running clock is a jump (seek) and re-aligns
MOOD = "mood"
TRACK_CHANGE = "track_change"
BLOB_VERSION = 1  # the stored form's version (a store never serves a blob it cannot read)


class PreparedError(SendReturnError, ValueError):
    """An analysis that cannot become a prepared track (too long, empty), or a stored blob that cannot be read."""


def analysis_id(audio: bytes, settings: Mapping[str, Any]) -> str:
    """The id of an analysis: the same audio analysed with the same model and settings is the same analysis, so a
    track prepared for many rooms is analysed and stored once."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\0")
    h.update(audio)
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Cue:
    """Something a room sends at a position of the track: a `mood` update or a track change. `body` is the
    message's own fields as encoded JSON members (no braces; for an update, its analysis fields but `stream_time`),
    encoded once per analysis: a room only wraps them in its envelope (protocol.mood_text), so following a
    track costs no JSON encoding and holds strings, not dicts."""

    position: float
    kind: str  # MOOD | TRACK_CHANGE
    body: str
    analysis: Analysis | None = None  # an update's analysis, typed (what the room's other sinks read)
    fields: Mapping[str, Any] | None = None  # a track change's fields


def _members(fields: Mapping[str, Any], skip: str = "") -> str:
    """`fields` (but `skip`) as encoded JSON object members, in order, without the braces."""
    return json.dumps({k: v for k, v in fields.items() if k != skip}, separators=(",", ":"), allow_nan=False)[1:-1]


@dataclass(frozen=True)
class TrackAnalysis:
    """What `analyze` says about one file, immutable: its cues (updates at their `stream_time` = position in the
    file, track changes at theirs), the compact timeline for the `timeline` message, what shaped it (model, preset)
    and its stored form (`blob`)."""

    id: str
    duration: float
    model: Mapping[str, str]
    preset: str
    track_changes: tuple[Mapping[str, Any], ...]
    cues: tuple[Cue, ...]
    timeline_updates: str  # the `timeline` message's `updates` list, encoded
    updates: int  # how many
    blob: bytes = field(repr=False)

    @classmethod
    def build(
        cls, id: str, duration: float, updates: list[Mapping[str, Any]], track_changes: list[Mapping[str, Any]],
        model: Mapping[str, str], preset: str, blob: bytes | None = None,
    ) -> "TrackAnalysis":
        if not updates:
            raise PreparedError("the analysis has no updates (the audio is too short)")
        cues = [Cue(float(c["stream_time"]), TRACK_CHANGE, _members(c), fields=dict(c)) for c in track_changes]
        cues += [Cue(float(u["stream_time"]), MOOD, _members(u, "stream_time"), typed_analysis(u)) for u in updates]
        # by position; a track change before the update at the same position (as a room sends them)
        cues.sort(key=lambda c: (c.position, c.kind != TRACK_CHANGE))
        if blob is None:
            data = {
                "v": BLOB_VERSION, "id": id, "duration": duration, "model": dict(model), "preset": preset,
                "updates": list(updates), "track_changes": list(track_changes),
            }
            # compressed compact JSON: a 4-minute track's ~160 updates are ~115 KB of JSON, ~5x less compressed,
            # so a bounded store holds many tracks and Redis moves little
            blob = zlib.compress(json.dumps(data, separators=(",", ":"), allow_nan=False).encode(), 6)
        return cls(
            id, float(duration), dict(model), preset, tuple(dict(c) for c in track_changes), tuple(cues),
            json.dumps(compact_timeline(updates), separators=(",", ":"), allow_nan=False), len(updates), blob,
        )

    @classmethod
    def from_result(cls, id: str, result: Mapping[str, Any]) -> "TrackAnalysis":
        """`offline.analyze_file`'s result for one file -> its TrackAnalysis."""
        return cls.build(
            id, float(result["duration"]), list(result["timeline"]), list(result["track_changes"]),
            dict(result["model"]), str(result["preset"]),
        )

    @classmethod
    def from_blob(cls, blob: bytes) -> "TrackAnalysis":
        """A stored analysis (PreparedError when it cannot be read: another version, corrupt)."""
        try:
            data = json.loads(zlib.decompress(blob))
            version = data.get("v")
            if version != BLOB_VERSION:
                raise PreparedError(f"a stored analysis of version {version!r}; this server reads {BLOB_VERSION}")
            return cls.build(
                data["id"], float(data["duration"]), data["updates"], data["track_changes"], data["model"],
                data["preset"], blob,
            )
        except (zlib.error, ValueError, KeyError, TypeError, AttributeError) as e:
            if isinstance(e, PreparedError):
                raise
            raise PreparedError(f"a stored analysis cannot be read: {e}") from None


def typed_analysis(row: Mapping[str, Any]) -> Analysis:
    """`analyze`'s timeline row (`Analysis.to_dict()`) back to the typed Analysis it was printed from."""
    genre = row.get("genre")
    return Analysis(
        stream_time=row["stream_time"], mood=row["mood"], confidence=row["confidence"],
        probabilities=row["probabilities"], valence=row["valence"], arousal=row["arousal"],
        instant=Instant(**row["instant"]), genre=None if genre is None else Guess(**genre), effects=row["effects"],
        preset=row["preset"], state=row.get("state"), level_db=row.get("level_db"),
    )


def compact_timeline(updates: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The whole track for engines that schedule locally (the `timeline` message), compact: per update its
    position and what drives a scene (label, confidence, valence, arousal, genre label, state, effects); the
    full update still arrives as a `mood` message at its position."""
    out = []
    for u in updates:
        entry: dict[str, Any] = {"position": u["stream_time"]}
        for key in ("mood", "confidence", "valence", "arousal"):
            entry[key] = u[key]
        if "genre" in u:
            entry["genre"] = u["genre"]["label"]
        if "state" in u:
            entry["state"] = u["state"]
        entry["effects"] = u["effects"]
        out.append(entry)
    return out


@dataclass(frozen=True)
class PreparedTrack:
    """A room's prepared track: its id, title and artist (the `track` field of its updates) and its analysis."""

    id: str
    analysis: TrackAnalysis
    title: str | None = None
    artist: str | None = None

    @property
    def duration(self) -> float:
        return self.analysis.duration

    def track_field(self) -> dict[str, str]:
        """The `track` field of this track's `mood` messages (as after a `track` message)."""
        return protocol.Track(self.id, self.title, self.artist).to_dict()

    def describe(self) -> dict[str, Any]:
        """What the store answers about it (the PUT response, `GET` of a track)."""
        a = self.analysis
        return {
            "track": self.track_field(), "analysis": a.id, "duration": a.duration, "updates": a.updates,
            "track_changes": list(a.track_changes), "model": dict(a.model), "preset": a.preset,
        }


def timeline_text(room: str, track: PreparedTrack, lead: float, hop_seconds: float) -> str:
    """The `timeline` message of `track` in `room` (protocol.timeline_text), encoded."""
    a = track.analysis
    return protocol.timeline_text(
        room, track.track_field(), a.id, a.duration, lead, hop_seconds, a.timeline_updates, list(a.track_changes)
    )


def check_position(position: float, duration: float) -> str | None:
    """Why `position` cannot be a playback position of a track of `duration` seconds, or None when it can (a
    player's clock may read a little past the end as the track finishes: up to JUMP_SECONDS is the end)."""
    if not math.isfinite(position) or position < 0:
        return f"position must be a finite number of seconds >= 0, got {position!r}"
    if position > duration + JUMP_SECONDS:
        return f"position {position:g} s is past the end of the track ({duration:g} s)"
    return None


class Follower:
    """Playback of one prepared track in one room -> its cues, each when it is due.

    `now` is the caller's monotonic clock in seconds. Playback position at `now` while playing is the last anchor
    (a `play` or a position report) plus the time since; paused, the anchor. A cue at position p is due when the
    position reaches p - `lead`.
    """

    def __init__(self, track: PreparedTrack, position: float, now: float, lead: float = 0.0, playing: bool = True) -> None:
        self.track = track
        self.lead = lead
        self.playing = playing
        self._anchor = (min(position, track.duration), now)
        self._positions = [c.position for c in track.analysis.cues]
        self._next = 0
        self._align(now)

    # -------------------------------------------------------------------------------------------- where playback is

    def position(self, now: float) -> float:
        pos, t = self._anchor
        if self.playing:
            pos += max(0.0, now - t)
        return min(pos, self.track.duration)

    @property
    def cues(self) -> tuple[Cue, ...]:
        return self.track.analysis.cues

    @property
    def finished(self) -> bool:
        """Every cue has been sent (the track played to its end)."""
        return self._next >= len(self.cues)

    # -------------------------------------------------------------------------------------------- what the source says

    def seek(self, position: float, now: float, playing: bool = True) -> None:
        """`play` at `position` (also to resume after a pause): always re-aligns."""
        self.playing = playing
        self._anchor = (min(position, self.track.duration), now)
        self._align(now)

    def report(self, position: float, now: float) -> bool:
        """A position report. Within JUMP_SECONDS of the running clock it only re-anchors (what was sent stays
        sent); further away it re-aligns. Returns whether it was a jump."""
        jump = abs(position - self.position(now)) > JUMP_SECONDS
        self._anchor = (min(position, self.track.duration), now)
        if jump:
            self._align(now)
        return jump

    def pause(self, now: float) -> None:
        self._anchor = (self.position(now), now)
        self.playing = False

    def set_lead(self, lead: float, now: float) -> None:
        self.lead = lead
        self._align(now)

    # -------------------------------------------------------------------------------------------- cues

    def _align(self, now: float) -> None:
        """Re-align to the current position: the next cue becomes the last update at or before it (sent at once by
        `due`, so the room shows the state of the music where playback is), earlier cues are skipped."""
        edge = self.position(now) + self.lead
        i = bisect.bisect_right(self._positions, edge) - 1
        while i >= 0 and self.cues[i].kind != MOOD:
            i -= 1
        self._next = i if i >= 0 else bisect.bisect_right(self._positions, edge)
        self._aligned_at = now if i >= 0 else None  # that cue is due now, not when its position passed

    def due_time(self, index: int) -> float:
        """The caller's clock time at which cue `index` is due (position reaches its position - lead)."""
        if index == self._next and self._aligned_at is not None:
            return self._aligned_at
        pos, t = self._anchor
        return t + (self._positions[index] - self.lead - pos)

    def next_time(self) -> float | None:
        """When the next cue is due (the caller's clock); None when paused or nothing is left."""
        if self.finished or (not self.playing and self._aligned_at is None):
            return None
        return self.due_time(self._next)

    def due(self, now: float) -> list[tuple[Cue, float]]:
        """The cues due at `now`, in order, each with how late it is (seconds, >= 0), and consumes them."""
        out = []
        # a caller waking at exactly `due_time` must find the cue due: that time was computed back from the cue's
        # position, and float rounding may leave the position a hair short of it
        edge = self.position(now) + self.lead + DUE_TOLERANCE
        while not self.finished:
            if self._aligned_at is None and self._positions[self._next] > edge:
                break
            out.append((self.cues[self._next], max(0.0, now - self.due_time(self._next))))
            self._aligned_at = None
            self._next += 1
        return out


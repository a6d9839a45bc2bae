"""One connection's protocol behaviour, with no I/O: events in, actions out.

The websocket handler (server/connection.py) only moves bytes. For every event of a connection (it opened, a binary
or text message arrived) it asks the connection's `Session`, which returns the actions to carry out in
order: a reply to this client, a message for the whole room, a window for the inference worker, a close. The same
split as the `websockets` library's own sans-I/O protocol objects: everything here can be tested with plain
function calls, no socket, no event loop, no clock (the caller passes `now`).

    Session.open()                   -> [Reply(welcome), Broadcast(source connected)]
    Session.receive(bytes, now)      -> [Reply(error)] | [Submit(window), ...] | []
    Session.receive(str, now)        -> [Reply(error)] | [RoomChanged()] | [Submit(tail)..., Drain(1000)]
    Session.receive(play, now)       -> [Fetch(play)]; the caller loads the track, then
    Session.play(track, play, now)   -> [Reply(unknown_track)] | [Broadcast(timeline)?, RoomChanged(), Follow()]
    Session.receive(position, now)   -> [Follow()] (the caller sends the room's due cues and schedules the next)

What happens after the model is the room's business (`rooms.Room.on_window`), not the connection's: the analysis
of a room runs where its source is connected, and its updates go through the room's one broadcast function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import numpy as np

from ..audio import pcm
from .. import protocol
from ..audio.pipeline import AnalysisStream, Window, WindowPlan
from .prepared import PreparedTrack, check_position

RATE_ERROR_INTERVAL = 1.0  # at most one rate_limited error per connection per second
POSITION_REPORTS_PER_SECOND = 4.0  # a player reports every few seconds; faster reports are rate_limited (dropped)


# ------------------------------------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Reply:
    """Send `message` to this connection only (welcome, errors, a timeline). `fatal` errors are followed by a
    `Close`. A str is a control message already encoded."""

    message: dict[str, Any] | str


@dataclass(frozen=True)
class Broadcast:
    """Send `message` to every member of the room, on every process (the source included); an `Outgoing` is
    already encoded (a prepared track's timeline)."""

    message: Any  # dict[str, Any] | rooms.Outgoing


@dataclass(frozen=True)
class Submit:
    """Queue `window` for the model; `arrival` is when its last audio byte arrived, `generation` the room's track
    generation it belongs to (results of an older generation are discarded)."""

    window: Window
    arrival: float
    generation: int


@dataclass(frozen=True)
class RoomChanged:
    """The room's shared state (track, preset) changed: the broker should record it for the other processes."""


@dataclass(frozen=True)
class Drain:
    """After `end`: wait until every window this source submitted has been delivered, then close with `code`."""

    code: int = protocol.CLOSE_NORMAL
    reason: str = "end of stream"


@dataclass(frozen=True)
class Close:
    """Close the connection once what is queued for it has been sent."""

    code: int
    reason: str = ""


@dataclass(frozen=True)
class Fetch:
    """A `play`: load the room's prepared track `play.track` from the store, then call `Session.play` with it."""

    play: protocol.Play


@dataclass(frozen=True)
class Follow:
    """The room's prepared playback changed: send its cues that are due now, and schedule the next one."""


Action = Union[Reply, Broadcast, Submit, RoomChanged, Drain, Close, Fetch, Follow]


# ------------------------------------------------------------------------------------------------------ pieces


class TokenBucket:
    """Audio-seconds budget: starts full at `burst`, refills at `rate` seconds of audio per second of `now`."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.t = now

    def take(self, seconds: float, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.t) * self.rate)
        self.t = now
        if seconds > self.tokens:
            return False
        self.tokens -= seconds
        return True


class AudioClock:
    """A source's audio clock against the wall clock: seconds of audio received per second of arrival time, over
    spans of `span` seconds. A source announcing 8000 Hz for 48 kHz audio runs at 6x (its stream_time races ahead,
    its windows are analysed at the wrong pitch); one announcing 192000 Hz for 48 kHz audio runs at 0.25x (a window
    every 4x as long). `add` returns the ratio of a finished span outside [SLOW, FAST], else None.

    A span starts at a frame's arrival and counts the audio of the frames after it (the first frame's audio was
    produced before it arrived). A pause in arrivals longer than GAP starts a new span: a paused player sends
    nothing, and that is not a wrong clock."""

    FAST = 1.5
    SLOW = 0.67
    GAP = 2.0

    def __init__(self, span: float) -> None:
        self.span = span
        self._start: float | None = None
        self._last = 0.0
        self._audio = 0.0

    def add(self, seconds: float, now: float) -> float | None:
        if self._start is None or now - self._last > self.GAP:
            self._start, self._last, self._audio = now, now, 0.0
            return None
        self._last = now
        self._audio += seconds
        elapsed = now - self._start
        if elapsed < self.span:
            return None
        ratio = self._audio / elapsed
        self._start, self._audio = now, 0.0
        return ratio if not self.SLOW <= ratio <= self.FAST else None


@dataclass(frozen=True)
class SessionSettings:
    """What every session of one server shares: limits, the window geometry and the model's public description."""

    max_message_bytes: int
    rate_limit_factor: float
    rate_limit_burst_seconds: float
    plan: WindowPlan
    frontend: Any  # sendreturn_mood.audio.frontend.FrontEndSpec
    window_seconds: float
    hop_seconds: float
    model_public: Mapping[str, Any]
    presets: tuple[str, ...]
    lead_seconds: float = 0.0  # a room's default lead for prepared tracks (a `play` may set the room's own)
    clock_check_seconds: float | None = None  # AudioClock's span (None: no check)


@dataclass(eq=False)
class Session:
    """One connection as a member of `room` (a `rooms.Room`): a source or a listener.

    The session never touches the network: it mutates its room's state (a new track, a preset) and returns actions.
    """

    params: protocol.ConnectParams
    room: Any  # rooms.Room
    settings: SessionSettings
    now: float = 0.0
    stream: AnalysisStream | None = field(default=None, init=False)
    bucket: TokenBucket | None = field(default=None, init=False)
    ended: bool = field(default=False, init=False)
    _last_rate_error: float = field(default=-1e18, init=False)
    _reports: TokenBucket | None = field(default=None, init=False)  # position reports
    _held: list[bytes] = field(default_factory=list, init=False)  # integer PCM frames not yet decoded
    _held_frames: int = field(default=0, init=False)
    _clock: AudioClock | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.params.is_source:
            s = self.settings
            self.stream = AnalysisStream(s.frontend, self.params.sample_rate, s.plan)
            if s.clock_check_seconds:
                self._clock = AudioClock(s.clock_check_seconds)
            self.bucket = TokenBucket(s.rate_limit_factor, s.rate_limit_burst_seconds, self.now)
            self._reports = TokenBucket(POSITION_REPORTS_PER_SECOND, POSITION_REPORTS_PER_SECOND, self.now)

    @property
    def is_source(self) -> bool:
        return self.params.is_source

    # -------------------------------------------------------------------------------------------------- events

    def open(self) -> list[Action]:
        """The connection was accepted and joined its room: welcome it; a source announces itself to the room."""
        s = self.settings
        welcome = protocol.welcome(
            self.params, s.model_public, s.window_seconds, s.hop_seconds, self.room.preset, s.frontend.sample_rate
        )
        actions: list[Action] = [Reply(welcome)]
        if self.is_source:
            welcome["track_detection"] = {"enabled": self.room.track_detection}  # an extension: docs/PROTOCOL.md
            actions += [RoomChanged(), Broadcast(protocol.source_state(True))]
        elif (timeline := self.room.current_timeline(s.hop_seconds)) is not None:  # joining while a prepared track
            actions.append(Reply(timeline))  # plays (here or on the source's process): its timeline, once
        return actions

    def receive(self, message: bytes | str, now: float) -> list[Action]:
        """One websocket message (binary: audio; text: JSON) that arrived at `now` (perf_counter seconds)."""
        if self.ended:
            return []
        if len(message) > self.settings.max_message_bytes:
            self.ended = True
            limit = self.settings.max_message_bytes
            return [
                Reply(protocol.error(protocol.TOO_BIG, f"message of {len(message)} bytes; the limit is {limit}", True)),
                Close(protocol.CLOSE_TOO_BIG, "message too big"),
            ]
        if isinstance(message, bytes):
            return self._audio(message, now)
        return self._text(message, now)

    # -------------------------------------------------------------------------------------------------- audio

    def _audio(self, data: bytes, now: float) -> list[Action]:
        if self.stream is None or self.bucket is None:
            return [_error(protocol.NOT_ALLOWED, "listeners cannot send audio (connect with role=source)")]
        follower = self.room.prepared
        if follower is not None:
            if not (follower.finished and follower.position(now) >= follower.track.duration):
                return self._limited(now, protocol.NOT_ALLOWED, "the room follows a prepared track: audio is dropped until 'stop'")
            self.room.stop_prepared()  # the track played to its end: live audio takes over
        p = self.params
        try:
            n = pcm.frame_count(data, p.encoding, p.channels)
            mono = None if pcm.every_value_valid(p.encoding) else pcm.decode(data, p.encoding, p.channels)
        except pcm.BadAudio as e:
            return [_error(protocol.BAD_AUDIO, f"{e}; frame dropped")]
        seconds = n / p.sample_rate
        if not self.bucket.take(seconds, now):
            s = self.settings
            return self._limited(
                now, protocol.RATE_LIMITED,
                f"audio is arriving faster than {s.rate_limit_factor}x real time beyond a "
                f"{s.rate_limit_burst_seconds} s burst; frames are being dropped",
            )
        self.room.audio_seconds += seconds
        warning = self._clock_warning(seconds, now)
        if mono is not None:  # float samples: checked (and so decoded) as they arrive
            return warning + self._submit(self.stream.push(mono), now)
        # integer PCM waits undecoded until the stream would run its DSP: one decode per resampler chunk instead of
        # one per frame, with the same windows (AnalysisStream.due_after)
        self._held.append(data)
        self._held_frames += n
        if not self.stream.due_after(self._held_frames):
            return warning
        return warning + self._submit(self.stream.push(self._release_held()), now)

    def _clock_warning(self, seconds: float, now: float) -> list[Action]:
        """A non-fatal clock_mismatch when the span just measured ran outside the tolerated ratio (AudioClock)."""
        if self._clock is None:
            return []
        ratio = self._clock.add(seconds, now)
        if ratio is None:
            return []
        declared = self.params.sample_rate
        return [_error(
            protocol.CLOCK_MISMATCH,
            f"over the last {self._clock.span:.0f} s your audio ran at {ratio:.2f}x the wall clock: about "
            f"{ratio * declared:.0f} samples per second per channel arrived, against sample_rate={declared} announced. "
            "Is that the audio's real rate? (Sending faster than real time on purpose: ignore this.)",
        )]

    def _limited(self, now: float, code: str, message: str) -> list[Action]:
        """An error for a message that is dropped, at most one per RATE_ERROR_INTERVAL (a client that keeps sending
        must not be answered at its own rate)."""
        if now - self._last_rate_error < RATE_ERROR_INTERVAL:
            return []
        self._last_rate_error = now
        return [_error(code, message)]

    def _take_held(self) -> list[bytes]:
        held, self._held, self._held_frames = self._held, [], 0
        return held

    def _release_held(self) -> np.ndarray:
        held = self._take_held()
        p = self.params
        return pcm.decode(held[0] if len(held) == 1 else b"".join(held), p.encoding, p.channels)

    def _submit(self, windows: list[Window], now: float) -> list[Action]:
        return [Submit(w, now, self.room.generation) for w in windows]

    # -------------------------------------------------------------------------------------------------- text

    def _text(self, text: str, now: float) -> list[Action]:
        try:
            msg = protocol.parse_client_message(text)
        except protocol.MessageError as e:
            return [_error(e.code, e.message)]
        if isinstance(msg, protocol.Keepalive):
            return []
        if self.stream is None:
            return [_error(protocol.NOT_ALLOWED, f"only the room's source may send '{type(msg).__name__.lower()}' messages")]
        if isinstance(msg, protocol.Track):
            self._take_held()  # dropped with the old track, as reset drops buffered input: it completed no window
            self.stream.reset()
            self.room.new_track(msg.to_dict())  # a prepared track the room followed stops (its timer finds none)
            return [RoomChanged()]
        if isinstance(msg, (protocol.Play, protocol.Position, protocol.Pause, protocol.Stop)):
            return self._playback(msg, now)
        if isinstance(msg, protocol.PresetChange):
            try:
                self.room.set_preset(msg.name)
            except KeyError:
                known = ", ".join(self.settings.presets)
                return [_error(protocol.BAD_MESSAGE, f"unknown preset {msg.name[:40]!r}; known: {known}")]
            return [RoomChanged()]
        if isinstance(msg, protocol.TrackDetection):
            if not self.room.set_track_detection(msg.enabled):
                return [_error(protocol.BAD_MESSAGE, "this server has no track-change detection to switch")]
            return []
        # End: analyse the tail; the connection closes with 1000 once the last update has been delivered.
        self.ended = True
        self.room.stop_prepared()
        held = self.stream.push(self._release_held()) if self._held else []
        tail = self._submit(held + self.stream.finish(), now)
        return [*tail, Drain()]


    # -------------------------------------------------------------------------------------------------- prepared

    def _playback(self, msg: Any, now: float) -> list[Action]:
        if isinstance(msg, protocol.Play):
            return [Fetch(msg)]
        if isinstance(msg, protocol.Stop):
            self.room.stop_prepared()
            return [Follow()]
        follower = self.room.prepared
        if isinstance(msg, protocol.Position):
            assert self._reports is not None
            if not self._reports.take(1.0, now):
                return self._limited(
                    now, protocol.RATE_LIMITED,
                    f"position reports beyond {POSITION_REPORTS_PER_SECOND:g} per second are dropped (every few seconds is enough)",
                )
        if follower is None:
            return [_error(protocol.BAD_MESSAGE, "no prepared track is playing in this room (send 'play' first)")]
        if isinstance(msg, protocol.Pause):
            follower.pause(now)
            return [Follow()]
        why = check_position(msg.position, follower.track.duration)
        if why is not None:
            return [_error(protocol.BAD_MESSAGE, why)]
        follower.report(msg.position, now)
        return [Follow()]

    def play(self, track: PreparedTrack | None, msg: protocol.Play, now: float) -> list[Action]:
        """The room's prepared track `msg.track` as the store has it (None: unknown, or not analysed yet) ->
        the room follows it from `msg.position`. A new track's timeline goes to the room first."""
        if self.ended or self.stream is None:
            return []
        if track is None:
            room = self.room.name
            return [_error(
                protocol.UNKNOWN_TRACK,
                f"no prepared track {protocol.shown(msg.track)} in this room: PUT /v1/rooms/{room}/tracks/{{id}} "
                "first, and play it once that request has answered",
            )]
        why = check_position(msg.position, track.duration)
        if why is not None:
            return [_error(protocol.BAD_MESSAGE, why)]
        if msg.lead_seconds is not None:
            self.room.lead_seconds = msg.lead_seconds
        lead = self.settings.lead_seconds if self.room.lead_seconds is None else self.room.lead_seconds
        self._take_held()  # live audio not yet analysed is dropped, as by a `track` message
        assert self.stream is not None
        self.stream.reset()
        actions: list[Action] = []
        if self.room.play_prepared(track, msg.position, now, lead):
            actions.append(Broadcast(self.room.timeline(self.settings.hop_seconds)))
        return [*actions, RoomChanged(), Follow()]


def _error(code: str, message: str, fatal: bool = False) -> Reply:
    return Reply(protocol.error(code, message, fatal))

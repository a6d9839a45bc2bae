"""Room state in one place, and the one function that broadcasts to a room.

A room exists while anyone is connected to it; it has at most one source and any number of listeners. On one
process, a room's state (local members, seq, current track, track generation, mood tracker and preset) lives only
here, behind `RoomRegistry`, and everything a room says goes through `RoomRegistry.publish`, which encodes it once
(`Outgoing`) and hands it to the room's sinks, in order: its local members (`LocalMembers`), then what the server
configured for it in `outputs/` (the broker, which carries it to the room's members on other processes; OSC
targets). The analysis of a room runs where its source is connected: `Room.on_window` turns a window's Prediction
into the room's next `Update` (smoothing, seq) with no I/O.

Sinks are anything with `send(room, outgoing)` and `room_closed(room)` (the `Sink` protocol below; it is declared
here, at the broadcast point, because imports only go downward and the outputs build on rooms). A sink must never
block or raise into the room: it queues, drops or counts on its own.

Members are anything with `deliver(text, kind)`: the server's per-connection outbox (`Outbox` below), which is
bounded and conflates mood updates so that a slow client only hurts itself.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from .. import protocol
from ..metrics import ServerMetrics
from ..model.contract import Prediction
from .prepared import MOOD as CUE_MOOD
from .prepared import Follower, PreparedTrack, timeline_text
from .tracker import NonFiniteOutput
from .update import Update


log = logging.getLogger(__name__)

MOOD = "mood"  # message kind that may be conflated (dropped oldest-first from a full outbox)
CONTROL = "control"  # welcome, error: not conflated
SOURCE = "source"  # `source` connected/disconnected: not conflated (and tells other processes' rooms)
TIMELINE_TEXT_START = '{"type":"timeline"'  # how a `timeline` message's text starts (protocol.timeline_text)
PREPARED_MARK = '"prepared":true,"latency_ms":'  # near the end of a prepared update's text (protocol.mood_text)
CONTROL_SLACK = 32  # an outbox holds at most send_queue_size + this many messages; beyond, new ones are dropped


class Member(Protocol):
    role: str

    def deliver(self, text: str, kind: str) -> None: ...


@dataclass(frozen=True)
class Outgoing:
    """One broadcast, encoded once: the `Update` (a mood update) or the protocol message (anything else: source,
    track_change, error), its JSON text and its kind (MOOD, SOURCE or CONTROL)."""

    message: Update | dict[str, Any]
    text: str
    kind: str
    to_source: bool = True  # False: the room's listeners only (a prepared update: its source has the timeline)

    @property
    def update(self) -> Update | None:
        return self.message if isinstance(self.message, Update) else None

    @property
    def seq(self) -> int | None:
        return self.message.seq if isinstance(self.message, Update) else None

    @property
    def type(self) -> str:
        return "mood" if isinstance(self.message, Update) else str(self.message["type"])


def outgoing(message: Update | dict[str, Any]) -> Outgoing:
    """Encode a broadcast once, for every sink of the room."""
    if isinstance(message, Update):
        return Outgoing(message, protocol.encode(message.to_message()), MOOD)
    return Outgoing(message, protocol.encode(message), SOURCE if message["type"] == "source" else CONTROL)


class Sink(Protocol):
    """Where a room's broadcasts go (the interface of `outputs/`)."""

    def send(self, room: "Room", out: Outgoing) -> None: ...

    def room_closed(self, room: "Room") -> None: ...


class LocalMembers:
    """The room's members on this process (their bounded outboxes): the first sink of every room."""

    def send(self, room: "Room", out: Outgoing) -> None:
        RoomRegistry.deliver_local(room, out.text, out.kind, out.to_source)

    def room_closed(self, room: "Room") -> None:
        pass


LOCAL_MEMBERS = LocalMembers()


class Membership(Protocol):
    """Who is told when a room opens or closes on this process and when its local members change: the broker, which
    shares rooms across processes (declared here, like `Sink`, because imports only go downward)."""

    def room_opened(self, room: "Room") -> None: ...

    def members_changed(self, room: "Room") -> None: ...

    def room_closed(self, room: "Room") -> None: ...


class RoomError(protocol.ProtocolError):
    """A join the registry refuses; `code` is a protocol refusal code (source_taken, server_full)."""


@dataclass(eq=False)
class Room:
    """One room as this process sees it: its local members, and its analysis state when its source is here."""

    name: str
    tracker: Any  # sendreturn_mood.room.tracker.MoodTracker
    source: Member | None = None
    listeners: set[Member] = field(default_factory=set)
    seq: int = 0
    track: dict[str, str] | None = None
    generation: int = 0  # bumped on every track change / new source: results of older windows are discarded
    audio_seconds: float = 0.0
    closed: bool = False
    # The room as heard from other processes (a broker): the lease that holds its source elsewhere, as far as this
    # process knows, and the highest lease epoch heard (a fencing token: messages of an older lease are late).
    remote_holder: str | None = None
    epoch: int = 0
    detector: Any = None  # sendreturn_mood.room.trackchange.TrackChangeDetector, or None (detection not available)
    prepared: Follower | None = None  # the prepared track the room follows (where its source is), None: live
    lead_seconds: float | None = None  # the room's lead for prepared tracks (None: the configured default)
    last_timeline: str | None = None  # the last `timeline` text its members got, while prepared updates follow it
    # the track its prepared updates were last wrapped for, and that envelope, encoded (protocol.mood_envelope)
    _envelope: tuple[Any, tuple[str, str]] | None = field(default=None, repr=False)
    sinks: list[Sink] = field(default_factory=lambda: [LOCAL_MEMBERS])  # where `RoomRegistry.publish` hands its broadcasts

    @property
    def preset(self) -> str:
        return self.tracker.preset

    @property
    def members(self) -> list[Member]:
        return ([self.source] if self.source is not None else []) + list(self.listeners)

    @property
    def remote_source(self) -> bool:
        """A source is connected to this room on another process (as far as we know)."""
        return self.remote_holder is not None

    @property
    def has_source(self) -> bool:
        return self.source is not None or self.remote_source

    def info(self) -> dict[str, Any]:
        """What `GET /v1/rooms/{room}` shows for this process alone (no audio, no identities)."""
        return {
            "room": self.name,
            "source": self.has_source,
            "listeners": len(self.listeners),
            "seq": self.seq,
            "track": self.track,
            "preset": self.preset,
            "audio_seconds": round(self.audio_seconds, 3),
        }

    # -------------------------------------------------------------------------------------------- analysis state

    def start_source(self, preset: str | None, last_seq: int = 0, track_detection: bool | None = None) -> None:
        """A new source restarts the room's analysis: new track generation, no track, smoothing and track-change
        detection reset, its `preset` (if given) becomes the room's preset, its `track_detection` (None: the
        configured default) switches detection, and `seq` continues above `last_seq` (the highest seq the room
        ever published, on any process)."""
        self.generation += 1
        self.track = None
        self.seq = max(self.seq, last_seq)
        self.tracker.reset()
        if preset is not None:
            self.tracker.set_preset(preset)
        if self.detector is not None:
            self.detector.reset()
            self.detector.set_enabled(self.detector.settings.enabled if track_detection is None else track_detection)

    def new_track(self, track: dict[str, str]) -> None:
        """An explicit `track` message: it always wins over detection, whose history restarts with the track (no
        detected change comes sooner than `track_detection.min_track_seconds` after it). A prepared track the room
        was following stops: live audio follows."""
        self.prepared = None
        self.track = track
        self.generation += 1
        self.tracker.reset()
        if self.detector is not None:
            self.detector.reset()

    @property
    def track_detection(self) -> bool:
        return self.detector is not None and self.detector.enabled

    def set_track_detection(self, enabled: bool) -> bool:
        """Switch track-change detection; False when this server has none to switch (then nothing changes)."""
        if self.detector is None:
            return False
        self.detector.set_enabled(enabled)
        return True

    def set_preset(self, name: str) -> None:
        """Raises KeyError(name) for an unknown preset."""
        self.tracker.set_preset(name)

    # -------------------------------------------------------------------------------------------- prepared tracks

    def play_prepared(self, track: PreparedTrack, position: float, now: float, lead: float) -> bool:
        """Follow `track` from `position` (the source's `play`). A new track restarts the room as a `track` message
        does (queued live windows are discarded; smoothing and detection restart for when live audio comes back);
        the same track only seeks. Returns whether the track is new (its timeline is then due to the room)."""
        current = self.prepared
        if current is not None and (current.track.id, current.track.analysis.id) == (track.id, track.analysis.id):
            current.lead = lead
            current.seek(position, now)
            return False
        self.new_track(track.track_field())
        self.prepared = Follower(track, position, now, lead)
        return True

    def stop_prepared(self) -> None:
        self.prepared = None

    def note_timeline(self, text: str, kind: str) -> None:
        """Remember the last `timeline` that went to this room's members (from here or another process) while
        prepared updates follow it, for a listener joining here later; a live update or the source leaving ends it."""
        if kind == CONTROL:
            if text.startswith(TIMELINE_TEXT_START):
                self.last_timeline = text
        elif self.last_timeline is not None and (kind == SOURCE or PREPARED_MARK not in text[-64:]):
            self.last_timeline = None

    def current_timeline(self, hop_seconds: float) -> str | None:
        """The timeline a listener joining now gets after its welcome: the prepared track's (the source is here),
        or the last one that came from the source's process (None: the room is live)."""
        out = self.timeline(hop_seconds)
        return out.text if out is not None else self.last_timeline

    def timeline(self, hop_seconds: float) -> "Outgoing | None":
        """The `timeline` message of the prepared track the room follows (None: none), encoded."""
        f = self.prepared
        if f is None:
            return None
        text = timeline_text(self.name, f.track, f.lead, hop_seconds)
        return Outgoing({"type": "timeline", "room": self.name, "track": f.track.track_field()}, text, CONTROL)

    def follow(self, now: float) -> list[tuple["Outgoing", float]]:
        """The prepared cues due at `now` -> the room's next broadcasts, each with how late it is (seconds): `mood`
        updates (the analysis's own, `prepared: true`) continue the room's `seq`, track changes come at their
        positions. The text of each is the cue's pre-encoded fields in the room's envelope (no JSON encoding)."""
        f = self.prepared
        if f is None:
            return []
        out = []
        for cue, late in f.due(now):
            if cue.kind == CUE_MOOD:
                self.seq += 1
                latency_ms = round(late * 1000.0, 3)
                if self._envelope is None or self._envelope[0] is not self.track:
                    self._envelope = (self.track, protocol.mood_envelope(self.name, self.track))
                text = protocol.mood_text_in(self._envelope[1], self.seq, cue.position, cue.body, latency_ms)
                update = Update(self.name, self.seq, cue.analysis, self.track, latency_ms)
                # not to the source: it has every update in the timeline, and a prepared room's cost is its sends
                out.append((Outgoing(update, text, MOOD, to_source=False), late))
            else:
                text = protocol.track_change_text(self.name, cue.body)
                change = {"type": "track_change", "room": self.name, **(cue.fields or {}), "prepared": True}
                out.append((Outgoing(change, text, CONTROL), late))
        return out

    # -------------------------------------------------------------------------------------------- heard from elsewhere
    # What a broker hears about this room from other processes goes through these, and each returns the messages the
    # local members get (none for what is late or already known): `source` states change only with the lease that
    # holds the room, `seq` never goes down, and a gap in it is announced with a `resync` before the next update.

    def remote_source_changed(self, holder: str | None, epoch: int = 0) -> list[dict[str, Any]]:
        """The lease holding the source elsewhere is now `holder` (None: nobody). A new holder after another one
        is told as `disconnected` then `connected`. Ignored while the source is here, and for an older lease."""
        if self.source is not None or (epoch and epoch < self.epoch) or holder == self.remote_holder:
            return []
        self.epoch = max(self.epoch, epoch)
        out = [protocol.source_state(False)] if self.remote_holder is not None else []
        self.remote_holder = holder
        return out + ([protocol.source_state(True)] if holder is not None else [])

    def remote_message(self, holder: str, epoch: int, kind: str, seq: int | None) -> tuple[list[dict[str, Any]], bool]:
        """A message of the source's lease `holder` on another process -> (what must reach the local members first:
        the source's arrival if it was not known, a `resync` for a gap in seq; whether the message itself is
        current). Not current: an older lease's, or an update at or below the seq already delivered here."""
        if self.source is not None or epoch < self.epoch:
            return [], False
        before: list[dict[str, Any]] = []
        if kind != SOURCE and holder != self.remote_holder:
            before += self.remote_source_changed(holder, epoch)
        self.epoch = epoch
        if kind == MOOD and seq is not None:
            if seq <= self.seq:
                return before, False
            if self.seq and seq > self.seq + 1:
                before.append(protocol.resync(self.name, self.seq + 1, seq - 1))
            self.seq = seq
        return before, True

    def continue_above(self, seq: int) -> list[dict[str, Any]]:
        """Another process's listeners have seen updates up to `seq` (a source that held this room there while the
        broker was away): the next update here is numbered above it, so no listener sees seq go down. The numbers
        skipped are announced to the local members (a `resync`: they will not see them)."""
        if seq <= self.seq:
            return []
        first, self.seq = self.seq + 1, seq
        return [protocol.resync(self.name, first, seq)]

    def is_current(self, generation: int) -> bool:
        """Whether a window of `generation` still belongs to the room's current track and source."""
        return not self.closed and generation == self.generation

    def on_window(
        self, generation: int, prediction: Prediction, stream_time: float, latency_ms: float,
        logmel: np.ndarray | None = None,
    ) -> list[Update | dict[str, Any]]:
        """One window's Prediction -> the room's next broadcasts: its `Update` (smoothing, seq), preceded by a
        `track_change` message when the detector hears a new track (the window's log-mel and the model's embedding
        and genres go to the detector first; the smoothing then restarts, as after a `track` message). [] when the
        window is stale (its track or source ended while it waited for the model). `logmel` also gives the tracker
        its level, for the silent state. Raises tracker.NonFiniteOutput, with nothing of the room's state changed
        (seq included), for outputs that are not finite: the caller treats that window as failed."""
        if not self.is_current(generation):
            return []
        if not prediction.is_finite():
            # before the detector and the smoothing see it: a failed window, nothing of the room's state changes
            raise NonFiniteOutput("the model's outputs for this window are not finite")
        out: list[Update | dict[str, Any]] = []
        if self.detector is not None and logmel is not None:
            change = self.detector.update(stream_time, logmel, prediction.embedding, prediction.genres)
            if change is not None:
                self.tracker.reset()
                out.append(protocol.track_change(self.name, change.to_dict()))
        analysis = self.tracker.update(prediction, stream_time, logmel)
        self.seq += 1
        out.append(Update(self.name, self.seq, analysis, self.track, latency_ms))
        return out


class RoomRegistry:
    """All rooms with a member on this process. Every method runs on the event loop thread."""

    def __init__(
        self,
        make_tracker: Callable[[str | None], Any],
        max_rooms: int,
        metrics: ServerMetrics | None = None,
        membership: Membership | None = None,
        make_detector: Callable[[], Any] | None = None,
        make_sinks: Callable[[str], list[Sink]] | None = None,
    ) -> None:
        """`make_sinks(room name)`: the sinks after the local members for a new room (the server's configured
        outputs, see outputs/); None: the local members only."""
        self._make_tracker = make_tracker
        self._make_sinks = make_sinks
        self._make_detector = make_detector
        self.max_rooms = max_rooms
        self.metrics = metrics
        self.membership = membership
        self._rooms: dict[str, Room] = {}

    def __len__(self) -> int:
        return len(self._rooms)

    def __iter__(self) -> Any:
        return iter(list(self._rooms.values()))

    def get(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def check_join(self, name: str, is_source: bool) -> None:
        """Raise RoomError if a join would be refused now (the handshake asks; `join` checks again, because two
        handshakes can pass this check before either joins)."""
        room = self._rooms.get(name)
        if room is None and len(self._rooms) >= self.max_rooms:
            raise RoomError(protocol.SERVER_FULL, f"this server already has its maximum of {self.max_rooms} rooms")
        if is_source and room is not None and room.source is not None:
            raise RoomError(protocol.SOURCE_TAKEN, f"room {name!r} already has a source")

    def join(
        self, name: str, member: Member, is_source: bool, preset: str | None = None, last_seq: int = 0,
        track_detection: bool | None = None,
    ) -> Room:
        """Add a member (creating the room if needed); a source starts the room's analysis (`Room.start_source`)."""
        self.check_join(name, is_source)
        room = self._rooms.get(name)
        created = room is None
        if room is None:
            room = Room(name, self._make_tracker(preset if is_source else None))
            room.detector = self._make_detector() if self._make_detector is not None else None
            if self._make_sinks is not None:
                room.sinks = [LOCAL_MEMBERS, *self._make_sinks(name)]
            self._rooms[name] = room
        if is_source:
            if room.remote_holder is not None:  # its lease elsewhere is over (the claim succeeded): say so first
                room.remote_holder = None
                self.deliver_local(room, protocol.encode(protocol.source_state(False)), SOURCE)
            heard = room.seq
            room.start_source(preset, last_seq, track_detection)
            if heard and room.seq > heard:  # the previous source's updates elsewhere that never reached this process
                self.deliver_messages(room, [protocol.resync(room.name, heard + 1, room.seq)])  # (its listeners)
            room.source = member
        else:
            room.listeners.add(member)
        if self.membership is not None:
            if created:
                self.membership.room_opened(room)
            self.membership.members_changed(room)
        self._update_gauge()
        return room

    def leave(self, room: Room, member: Member) -> bool:
        """Remove a member; the room disappears from this process with its last local member. Returns True if the
        source left (the caller then announces it to the room, which may have members elsewhere)."""
        was_source = room.source is member
        if was_source:
            room.source = None
            room.prepared = None  # a prepared track is followed where its source is (it may `play` elsewhere)
            room.generation += 1  # windows still queued for this source are discarded
        else:
            room.listeners.discard(member)
        if room.source is None and not room.listeners:
            room.closed = True
            self._rooms.pop(room.name, None)
        if self.membership is not None:
            self.membership.members_changed(room)
            if room.closed:
                self.membership.room_closed(room)
        if room.closed:
            for sink in room.sinks:
                sink.room_closed(room)
        self._update_gauge()
        return was_source

    def publish(self, room: Room, message: "Update | dict[str, Any] | Outgoing") -> None:
        """THE broadcast: encode once, hand to each of the room's sinks in order (the local members, the source
        included, first; then the broker for the room's members on other processes, then any OSC targets). An
        `Outgoing` is already encoded (a prepared track's cues)."""
        out = message if isinstance(message, Outgoing) else outgoing(message)
        for sink in room.sinks:
            try:
                sink.send(room, out)
            except Exception:  # a sink's bug must not cost the room's other sinks their message
                log.exception("room %s: sink %s failed", room.name, type(sink).__name__)

    @staticmethod
    def deliver_local(room: Room, text: str, kind: str, to_source: bool = True) -> None:
        room.note_timeline(text, kind)
        for member in room.members if to_source else room.listeners:
            member.deliver(text, kind)

    def deliver_messages(self, room: Room, messages: list[dict[str, Any]]) -> None:
        """Messages made on this process for its own members only (what a room heard from elsewhere implies)."""
        for message in messages:
            out = outgoing(message)
            self.deliver_local(room, out.text, out.kind)

    def _update_gauge(self) -> None:
        if self.metrics:
            self.metrics.rooms.set(len(self._rooms))


class Outbox:
    """A client's bounded outgoing queue, drained by one sender task.

    When it is full, the oldest queued mood update is dropped (counted in metrics), so a slow client receives
    fewer, newer updates and never blocks the room. Control messages (welcome, source changes, errors) are not
    conflated; a hard cap of `size + CONTROL_SLACK` items still bounds a client that provokes errors and never reads.
    `max_bytes` bounds the queued text as well (a client that never reads and provokes large replies held
    ~120 MB): a mood update that does not fit pushes out older mood updates, anything else that does not fit is
    dropped (counted the same way).
    """

    def __init__(self, size: int, metrics: ServerMetrics | None = None, max_bytes: int | None = None) -> None:
        self.size = max(1, size)
        self.metrics = metrics
        self.max_bytes = max_bytes
        self._items: collections.deque[tuple[str, str]] = collections.deque()
        self._ready = asyncio.Event()
        self._closing: tuple[int, str] | None = None
        self.dropped = 0
        self.queued_bytes = 0  # characters of text queued (ASCII JSON: bytes on the wire)

    def __len__(self) -> int:
        return len(self._items)

    def _drop(self) -> None:
        self.dropped += 1
        if self.metrics:
            self.metrics.dropped.inc()

    def _drop_oldest_mood(self) -> bool:
        for i, (k, text) in enumerate(self._items):
            if k == MOOD:
                del self._items[i]
                self.queued_bytes -= len(text)
                self._drop()
                return True
        return False

    def deliver(self, text: str, kind: str) -> None:
        if self._closing is not None:
            return
        if len(self._items) >= self.size + CONTROL_SLACK:
            # A client that never reads but keeps provoking errors: drop rather than grow without bound.
            self._drop()
            return
        if kind == MOOD and sum(1 for k, _ in self._items if k == MOOD) >= self.size:
            self._drop_oldest_mood()
        if self.max_bytes is not None:
            if len(text) > self.max_bytes:  # could never fit: older updates are not evicted for it
                self._drop()
                return
            while self.queued_bytes + len(text) > self.max_bytes and kind == MOOD and self._drop_oldest_mood():
                pass
            if self.queued_bytes + len(text) > self.max_bytes:
                self._drop()
                return
        self._items.append((kind, text))
        self.queued_bytes += len(text)
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
        item = self._items.popleft()
        self.queued_bytes -= len(item[1])
        return item

    @property
    def closing(self) -> tuple[int, str] | None:
        return self._closing

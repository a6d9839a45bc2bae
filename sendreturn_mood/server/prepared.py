"""Tracks known ahead, the I/O shell: preparing a room's track (decode, analyse, store) and playing each room's
prepared cues on the event loop's clock.

    PUT /v1/rooms/{room}/tracks/{id}  -> TrackPreparer.prepare (audio) or .refer (an analysis already stored)
    play (websocket)                  -> TrackPreparer.get -> Session.play -> Follow
    Follow                            -> Playback.follow(room): publish the room's due cues, schedule its next one

The analysis is `analyze`'s own (`offline.analyze_audio`: resampler, log-mel, windows, model, track changes,
smoothing, effects), so a prepared room broadcasts exactly what `analyze` prints for the file. It runs off the event
loop; the same audio with the same settings is analysed once (the store keys analyses by a hash of both).
"""

from __future__ import annotations

import asyncio
import heapq
import io
import itertools
import json
import math
import logging
import queue
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Iterator

from .. import protocol
from ..audio.files import DecodeError, mono_blocks
from ..broker.tracks import TrackStore
from ..config import Settings, as_dict
from ..metrics import ServerMetrics
from ..model.contract import MoodModel
from ..room.offline import AnalyzeError, analyze_audio
from ..room.prepared import PreparedTrack, TrackAnalysis, analysis_id, timeline_text
from ..room.rooms import MOOD, Room, RoomRegistry

log = logging.getLogger(__name__)


TIMELINE_ENVELOPE_BYTES = 8192  # a timeline message's fields besides its updates (track, track changes, ...)
# cues of different rooms due within this of the earliest go out in one wake-up of the event loop, that much early at
# most (far below what a listener notices, and below the loop's 1 ms timer resolution it saves wake-ups on)
COALESCE_SECONDS = 0.002


class PrepareError(protocol.ProtocolError):
    """Audio that cannot become a prepared track; `status` is the HTTP answer (413 too long, 422 undecodable)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status


def prefetched(blocks: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """`blocks` decoded by a thread of their own, up to `depth` ahead: the decoder (libsndfile through cffi, which
    releases the GIL) runs while the previous block is analysed, so a track's wall time is nearer the longer of the
    two than their sum. Exceptions come out where the block would have."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        q.put(("block", block), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as e:  # handed to the consumer
            q.put(("error", e))

    thread = threading.Thread(target=produce, name="prepare-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


class TrackPreparer:
    """Prepares rooms' tracks with the server's model and settings, into the store."""

    def __init__(self, model: MoodModel, config: Settings, store: TrackStore, executor: Executor | None = None) -> None:
        self.model = model
        self.config = config
        self.store = store
        self.max_seconds = config.prepared.max_track_seconds
        # the `timeline` message must fit a client's send queue (it is never split): its envelope's room for the rest
        self.max_timeline_bytes = config.server.send_queue_bytes - TIMELINE_ENVELOPE_BYTES
        self.in_flight = 0  # uploads being read or analysed (the HTTP route admits at most analyze.max_concurrent)
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="prepare")

    def settings_key(self, preset: str | None) -> dict[str, Any]:
        """What shapes an analysis besides the audio (part of its id): the model, the preset and the settings of
        the analysis path."""
        c = self.config
        info = self.model.info
        return {
            "model": [info.name, info.version], "preset": preset or c.effects.default_preset,
            "analysis": as_dict(c.analysis), "smoothing": as_dict(c.smoothing), "track_detection": as_dict(c.track_detection),
            "effects": c.effects.file,
        }

    async def prepare(
        self, room: str, id: str, audio: bytes, title: str | None = None, artist: str | None = None, preset: str | None = None,
    ) -> PreparedTrack:
        """Analyse `audio` (an encoded file: wav, mp3, flac, ogg) for `room`'s track `id` and store it.
        PrepareError (too long, undecodable), StoreFull."""
        aid = analysis_id(audio, self.settings_key(preset))
        analysis = await self.store.analysis(aid)
        if analysis is None:
            loop = asyncio.get_running_loop()
            analysis = await loop.run_in_executor(self._executor, self._analyse, aid, audio, preset, f"{room}/{id}")
        return await self.store.put(room, id, analysis, title, artist)

    async def keep_analysis(self, audio: bytes, answer: bytes) -> bytes:
        """POST /v1/analyze's answer for `audio` -> the same with `"analysis": ID` added, the analysis kept in the
        store (for prepared.ttl_seconds, unless a track uses it longer), so a later PUT can refer to it instead of
        uploading the audio again. Audio longer than prepared.max_track_seconds is not kept (the answer unchanged)."""
        loop = asyncio.get_running_loop()
        aid = analysis_id(audio, self.settings_key(None))

        def build() -> TrackAnalysis | None:
            result = json.loads(answer)
            if result["duration"] > self.max_seconds:
                return None
            analysis = TrackAnalysis.from_result(aid, result)
            return analysis if len(analysis.timeline_updates) <= self.max_timeline_bytes else None

        analysis = await loop.run_in_executor(self._executor, build)
        if analysis is None:
            return answer
        await self.store.put_analysis(analysis)
        return answer[: answer.rindex(b"}")] + b',"analysis":"' + aid.encode() + b'"}'

    async def refer(self, room: str, id: str, analysis_id: str, title: str | None = None, artist: str | None = None) -> PreparedTrack | None:
        """`room`'s track `id` from an analysis already stored (None: no such analysis). StoreFull."""
        analysis = await self.store.analysis(analysis_id)
        if analysis is None:
            return None
        return await self.store.put(room, id, analysis, title, artist)

    def _analyse(self, aid: str, audio: bytes, preset: str | None, name: str) -> TrackAnalysis:
        try:
            rate, blocks = mono_blocks(io.BytesIO(audio))
            result = analyze_audio(name, rate, self._bounded(prefetched(blocks), rate), self.model, self.config, preset)
        except DecodeError as e:
            raise PrepareError(422, protocol.BAD_AUDIO, f"the upload is not audio the decoder can read to its end: {e}") from None
        except AnalyzeError as e:
            raise PrepareError(422, protocol.BAD_AUDIO, str(e)) from None
        analysis = TrackAnalysis.from_result(aid, result)
        if len(analysis.timeline_updates) > self.max_timeline_bytes:
            raise PrepareError(
                413, protocol.TOO_BIG,
                f"the track's timeline would be {len(analysis.timeline_updates) // 1024} KiB, more than a client's send "
                f"queue holds (server.send_queue_bytes); prepare a shorter track or raise analysis.hop_seconds",
            )
        return analysis

    def _bounded(self, blocks: Any, rate: int) -> Any:
        """The decoded blocks, refusing (413) audio longer than prepared.max_track_seconds as soon as it is."""
        frames = 0
        for block in blocks:
            frames += len(block)
            if frames > self.max_seconds * rate:
                raise PrepareError(
                    413, protocol.TOO_BIG,
                    f"the track is longer than {self.max_seconds:g} s (prepared.max_track_seconds): its timeline would "
                    "not fit a client's queue; stream it live instead",
                )
            yield block

    async def get(self, room: str, id: str) -> PreparedTrack | None:
        return await self.store.get(room, id)

    async def timeline_elsewhere(self, room: str, hop_seconds: float) -> str | None:
        """The `timeline` of the prepared track `room` follows on another process (the store says which), for a
        listener joining here; None when it follows none."""
        playing = await self.store.playing(room)
        track = await self.store.get(room, playing[0]) if playing is not None else None
        if playing is None or track is None:
            return None
        return timeline_text(room, track, playing[1], hop_seconds)

    def close(self) -> None:
        if isinstance(self._executor, ThreadPoolExecutor):
            self._executor.shutdown(wait=False, cancel_futures=True)


class Playback:
    """Every prepared room's next cue in one heap behind one event-loop timer.

    A room costs nothing between its cues: no task, no timer of its own, no polling. When the timer fires, every room
    whose next cue is due within COALESCE_SECONDS goes out in that one wake-up (thousands of rooms share a few
    wake-ups a hop instead of one each), and the timer is set for the earliest cue left. A room whose playback
    changes (play, a position report, pause, stop) is followed at once and gets a new entry; its old entry stays in
    the heap, stale, and is skipped when it comes up (no search, no removal)."""

    def __init__(self, rooms: RoomRegistry, metrics: ServerMetrics) -> None:
        self.rooms = rooms
        self.metrics = metrics
        self._heap: list[tuple[float, int, Room]] = []  # (due on time.perf_counter, entry number, room)
        self._entry: dict[Room, int] = {}  # room -> the number of its current heap entry (others are stale)
        self._numbers = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # when the timer fires (time.perf_counter)

    def follow(self, room: Room) -> None:
        """The room's playback changed: publish its cues that are due now and schedule its next one."""
        self._follow(room, time.perf_counter())
        self._arm()

    def _follow(self, room: Room, now: float) -> None:
        self._entry.pop(room, None)
        if room.closed:
            return
        moods = 0
        for out, late in room.follow(now):
            self.rooms.publish(room, out)
            if out.kind == MOOD:
                moods += 1
                self.metrics.prepared_delay.observe(late)
        if moods:
            self.metrics.updates.add(moods)
        f = room.prepared
        due = f.next_time() if f is not None else None
        if due is not None:
            number = next(self._numbers)
            self._entry[room] = number
            heapq.heappush(self._heap, (due, number, room))

    def _fire(self) -> None:
        """The timer: every room whose cue is due by now + COALESCE_SECONDS, its cues at their due time (so one
        due a moment from now goes out with the rest instead of waking the loop again)."""
        self._timer, self._timer_at = None, math.inf
        now = time.perf_counter()
        horizon = now + COALESCE_SECONDS
        heap, entry = self._heap, self._entry
        while heap and heap[0][0] <= horizon:
            due, number, room = heapq.heappop(heap)
            if entry.get(room) == number:
                self._follow(room, max(now, due))
        self._arm()

    def _arm(self) -> None:
        """Set the timer for the earliest current entry (stale ones on top are dropped on the way)."""
        heap, entry = self._heap, self._entry
        while heap and entry.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        at = heap[0][0] if heap else math.inf
        if at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, at - time.perf_counter()), self._fire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        self._heap.clear()
        self._entry.clear()

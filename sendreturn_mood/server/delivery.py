"""Result delivery: the inference worker's output for one window, back on the event loop, to its room.

    Submit -> worker (one thread, batched over all rooms) -> ResultDelivery on the loop -> Room.on_window -> publish
    publish -> the room's sinks: every local member's bounded Outbox (-> one sender task per connection ->
    websocket), the broker, OSC targets (outputs/)

A failed window (the model raised, or gave non-finite outputs) is lost to its room only, which gets a non-fatal
`server_error`; a window of a track the room has moved past is dropped silently.

`latency_ms` is measured from the arrival of the websocket message that completed the window (for the tail window:
the `end` message) to the moment the update is handed to the members' outboxes; the update is encoded once for the
whole room, so per-client send time is not included.
"""

from __future__ import annotations

import logging
import time

from .. import protocol
from ..metrics import ServerMetrics
from ..model.inference import Job, Result
from ..room.rooms import Room, RoomRegistry
from ..room.tracker import NonFiniteOutput

log = logging.getLogger(__name__)

WINDOW_FAILED = "analysis of a window failed; it was skipped"


class ResultDelivery:
    """The worker's `deliver` callback: called on the event loop, in submission order."""

    def __init__(self, rooms: RoomRegistry, metrics: ServerMetrics) -> None:
        self.rooms = rooms
        self.metrics = metrics

    def __call__(self, job: Job, result: Result) -> None:
        room: Room = job.owner
        if not room.is_current(job.generation):
            self.metrics.dropped_windows.inc()
            return
        if result.error is not None or result.prediction is None:
            log.warning("inference failed for room %s: %s", room.name, result.error)
            self._window_failed(room)
            return
        latency = time.perf_counter() - job.arrival
        try:
            messages = room.on_window(
                job.generation, result.prediction, job.window.stream_time, latency * 1000.0, job.window.logmel
            )
        except NonFiniteOutput:  # the room's smoothing, detector and seq are untouched; this window is lost
            log.warning("room %s: the model's outputs for a window were not finite; it was skipped", room.name)
            self._window_failed(room)
            return
        if not messages:
            self.metrics.dropped_windows.inc()
            return
        self.metrics.latency.observe(latency)
        self.metrics.updates.add()
        for msg in messages:  # a track_change (control: never conflated) comes before its window's mood
            if isinstance(msg, dict) and msg["type"] == "track_change":
                self.metrics.track_changes.inc()
            self.rooms.publish(room, msg)

    def _window_failed(self, room: Room) -> None:
        self.metrics.errors.inc(code=protocol.SERVER_ERROR)
        self.rooms.publish(room, protocol.error(protocol.SERVER_ERROR, WINDOW_FAILED))

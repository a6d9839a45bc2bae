"""What a room broadcasts for one window, as one typed object; the wire formats are views of it.

`MoodTracker.update` turns a window's `Prediction` into an `Analysis` (smoothing, hysteresis, effects, silence);
`Room.on_window` wraps it in an `Update` with the room's envelope (room, seq, track, latency). Every output reads
the same object: the websocket's `mood` message (`Update.to_message`), `analyze`'s timeline rows
(`Analysis.to_dict`, the message minus its envelope) and the OSC bundle (`outputs/osc.py`). A new model output
becomes a field here and a line in each view; nothing between the model and the views names it.

Values are already rounded for the wire (tracker.DECIMALS, effects.RESOLUTION), so every view shows the same
numbers and the server and `analyze` print identical JSON for the same audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import protocol
from .effects import with_rgb, without_rgb


@dataclass(frozen=True)
class Instant:
    """The window's own (unsmoothed) mood probabilities and their valence/arousal."""

    probabilities: dict[str, float]
    valence: float
    arousal: float

    def to_dict(self) -> dict[str, Any]:
        return {"probabilities": self.probabilities, "valence": self.valence, "arousal": self.arousal}


@dataclass(frozen=True)
class Guess:
    """A smoothed label (with hysteresis) and the smoothed probabilities it was read from."""

    label: str | None  # None: no music heard yet in this track (silence first)
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probabilities": self.probabilities}


@dataclass(frozen=True)
class Analysis:
    """One window after the model, smoothed: the analysis fields of protocol v1's `mood` message.

    `effects` maps each preset parameter to its wire value (a float in the parameter's units, or "#rrggbb" for a
    colour). `state` / `level_db` are None when the tracker was given no level (then the message has neither)."""

    stream_time: float
    mood: str | None  # None until the track's first music window (silence first; confidence is then 0)
    confidence: float
    probabilities: dict[str, float]
    valence: float
    arousal: float
    instant: Instant
    genre: Guess | None
    effects: dict[str, float | str]
    preset: str
    state: str | None = None
    level_db: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """`analyze`'s timeline row: the `mood` message's analysis fields, in the protocol's order."""
        out: dict[str, Any] = {
            "stream_time": self.stream_time,
            "mood": self.mood,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "valence": self.valence,
            "arousal": self.arousal,
            "instant": self.instant.to_dict(),
        }
        if self.genre is not None:
            out["genre"] = self.genre.to_dict()
        out["effects"] = with_rgb(self.effects)
        if self.state is not None:
            out["state"] = self.state
            out["level_db"] = self.level_db
        out["preset"] = self.preset
        return out


@dataclass(frozen=True)
class Update:
    """What a room broadcasts for one window: its analysis and the room's envelope."""

    room: str
    seq: int
    analysis: Analysis
    track: dict[str, str] | None = None
    latency_ms: float = 0.0

    def to_message(self) -> dict[str, Any]:
        """The websocket view: protocol v1's `mood` message."""
        return protocol.mood(self.room, self.seq, self.analysis.to_dict(), self.track, self.latency_ms)

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> "Update":
        """A `mood` message (as received over the websocket) back into an Update, for outputs fed by a client (the
        OSC bridge). Raises KeyError / TypeError for a message that is not a v1 `mood`."""
        instant, genre = msg["instant"], msg.get("genre")
        analysis = Analysis(
            stream_time=msg["stream_time"], mood=msg["mood"], confidence=msg["confidence"],
            probabilities=msg["probabilities"], valence=msg["valence"], arousal=msg["arousal"],
            instant=Instant(instant["probabilities"], instant["valence"], instant["arousal"]),
            genre=None if genre is None else Guess(genre["label"], genre["probabilities"]),
            effects=without_rgb(msg["effects"]), preset=msg["preset"], state=msg.get("state"), level_db=msg.get("level_db"),
        )
        return cls(msg["room"], msg["seq"], analysis, msg.get("track"), msg["latency_ms"])

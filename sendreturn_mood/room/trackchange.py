"""Track changes heard from the audio: a sans-I/O detector fed one analysed window at a time.

Why: a room's smoothing (and its label hysteresis and effect glides) restarts only when the source says a new track
starts. Many sources never say so (a radio stream, a DJ mix, a game's own playlist), and then the mood of the new
song creeps in over several time constants. The detector notices the change from what the runtime already computes
for every window and lets the room restart as a `track` message would.

How: every window is reduced to one feature vector, the model's `embedding` output when the model has one (what the
mood head reads, so it moves when the music's character moves and much less with loudness or a new instrument
inside a song), L2-normalised, with the genre probabilities (scaled by `GENRE_WEIGHT`) appended when the model has
genres (they come from a second network trained for genre, so they see changes the mood embedding does not: two
happy songs of different genres); else the window's per-band log-mel mean and spread. The history since the last change is
split in two by time: the *recent* block (the windows that ended in the last `RECENT_SECONDS`) and the *earlier*
context (the windows that ended before the recent block's audio began, at most `CONTEXT_SECONDS` of them; the window
that straddles both is left out, so the two blocks share no audio). The score compares the two blocks:

- embedding: the cosine distance between the blocks' mean feature vectors;
- log-mel: the RMS over bands of the recent mean's z-score against the earlier context's per-band mean and spread.

A change fires when the score reaches the threshold for the configured sensitivity, the earlier context covers at
least `MIN_CONTEXT_SECONDS` of audio, and at least `min_track_seconds` passed since the last change (detected, or
the reset an explicit `track` message causes: that is how the source's explicit message wins). The change is placed
between the end of the earlier context and the start of the recent block; it is confirmed `RECENT_SECONDS` plus one
window later, which is the announcement's latency. After a change only the recent block is kept: it is the new
track's first audio.

Windows with silence in them (a gap between tracks, a pause) are left out of both blocks: silence says little about
either track, and a window half silent looks different from both.

Everything runs in stream time (seconds of the room's audio), like the smoothing, so `analyze` and the server find
the same changes in the same audio. Memory is bounded: at most `MAX_HISTORY` windows are kept.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SendReturnError
from ..audio.frontend import FrontEndSpec, log_mel
from ..config import TRACK_FEATURES, Settings

FEATURE_EMBEDDING = "embedding"
FEATURE_LOGMEL = "logmel"
FEATURES = TRACK_FEATURES  # ("auto", FEATURE_EMBEDDING, FEATURE_LOGMEL): the config says which it accepts

RECENT_SECONDS = 2.0  # windows ending within this much of the newest one form the recent block (2 at hop 1.5 s)
CONTEXT_SECONDS = 15.0  # the earlier context: windows ending up to this long before the recent block's audio began
MIN_CONTEXT_SECONDS = 7.0  # audio the earlier context must span (first window's start to last one's end) to score
MAX_HISTORY = 64  # windows kept at most (the context needs ~12 at hop 1.5 s; 64 covers hops down to ~0.3 s)
SILENCE_DBFS = -57.0  # a front-end frame quieter (mean log-mel) than white noise at this RMS level is silent
SILENT_SECONDS = 0.5  # a window with at least this much silent audio is left out of the comparison
LOGMEL_VARIANCE_FLOOR = 0.01  # added to the per-band variance of the earlier context (log-mel units squared)
EPSILON = 1e-9
GENRE_WEIGHT = 0.5  # genre probabilities' weight next to the unit-length embedding (0.3 / 0.7 did no better)

# Score thresholds at sensitivity 0 and 1 for each feature; sensitivity interpolates linearly between them.
THRESHOLDS = {FEATURE_EMBEDDING: (0.8, 0.2), FEATURE_LOGMEL: (8.0, 2.0)}
DECIMALS = 4


class TrackChangeError(SendReturnError, ValueError):
    """Settings the detector cannot use; the message says which and why."""


@dataclass(frozen=True)
class DetectorSettings:
    """What a deployment configures (`track_detection` in the config, where the defaults are); rooms may only
    switch detection off/on."""

    enabled: bool
    sensitivity: float
    min_track_seconds: float
    feature: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.sensitivity <= 1.0:
            raise TrackChangeError(f"track_detection.sensitivity must be in [0, 1], got {self.sensitivity}")
        if not 0.0 <= self.min_track_seconds <= 3600.0:
            raise TrackChangeError(f"track_detection.min_track_seconds must be in 0..3600, got {self.min_track_seconds}")
        if self.feature not in FEATURES:
            raise TrackChangeError(f"track_detection.feature must be one of {', '.join(FEATURES)}, got {self.feature!r}")

    @classmethod
    def from_config(cls, config: Settings) -> "DetectorSettings":
        t = config.track_detection
        return cls(t.enabled, t.sensitivity, t.min_track_seconds, t.feature)

    def resolve_feature(self, has_embedding: bool) -> str:
        """The feature actually used: `auto` means the embedding when the model has one."""
        if self.feature == FEATURE_EMBEDDING and not has_embedding:
            raise TrackChangeError("track_detection.feature is 'embedding' but the model has no 'embedding' output")
        if self.feature == "auto":
            return FEATURE_EMBEDDING if has_embedding else FEATURE_LOGMEL
        return self.feature


def threshold(feature: str, sensitivity: float) -> float:
    """The score a change must reach: higher sensitivity, lower threshold, more detections."""
    at0, at1 = THRESHOLDS[feature]
    return at0 + float(sensitivity) * (at1 - at0)


@dataclass(frozen=True)
class WindowFeature:
    """One window reduced to what the detector compares; `vector` is None for a window with silence in it."""

    vector: np.ndarray | None


@dataclass(frozen=True)
class TrackChange:
    """A detected change. `stream_time`: where the new track is estimated to start; `detected_at`: the stream time
    of the window that confirmed it (when it is announced); `score` and `threshold` for diagnosis."""

    stream_time: float
    detected_at: float
    score: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        """The fields of the `track_change` message and of analyze's `track_changes` entries."""
        return {
            "source": "detected",
            "stream_time": _r(self.stream_time),
            "detected_at": _r(self.detected_at),
            "score": _r(self.score),
            "threshold": _r(self.threshold),
        }


def _r(x: float) -> float:
    return round(float(x), DECIMALS) + 0.0


@functools.lru_cache(maxsize=16)
def silent_frame_level(spec: FrontEndSpec) -> float:
    """The mean log-mel of a frame of white noise at SILENCE_DBFS, through the model's own front end, so the silence
    test holds whatever its log compression or normalisation (0.049 for the shipped model's)."""
    noise = 10 ** (SILENCE_DBFS / 20) * np.random.default_rng(0).standard_normal(spec.sample_rate)
    frames = log_mel(noise.astype(np.float32), spec).mean(axis=0)
    return float(frames[len(frames) // 4 : -len(frames) // 4].mean())  # away from the padded edges


def window_feature(
    feature: str, logmel: np.ndarray, embedding: np.ndarray | None, spec: FrontEndSpec, genres: np.ndarray | None = None
) -> WindowFeature:
    """Reduce one window (log-mel [n_mels, frames] made by `spec`, the model's embedding and genre probabilities, or
    None) to the detector's feature."""
    logmel = np.asarray(logmel, dtype=np.float32)
    silent_frames = np.count_nonzero(logmel.mean(axis=0) < silent_frame_level(spec))
    silent = spec.frames_to_seconds(int(silent_frames))
    if silent >= SILENT_SECONDS:
        return WindowFeature(None)
    if feature == FEATURE_EMBEDDING:
        if embedding is None:
            raise TrackChangeError("the detector uses the model's embedding, but this window has none")
        e = np.asarray(embedding, dtype=np.float64).reshape(-1)
        v = e / (np.linalg.norm(e) + EPSILON)
        if genres is not None:
            v = np.concatenate([v, GENRE_WEIGHT * np.asarray(genres, dtype=np.float64).reshape(-1)])
        return WindowFeature(v if np.isfinite(v).all() else None)
    v = np.concatenate([logmel.mean(axis=1), logmel.std(axis=1)]).astype(np.float64)
    return WindowFeature(v if np.isfinite(v).all() else None)


def score(feature: str, earlier: np.ndarray, recent: np.ndarray) -> float:
    """How different the recent block [r, d] is from the earlier context [e, d] (see the module docstring)."""
    if feature == FEATURE_EMBEDDING:
        a, b = earlier.mean(axis=0), recent.mean(axis=0)
        return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + EPSILON))
    mu, var = earlier.mean(axis=0), earlier.var(axis=0)
    z = (recent.mean(axis=0) - mu) / np.sqrt(var + LOGMEL_VARIANCE_FLOOR)
    return float(np.sqrt(np.mean(z * z)))


class TrackChangeDetector:
    """One stream's detector. `update` once per analysed window, in stream order; `reset` when the stream restarts
    (an explicit `track`, a new source). Sans-I/O: no clocks, no threads, no network."""

    def __init__(self, settings: DetectorSettings, spec: FrontEndSpec, window_seconds: float, has_embedding: bool) -> None:
        self.settings = settings
        self.feature = settings.resolve_feature(has_embedding)
        self.threshold = threshold(self.feature, settings.sensitivity)
        self.window_seconds = float(window_seconds)
        self.spec = spec
        self.enabled = settings.enabled
        self.reset()

    def reset(self) -> None:
        """Forget the history; the next change can come `min_track_seconds` after stream time 0."""
        self._history: collections.deque[tuple[float, np.ndarray]] = collections.deque(maxlen=MAX_HISTORY)
        self._last_change = 0.0
        self._last_time = -np.inf
        self.armed = False  # the last window could have fired (context and min_track_seconds allowed it)
        self.last_score: float | None = None  # the last window's score (None: not enough context or silence)

    def set_enabled(self, enabled: bool) -> None:
        """Switch detection for this stream; switching it on starts from an empty history."""
        if enabled and not self.enabled:
            self.reset()
        self.enabled = bool(enabled)

    def features(
        self, logmel: np.ndarray, embedding: np.ndarray | None = None, genres: np.ndarray | None = None
    ) -> WindowFeature:
        return window_feature(self.feature, logmel, embedding, self.spec, genres)

    def update(
        self, stream_time: float, logmel: np.ndarray, embedding: np.ndarray | None = None, genres: np.ndarray | None = None
    ) -> TrackChange | None:
        """One analysed window (ending at `stream_time`; its log-mel, the model's embedding and genre probabilities)
        -> a TrackChange when the music changed here, else None."""
        if not self.enabled:
            return None
        return self.push(stream_time, self.features(logmel, embedding, genres))

    def push(self, stream_time: float, feature: WindowFeature) -> TrackChange | None:
        """`update` with the feature already computed (the evaluation replays stored features through this)."""
        if not self.enabled:
            return None
        t = float(stream_time)
        self.armed, self.last_score = False, None
        if t < self._last_time:  # the stream restarted without a reset: start over rather than mix two clocks
            self.reset()
        self._last_time = t
        if feature.vector is None:
            return None
        self._history.append((t, feature.vector))
        recent_start = t - RECENT_SECONDS
        recent = [v for end, v in self._history if end > recent_start]
        audio_start = min(end for end, _ in self._history if end > recent_start) - self.window_seconds
        earlier = [(end, v) for end, v in self._history if end <= audio_start + EPSILON and end >= audio_start - CONTEXT_SECONDS]
        if not earlier or earlier[-1][0] - (earlier[0][0] - self.window_seconds) < MIN_CONTEXT_SECONDS - EPSILON:
            return None
        s = score(self.feature, np.stack([v for _, v in earlier]), np.stack(recent))
        change_time = 0.5 * (earlier[-1][0] + audio_start)
        self.last_score = s
        self.armed = change_time - self._last_change >= self.settings.min_track_seconds
        if s < self.threshold or not self.armed:
            return None
        self._last_change = change_time
        keep = [(end, v) for end, v in self._history if end > recent_start]
        self._history.clear()
        self._history.extend(keep)
        return TrackChange(change_time, t, s, self.threshold)


def detector_from_config(config: Settings, info: Any, window_seconds: float, has_embedding: bool) -> TrackChangeDetector:
    """The detector the config asks for, for a model (`info`: ModelInfo) and the window length actually used."""
    return TrackChangeDetector(DetectorSettings.from_config(config), info.frontend, window_seconds, has_embedding)

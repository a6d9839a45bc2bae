"""Per-room state after the model: smoothing, label hysteresis and effects, shared by the server and `analyze`.

`MoodTracker.update` turns one window's `Prediction` into an `Analysis` (update.py): exactly the analysis fields of
protocol v1's `mood` message. Time steps come from `stream_time` differences (seconds of audio), never from the wall clock, and every
float is rounded (4 decimals; effect values to ~1e-4 of their range, see effects.RESOLUTION), so the server and
`analyze` produce identical JSON for the same audio and settings.

Valence/arousal: the smoothed values are computed from the smoothed probabilities (probabilities @ the mood
coordinates of the model's metadata). The smoothing is linear, so this equals smoothing valence and arousal
separately with the same time constant, and it keeps V/A consistent with the reported probabilities.

Silence (a muted microphone was once broadcast as "angry 0.34"): when the caller passes the window's level
(`level_db`, or its `logmel` and the tracker reads the level from it, see level.py) and it is below the silence
threshold, the update says `"state": "silent"`; the smoothed probabilities, labels, valence/arousal and genre hold
their last music values, `instant` is the uniform distribution (a silent window says nothing about mood), and the
effects move to their rest values. Before the track's first music window there is nothing to hold: the mood and
genre labels are null and the confidence 0 (the probabilities uniform), so a track that starts silent is not
announced as the first label of a tie. The next music
window is smoothed against the held value with the time since the last music window, so music after a long pause
takes over quickly. Updates with a level carry `"state": "music"` and `level_db` otherwise. Without a level (older
callers) the update is computed as before and carries neither field.

Model outputs that are not finite are refused with NonFiniteOutput before any state changes: the caller treats that
window as failed, and the room's smoothing stays sound (one NaN used to stay in it for the rest of the track).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import SendReturnError
from ..config import Settings
from .effects import EffectState, Presets
from ..audio.level import window_level_db
from ..model.contract import ModelInfo, Prediction
from .smoothing import ExpSmoother, LabelHysteresis
from .update import Analysis, Guess, Instant

DECIMALS = 4
LEVEL_DECIMALS = 1
SILENT = "silent"
MUSIC = "music"


class NonFiniteOutput(SendReturnError, ValueError):
    """A window whose model outputs (or stream time) are not finite: treat it as a failed window."""


def _r(x: float) -> float:
    return round(float(x), DECIMALS) + 0.0  # + 0.0: no "-0.0" on the wire


def _probs(labels: tuple[str, ...] | list[str], p: np.ndarray) -> dict[str, float]:
    return {label: _r(v) for label, v in zip(labels, p.tolist())}  # Python floats: numpy scalars are slow here


class MoodTracker:
    """Per-room state after the model: smoothing, hysteresis, effects. The server and analyze both use it."""

    def __init__(
        self,
        info: ModelInfo,
        presets: Presets,
        preset: str | None,
        time_constant: float,
        hysteresis: float,
        silence_db: float | None = None,
    ) -> None:
        presets.check_moods(info.mood_labels)  # EffectsError naming the file and key of an unknown mood
        self.info = info
        self.labels = tuple(info.mood_labels)
        self.genres = tuple(info.genres)
        self._effects = EffectState(presets, preset)  # KeyError(name) for an unknown preset
        self._moods = ExpSmoother(time_constant)
        self._genre = ExpSmoother(time_constant)
        self._label = LabelHysteresis(hysteresis)
        self._genre_label = LabelHysteresis(hysteresis)
        self.silence_db = silence_db  # None: never silent
        self._uniform = np.full(len(self.labels), 1.0 / len(self.labels))
        self._genre_uniform = np.full(len(self.genres), 1.0 / len(self.genres)) if self.genres else None
        self.reset()

    @property
    def preset(self) -> str:
        return self._effects.preset

    def set_preset(self, name: str) -> None:
        """Switch preset (raises KeyError(name) for an unknown one); effect values glide to the new targets."""
        self._effects.set_preset(name)

    def reset(self) -> None:
        """New track: smoothing, label and effect state restart; the next update takes its values as they are."""
        self._moods.reset()
        self._genre.reset()
        self._label.reset()
        self._genre_label.reset()
        self._effects.reset()
        self._last_time: float | None = None
        self._last_music_time: float | None = None

    def level_of(self, logmel: np.ndarray) -> float:
        """A window's level in dB re full scale, read from its log-mel with this model's front end (level.py)."""
        return window_level_db(logmel, self.info.frontend)

    def is_silent(self, level_db: float | None) -> bool:
        return level_db is not None and self.silence_db is not None and level_db < self.silence_db

    def update(
        self,
        prediction: Prediction,
        stream_time: float,
        logmel: np.ndarray | None = None,
        *,
        level_db: float | None = None,
    ) -> Analysis:
        """One window's Prediction (its `moods`, and `genres` when the model has them) at `stream_time` -> its
        Analysis.

        `logmel` (the window the outputs came from) or `level_db` enables the silence state; see the module
        docstring. Raises NonFiniteOutput (state untouched) for non-finite outputs or time."""
        instant = np.asarray(prediction.moods, dtype=np.float64).reshape(-1)
        if instant.size != len(self.labels):
            raise ValueError(f"expected {len(self.labels)} mood probabilities, got {instant.size}")
        genres = prediction.genres
        genre_in = None if genres is None or not self.genres else np.asarray(genres, dtype=np.float64).reshape(-1)
        if not (np.isfinite(instant).all() and math.isfinite(stream_time) and (genre_in is None or np.isfinite(genre_in).all())):
            raise NonFiniteOutput("the model's outputs for this window are not finite")
        if level_db is None and logmel is not None:
            level_db = self.level_of(logmel)
        dt = 0.0 if self._last_time is None else max(0.0, float(stream_time) - self._last_time)
        self._last_time = float(stream_time)
        silent = self.is_silent(level_db)
        if silent:
            fields = self._silent(stream_time, dt)
        else:
            fields = self._music(instant, genre_in, stream_time, dt)
        if level_db is not None:
            fields["state"] = SILENT if silent else MUSIC
            fields["level_db"] = round(float(level_db), LEVEL_DECIMALS) + 0.0
        return Analysis(preset=self.preset, **fields)

    def _music(self, instant: np.ndarray, genres: np.ndarray | None, stream_time: float, dt: float) -> dict[str, Any]:
        # smoothing steps over silent windows: the time since the last music window, not since the last update
        music_dt = 0.0 if self._last_music_time is None else max(0.0, float(stream_time) - self._last_music_time)
        self._last_music_time = float(stream_time)
        smooth = self._moods.update(instant, music_dt)
        idx = self._label.update(smooth)
        out = self._fields(stream_time, idx, smooth, instant)
        if genres is not None:
            g = self._genre.update(genres, music_dt)
            out["genre"] = Guess(self.genres[self._genre_label.update(g)], _probs(self.genres, g))
        va = self.info.to_valence_arousal(smooth)
        out["effects"] = self._effects.update(dict(zip(self.labels, smooth.tolist())), float(va[0]), float(va[1]), dt)
        return out

    def _silent(self, stream_time: float, dt: float) -> dict[str, Any]:
        """Hold what the music said (or the uniform distribution before any music); effects go to rest."""
        smooth = self._moods.value
        if smooth is None:  # no music yet in this track: no label (null), not the first label of a uniform tie
            smooth = self._uniform
        out = self._fields(stream_time, self._label.current, smooth, self._uniform)
        if self._genre_uniform is not None:
            g = self._genre.value
            g = self._genre_uniform if g is None else g
            gi = self._genre_label.current
            out["genre"] = Guess(None if gi is None else self.genres[gi], _probs(self.genres, g))
        out["effects"] = self._effects.rest(dt)
        return out

    def _fields(self, stream_time: float, idx: int | None, smooth: np.ndarray, instant: np.ndarray) -> dict[str, Any]:
        """The mood fields; `idx` None: no label yet (null, confidence 0)."""
        va_instant = self.info.to_valence_arousal(instant)
        va = self.info.to_valence_arousal(smooth)
        probabilities = _probs(self.labels, smooth)
        return {
            "stream_time": _r(stream_time),
            "mood": None if idx is None else self.labels[idx],
            "confidence": 0.0 if idx is None else probabilities[self.labels[idx]],
            "probabilities": probabilities,
            "valence": _r(va[0]),
            "arousal": _r(va[1]),
            "instant": Instant(_probs(self.labels, instant), _r(va_instant[0]), _r(va_instant[1])),
            "genre": None,
        }


def tracker_from_config(
    info: ModelInfo, config: Settings, presets: Presets, preset: str | None = None
) -> MoodTracker:
    """A tracker with the config's smoothing settings; `preset` None: the presets' default."""
    s = config.smoothing
    return MoodTracker(info, presets, preset, s.time_constant_seconds, s.hysteresis, config.analysis.silence_db)

"""Per-room state after the model: smoothing, label hysteresis and effects, shared by the server and `analyze`.

`MoodTracker.update` turns one window's softmax outputs into exactly the analysis fields of protocol v1's `mood`
message. Time steps come from `stream_time` differences (seconds of audio), never from the wall clock, and every
float is rounded (4 decimals; effect values to ~1e-4 of their range, see effects.RESOLUTION), so the server and
`analyze` produce identical JSON for the same audio and settings.

Valence/arousal: the smoothed values are computed from the smoothed probabilities (probabilities @ the mood
coordinates of the model's metadata). The smoothing is linear, so this equals smoothing valence and arousal
separately with the same time constant, and it keeps V/A consistent with the reported probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .effects import EffectState, Presets
from .model import ModelInfo
from .smoothing import ExpSmoother, LabelHysteresis

DECIMALS = 4


def _r(x: float) -> float:
    return round(float(x), DECIMALS) + 0.0  # + 0.0: no "-0.0" on the wire


def _probs(labels: tuple[str, ...] | list[str], p: np.ndarray) -> dict[str, float]:
    return {label: _r(v) for label, v in zip(labels, p.tolist())}  # Python floats: numpy scalars are slow here


class MoodTracker:
    """Per-room state after the model: smoothing, hysteresis, effects. The server and analyze both use it."""

    def __init__(
        self, info: ModelInfo, presets: Presets, preset: str | None, time_constant: float, hysteresis: float
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

    def update(self, moods: np.ndarray, genres: np.ndarray | None, stream_time: float) -> dict[str, Any]:
        """One window's softmax outputs ([n_moods], [n_genres] or None) at `stream_time` -> the mood fields."""
        instant = np.asarray(moods, dtype=np.float64).reshape(-1)
        if instant.size != len(self.labels):
            raise ValueError(f"expected {len(self.labels)} mood probabilities, got {instant.size}")
        dt = 0.0 if self._last_time is None else max(0.0, float(stream_time) - self._last_time)
        self._last_time = float(stream_time)

        smooth = self._moods.update(instant, dt)
        idx = self._label.update(smooth)
        va_instant = self.info.to_valence_arousal(instant)
        va = self.info.to_valence_arousal(smooth)
        probabilities = _probs(self.labels, smooth)
        out: dict[str, Any] = {
            "stream_time": _r(stream_time),
            "mood": self.labels[idx],
            "confidence": probabilities[self.labels[idx]],
            "probabilities": probabilities,
            "valence": _r(va[0]),
            "arousal": _r(va[1]),
            "instant": {
                "probabilities": _probs(self.labels, instant),
                "valence": _r(va_instant[0]),
                "arousal": _r(va_instant[1]),
            },
        }
        if self.genres and genres is not None:
            g = self._genre.update(np.asarray(genres, dtype=np.float64).reshape(-1), dt)
            out["genre"] = {"label": self.genres[self._genre_label.update(g)], "probabilities": _probs(self.genres, g)}
        out["effects"] = self._effects.update(dict(zip(self.labels, smooth.tolist())), float(va[0]), float(va[1]), dt)
        out["preset"] = self.preset
        return out


def tracker_from_config(
    info: ModelInfo, config: dict[str, Any], presets: Presets, preset: str | None = None
) -> MoodTracker:
    """A tracker with the config's smoothing settings; `preset` None: the presets' default."""
    s = config["smoothing"]
    return MoodTracker(info, presets, preset, float(s["time_constant_seconds"]), float(s["hysteresis"]))

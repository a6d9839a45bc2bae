"""Time-constant smoothing and label hysteresis for per-window model outputs.

Both work in *stream time* (seconds of audio), never wall-clock time, so a room's smoothed values depend only on the
audio and not on how the server happened to schedule inference; `analyze` over a file therefore reproduces exactly
what the server broadcasts. The smoothing is an exponential moving average whose weight comes from the time step:

    alpha = 1 - exp(-dt / tau)        (tau = 0: no smoothing, alpha = 1)

so the same `tau` gives the same responsiveness whatever the hop. After a reset the first value is taken as it is
(no ramp up from zero, which would make every track start "neutral").
"""

from __future__ import annotations

import math

import numpy as np

MARGIN_EPSILON = 1e-9  # a lead of exactly `margin` (up to float noise, 0.54 - 0.46 > 0.08) does not switch


def smoothing_alpha(dt: float, time_constant: float) -> float:
    """Weight of the new value for a step of `dt` seconds with time constant `time_constant` seconds."""
    if time_constant < 0:
        raise ValueError(f"time constant must be >= 0, got {time_constant}")
    if time_constant == 0:
        return 1.0
    if dt <= 0:
        return 0.0
    return 1.0 - math.exp(-dt / time_constant)


class ExpSmoother:
    """Exponential moving average of a vector over stream time."""

    def __init__(self, time_constant: float) -> None:
        smoothing_alpha(1.0, time_constant)  # validates
        self.time_constant = float(time_constant)
        self.reset()

    def reset(self) -> None:
        self._value: np.ndarray | None = None

    @property
    def value(self) -> np.ndarray | None:
        return None if self._value is None else self._value.copy()

    def update(self, x: np.ndarray, dt: float) -> np.ndarray:
        """Add an observation `dt` seconds after the previous one; return the smoothed value (a copy)."""
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all() or not math.isfinite(dt):
            # refused before it is mixed in: one NaN would stay in the average for the rest of the track
            raise ValueError("smoothing needs finite values and time steps")
        if self._value is None or self._value.shape != x.shape:
            self._value = x.copy()
        else:
            a = smoothing_alpha(dt, self.time_constant)
            self._value = self._value + a * (x - self._value)
        return self._value.copy()


class LabelHysteresis:
    """Keeps the reported label until another one's probability beats it by `margin`.

    Without it, two moods with close probabilities (sad vs calm is the classic pair) make the label flicker on every
    update even though the smoothed probabilities barely move.
    """

    def __init__(self, margin: float) -> None:
        if not 0 <= margin < 1:
            raise ValueError(f"hysteresis must be in [0, 1), got {margin}")
        self.margin = float(margin)
        self.reset()

    def reset(self) -> None:
        self._current: int | None = None

    @property
    def current(self) -> int | None:
        return self._current

    def update(self, probabilities: np.ndarray) -> int:
        """Index of the label to report for these (smoothed) probabilities."""
        p = np.asarray(probabilities, dtype=np.float64)
        best = int(np.argmax(p))
        if self._current is None or self._current >= p.size:
            self._current = best
        elif best != self._current and p[best] - p[self._current] > self.margin + MARGIN_EPSILON:
            self._current = best
        return self._current

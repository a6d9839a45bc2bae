"""A window's sound level, read back from its log-mel: how the server tells silence from music.

The level needs no second pass over the audio (and no change to the audio path): the front end's recipe (in the
model file) is invertible, so the window the model is about to see already holds its power. The level is the mean,
over the window's frames, of the summed mel power, in dB relative to what the same front end gives for a full-scale
1 kHz sine: 0 dB is a full-scale tone, digital silence is SILENCE_FLOOR_DB (the floor keeps every value finite).
Measured on real music and the threshold chosen from it: docs/PROTOCOL.md, "Silence".
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .frontend import FrontEndSpec, frames_to_logmel, frame_signal, n_frames_for, pad_left, pad_right

SILENCE_FLOOR_DB = -120.0  # the lowest level reported (digital silence would be -inf)
LOUDEST_DB = 60.0  # the highest level reported (pcm refuses float audio beyond +24 dBFS anyway)
REFERENCE_HZ = 1000.0
_LN10 = np.float32(math.log(10.0))


def mel_power(logmel: np.ndarray, spec: FrontEndSpec) -> np.ndarray:
    """Undo the front end's normalisation and log: log-mel [n_mels, frames] -> mel power (float32, >= 0).

    float32 and `exp`, not float64 `10 ** x`: this runs on the event loop for every window, and a level in dB needs
    nowhere near float64's precision; `expm1` keeps the power of near-silent frames (10**x just above 1 in the
    log10_scaled recipe) from cancelling to zero."""
    x = np.asarray(logmel, dtype=np.float32)
    if spec.mean is not None and spec.std is not None:
        x = x * np.float32(spec.std) + np.float32(spec.mean)
    if spec.log == "log10_scaled":
        # (10**x - offset) / scale, as expm1(x ln 10) + (1 - offset); x is capped where float32 would overflow
        power = np.minimum(x, np.float32(38.0))  # a new array: the caller's window is never written
        power *= _LN10
        np.expm1(power, out=power)
        if spec.log_offset != 1.0:
            power += np.float32(1.0 - spec.log_offset)
        power *= np.float32(1.0 / spec.log_scale)
    else:
        power = np.minimum(x, np.float32(380.0))
        power *= _LN10 / np.float32(10.0)
        np.exp(power, out=power)
        power[power <= spec.amin * 1.0000001] = 0.0  # the dB floor is silence, not a signal
    return np.maximum(power, np.float32(0.0), out=power)


@functools.lru_cache(maxsize=16)
def reference_power(spec: FrontEndSpec) -> float:
    """Mean summed mel power of a full-scale 1 kHz sine (one second) through this front end: the 0 dB point."""
    t = np.arange(spec.sample_rate) / spec.sample_rate
    y = np.sin(2 * np.pi * REFERENCE_HZ * t).astype(np.float32)
    padded = np.concatenate([pad_left(y, spec), y, pad_right(y, spec)])
    return _mean_power(frames_to_logmel(frame_signal(padded, n_frames_for(len(y), spec), spec), spec), spec)


def window_level_db(logmel: np.ndarray, spec: FrontEndSpec) -> float:
    """The window's level in dB re a full-scale sine, at least SILENCE_FLOOR_DB (always finite)."""
    if logmel.size == 0:
        return SILENCE_FLOOR_DB
    power = _mean_power(logmel, spec)
    if math.isnan(power) or power <= 0.0:
        return SILENCE_FLOOR_DB
    return min(LOUDEST_DB, max(SILENCE_FLOOR_DB, 10.0 * math.log10(power / reference_power(spec))))


def _mean_power(logmel: np.ndarray, spec: FrontEndSpec) -> float:
    """Mean over frames of the summed mel power: the quantity both the level and its 0 dB reference are made of."""
    return float(mel_power(logmel, spec).sum(axis=0).mean(dtype=np.float64))

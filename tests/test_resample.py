"""The streaming resampler: chunk boundaries must be invisible (no clicks, no drift), for every common client rate.

A client sends 20-250 ms messages at its own rate; if each message were resampled on its own, every boundary would
click and the model would hear artefacts it never saw in training. So chunked output must equal whole-signal output.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendreturn_mood.audio.resample import StreamingResampler, resample

MODEL_RATE = 16000
COMMON_RATES = [8000, 16000, 22050, 44100, 48000, 96000, 192000]
EDGE = 0.05  # seconds at either end excluded from comparisons with the ideal signal (filter start-up / tail)


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def chunked(r: StreamingResampler, y: np.ndarray, cuts: list[int]) -> np.ndarray:
    parts, start = [], 0
    for c in sorted(set(cuts)) + [len(y)]:
        parts.append(r.push(y[start:c]))
        start = c
    parts.append(r.flush())
    return np.concatenate(parts)


@settings(max_examples=15, deadline=None)
@given(rate=st.sampled_from(COMMON_RATES), seed=st.integers(0, 2**31), data=st.data())
def test_chunked_equals_whole(rate: int, seed: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    y = (0.3 * rng.standard_normal(rate // 2)).astype(np.float32)
    cuts = data.draw(st.lists(st.integers(0, len(y)), max_size=30), label="cuts")
    whole = resample(y, rate, MODEL_RATE)
    got = chunked(StreamingResampler(rate, MODEL_RATE), y, cuts)
    assert got.shape == whole.shape
    assert np.max(np.abs(got - whole)) <= 1e-6


@pytest.mark.parametrize("rate", COMMON_RATES)
def test_length_and_sine_frequency_kept(rate: int) -> None:
    """Output length follows the rate ratio and a 1 kHz tone stays at 1 kHz (spectral peak of the output)."""
    y = sine(1000.0, rate, 2.0)
    z = resample(y, rate, MODEL_RATE)
    assert abs(len(z) - len(y) * MODEL_RATE / rate) <= 1
    spectrum = np.abs(np.fft.rfft(z * np.hanning(len(z))))
    peak_hz = np.argmax(spectrum) * MODEL_RATE / len(z)
    assert abs(peak_hz - 1000.0) <= MODEL_RATE / len(z)


@pytest.mark.parametrize("rate", [8000, 44100, 48000, 192000])
def test_no_clicks_at_chunk_boundaries(rate: int) -> None:
    """Streamed in 20 ms messages, a sine equals the ideal sine at 16 kHz everywhere (no delay, no glitches)."""
    freq = 440.0
    y = sine(freq, rate, 1.5, phase=0.3)
    r = StreamingResampler(rate, MODEL_RATE)
    z = chunked(r, y, list(range(0, len(y), int(0.02 * rate))))
    t = np.arange(len(z)) / MODEL_RATE
    ideal = 0.5 * np.sin(2 * np.pi * freq * t + 0.3)
    edge = int(EDGE * MODEL_RATE)
    assert np.max(np.abs(z[edge:-edge] - ideal[edge:-edge])) < 1e-3
    # and no sample-to-sample jump beyond what the sine itself does
    max_step = 0.5 * 2 * np.pi * freq / MODEL_RATE
    assert np.max(np.abs(np.diff(z[edge:-edge]))) <= max_step * 1.01


def test_anti_aliasing_removes_content_above_the_model_nyquist() -> None:
    """A 12 kHz tone at 48 kHz cannot exist at 16 kHz: it must vanish, not fold down to 4 kHz."""
    z = resample(sine(12000.0, 48000, 1.0), 48000, MODEL_RATE)
    edge = int(EDGE * MODEL_RATE)
    assert np.sqrt(np.mean(z[edge:-edge] ** 2)) < 1e-3


def test_same_rate_is_a_pass_through_and_reset_restarts() -> None:
    y = sine(300.0, MODEL_RATE, 0.5)
    r = StreamingResampler(MODEL_RATE, MODEL_RATE)
    np.testing.assert_array_equal(r.push(y), y)
    assert r.flush().size == 0
    r = StreamingResampler(48000, MODEL_RATE)
    y48 = sine(300.0, 48000, 0.5)
    first = chunked(r, y48, [1000, 5000])
    second = chunked(r, y48, [7])  # flush made it ready for a new stream
    np.testing.assert_array_equal(first, second)


@settings(max_examples=15, deadline=None)
@given(rate=st.sampled_from(COMMON_RATES + [11025, 32000]), data=st.data())
def test_max_output_is_an_upper_bound(rate: int, data: st.DataObject) -> None:
    """The analysis pipeline defers resampling until a window could be due, judged by `max_output`: if the stream
    ever returned more, a window would come out one push late."""
    y = (0.3 * np.random.default_rng(rate).standard_normal(rate)).astype(np.float32)
    r = StreamingResampler(rate, MODEL_RATE)
    start = 0
    for c in sorted(set(data.draw(st.lists(st.integers(0, len(y)), max_size=40), label="cuts"))) + [len(y)]:
        bound = r.max_output(c - start)
        assert r.push(y[start:c]).size <= bound
        start = c

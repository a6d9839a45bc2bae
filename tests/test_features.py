"""Track-level features (tempo, key, mode, loudness, duration) on audio whose truth is known: a BS.1770 reference
tone, a chord progression over a click track the test synthesises, silence, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sendreturn_mood.audio.features import (
    LOUDNESS_FLOOR_LUFS,
    MAJOR,
    MINOR,
    UNDECIDED,
    AudioFeatures,
    FeatureError,
    audio_features,
    key_name,
)

RATE = 44100


def _tone(freq: float, seconds: float, amplitude: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _midi_hz(note: int) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def _progression(tonic: int, minor: bool, bpm: float, bars: int = 8, rate: int = RATE) -> np.ndarray:
    """I-IV-V-I (i-iv-V-i) triads with a bass note, a decaying click on every beat: known key, mode and tempo."""
    beat = 60.0 / bpm
    third = 3 if minor else 4
    chords = [(0, third, 7), (5, 5 + third, 12), (7, 11, 14), (0, third, 7)]
    out = np.zeros(int(bars * 4 * beat * rate) + rate, dtype=np.float32)
    env = np.exp(-np.arange(int(beat * rate)) / (0.3 * beat * rate)).astype(np.float32)
    click = (np.random.default_rng(0).standard_normal(int(0.02 * rate)) * np.exp(-np.arange(int(0.02 * rate)) / 100)).astype(np.float32)
    for b in range(bars * 4):
        start = int(b * beat * rate)
        chord = chords[(b // 4) % 4]
        for n in chord:
            note = _tone(_midi_hz(60 + tonic + n), beat, 0.08, rate)[: len(env)] * env[: int(beat * rate)]
            out[start : start + len(note)] += note
        bass = _tone(_midi_hz(36 + tonic + chord[0]), beat, 0.15, rate) * env[: int(beat * rate)]
        out[start : start + len(bass)] += bass
        out[start : start + len(click)] += 0.5 * click
    return out


def test_loudness_of_the_bs1770_reference_tone():
    # BS.1770: a 997 Hz sine at 0 dBFS in one channel reads -3.01 LKFS; at -20 dBFS, -23.01.
    f = audio_features(_tone(997.0, 10.0, 0.1), RATE)
    assert f.loudness == pytest.approx(-23.01, abs=0.05)
    assert f.duration_ms == 10000


def test_stereo_is_measured_as_stereo_for_loudness():
    mono = _tone(997.0, 5.0, 0.1)
    both = audio_features(np.stack([mono, mono], axis=1), RATE)
    assert both.loudness == pytest.approx(-23.01 + 10 * np.log10(2), abs=0.05)  # two channels: twice the power


@pytest.mark.parametrize(("tonic", "minor", "bpm"), [(0, False, 120.0), (9, True, 96.0), (7, False, 140.0)])
def test_tempo_key_and_mode_of_a_synthesised_progression(tonic, minor, bpm):
    f = audio_features(_progression(tonic, minor, bpm), RATE)
    assert key_name(f.key, f.mode) == key_name(tonic, MINOR if minor else MAJOR)
    assert f.tempo == pytest.approx(bpm, rel=0.04)
    assert 0.0 < f.tempo_confidence <= 1.0 and 0.0 < f.key_confidence <= 1.0


def test_any_rate_and_shape():
    y = _progression(0, False, 120.0, rate=48000)
    f = audio_features(np.stack([y, y], axis=1), 48000)
    assert (f.key, f.mode) == (0, MAJOR)
    assert f.tempo == pytest.approx(120.0, rel=0.04)


def test_silence_is_undecided_and_at_the_loudness_gate():
    f = audio_features(np.zeros(3 * RATE, dtype=np.float32), RATE)
    assert (f.tempo, f.tempo_confidence, f.key, f.mode) == (0.0, 0.0, UNDECIDED, UNDECIDED)
    assert f.loudness == LOUDNESS_FLOOR_LUFS


def test_too_short_for_anything_but_duration():
    f = audio_features(np.zeros(100, dtype=np.float32), RATE)
    assert f.loudness is None and f.key == UNDECIDED and f.tempo == 0.0 and f.duration_ms == 2


def test_to_dict_is_json():
    f = audio_features(_tone(440.0, 2.0, 0.1), RATE)
    d = json.loads(json.dumps(f.to_dict()))
    assert set(d) == {"tempo", "tempo_confidence", "key", "mode", "key_confidence", "loudness", "duration_ms"}
    assert AudioFeatures(**d) == f


@pytest.mark.parametrize(
    ("samples", "rate", "message"),
    [
        (np.zeros(RATE, dtype=np.int16), RATE, "floats"),
        (np.zeros((RATE, 7), dtype=np.float32), RATE, "channels"),
        (np.zeros((2, 3, 4), dtype=np.float32), RATE, "shape"),
        (np.full(RATE, np.nan, dtype=np.float32), RATE, "NaN"),
        (np.zeros(RATE, dtype=np.float32), 0, "sample_rate"),
    ],
)
def test_bad_input_is_refused_with_the_reason(samples, rate, message):
    with pytest.raises(FeatureError, match=message):
        audio_features(samples, rate)

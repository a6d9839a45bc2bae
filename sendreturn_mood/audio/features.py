"""Tempo, key, mode, loudness and duration of a piece of audio: the track-level features a recommender used to get
from Spotify's audio-features endpoint, computed from the audio alone with the field's libraries.

- tempo: librosa's onset strength and its tempo estimator (the autocorrelation tempogram with librosa's default
  log-normal prior around 120 BPM). `tempo_confidence` is the mean-removed autocorrelation of the onset envelope one
  beat period apart (a Pearson correlation, clipped to 0..1): near 1 when the onsets repeat at that period, near 0
  when nothing repeats (ambient pads, speech, silence).
- key and mode: librosa's chroma summed over the whole piece, correlated with the 24 rotations of a published key
  profile (the Krumhansl-Schmuckler method); `key_confidence` is the winning correlation, clipped to 0..1, and below
  KEY_MIN_CONFIDENCE the key is reported as undecided (-1). Which chroma and which profile were chosen, and the
  threshold, come from the measurement in training/keytempo.py (docs/evaluation/features.md).
- loudness: integrated loudness (ITU-R BS.1770 / EBU R128, gated) through pyloudnorm, on the audio as decoded (its own
  rate and channels: downmixing first would change the measure).

Everything else runs on a mono downmix resampled to ANALYSIS_RATE, which changes neither tempo nor key (both live far
below 5 kHz) and keeps them under a second of CPU for a 4-minute song (1.5-2 s with its 44.1 kHz stereo loudness,
docs/evaluation/features.md).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import numpy as np
import soxr

from ..errors import SendReturnError

ANALYSIS_RATE = 22050  # librosa's own default rate: its onset and chroma defaults are tuned for it
HOP = 512  # onset-envelope hop (23 ms at 22.05 kHz): librosa's default for beat tracking
CHROMA_HOP = 2048  # chroma hop (93 ms): key needs no finer time resolution, and it is 4x cheaper than HOP
MIN_ANALYSIS_SECONDS = 1.0  # shorter audio has no measurable tempo or key (reported as undecided)
LOUDNESS_BLOCK_SECONDS = 0.4  # R128's gating block: shorter audio has no integrated loudness (None)
LOUDNESS_FLOOR_LUFS = -70.0  # R128's absolute gate: audio with no block above it (silence) is reported at the gate
MAX_LOUDNESS_CHANNELS = 5  # pyloudnorm's channel weights cover L, R, C, Ls, Rs
TUNING_SECONDS = 30.0  # the excerpt the tuning is estimated from
KEY_MIN_CONFIDENCE = 0.5  # below this correlation the key is undecided (-1): 0.004 of the renders, 0.13 of real clips

MAJOR, MINOR, UNDECIDED = 1, 0, -1
PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# Published key profiles, tonic first (index 0 = the tonic, 1 = a semitone above, ...): (major, minor).
KEY_PROFILES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # Krumhansl & Kessler (1982), probe-tone ratings; the profiles of the Krumhansl-Schmuckler algorithm.
    "krumhansl": (
        (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88),
        (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17),
    ),
    # Temperley (1999), "What's key for key? The Krumhansl-Schmuckler key-finding algorithm reconsidered".
    "temperley": (
        (5.0, 2.0, 3.5, 2.0, 4.5, 4.0, 2.0, 4.5, 2.0, 3.5, 1.5, 4.0),
        (5.0, 2.0, 3.5, 4.5, 2.0, 4.0, 2.0, 4.5, 3.5, 2.0, 1.5, 4.0),
    ),
    # Temperley (2005, MIREX key finding), pitch-class frequencies of the Kostka-Payne corpus.
    "temperley2005": (
        (0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400),
        (0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330),
    ),
    # Faraldo, Gomez, Jorda & Herrera (2016), "Key estimation in electronic dance music" (EDMA, from audio).
    "edma": (
        (0.16519551, 0.04749026, 0.08293076, 0.06687112, 0.09994645, 0.09274123,
         0.05294487, 0.13159476, 0.05218986, 0.07443653, 0.06940723, 0.0642515),
        (0.17235348, 0.05336489, 0.0761009, 0.10043649, 0.05621498, 0.08527853,
         0.0497915, 0.13451001, 0.07458916, 0.05003023, 0.09187879, 0.05545106),
    ),
}
CHROMA_KINDS = ("cqt", "stft")
KEY_PROFILE = "edma"  # the profile and chroma with the best MIREX key score on the renders: docs/evaluation/features.md
CHROMA_KIND = "cqt"


class FeatureError(SendReturnError, ValueError):
    """Audio these features cannot be computed from (wrong shape, rate, or non-finite samples)."""


@dataclasses.dataclass(frozen=True)
class AudioFeatures:
    """A piece of audio's track-level features. `key` and `mode` are -1 together when the key is undecided (a mode
    without a key is not a measurement); `tempo` is 0.0 with confidence 0.0 when the audio is too short or has no
    onsets; `loudness` is None when the audio is shorter than one R128 gating block."""

    tempo: float  # beats per minute
    tempo_confidence: float  # 0..1
    key: int  # pitch class 0 (C) .. 11 (B), or -1
    mode: int  # 1 major, 0 minor, or -1 with an undecided key
    key_confidence: float  # 0..1
    loudness: float | None  # integrated loudness, LUFS (EBU R128), at least LOUDNESS_FLOOR_LUFS
    duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Key:
    key: int
    mode: int
    confidence: float


def audio_features(samples: np.ndarray, sample_rate: int) -> AudioFeatures:
    """Features of `samples` (float, [frames] or [frames, channels], at `sample_rate`)."""
    x = _checked(samples, sample_rate)
    duration_ms = int(round(1000.0 * x.shape[0] / sample_rate))
    loudness = integrated_loudness(x, sample_rate)
    y = analysis_signal(x, sample_rate)
    if len(y) < MIN_ANALYSIS_SECONDS * ANALYSIS_RATE:
        return AudioFeatures(0.0, 0.0, UNDECIDED, UNDECIDED, 0.0, loudness, duration_ms)
    tempo, tempo_confidence = estimate_tempo(onset_envelope(y))
    key = estimate_key(chroma_profile(y, CHROMA_KIND), KEY_PROFILE)
    return AudioFeatures(
        round(tempo, 2), round(tempo_confidence, 3), key.key, key.mode, round(key.confidence, 3), loudness, duration_ms
    )


def _checked(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    x = np.asarray(samples)
    if not np.issubdtype(x.dtype, np.floating):
        raise FeatureError(f"samples must be floats in [-1, 1], got {x.dtype}")
    if x.ndim not in (1, 2) or (x.ndim == 2 and not 1 <= x.shape[1] <= MAX_LOUDNESS_CHANNELS):
        raise FeatureError(f"samples must be [frames] or [frames, 1..{MAX_LOUDNESS_CHANNELS} channels], got shape {x.shape}")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise FeatureError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if not np.isfinite(x).all():
        raise FeatureError("samples contain NaN or infinity")
    return x


def analysis_signal(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at ANALYSIS_RATE: what tempo and key are computed from."""
    if x.ndim == 2:
        mono = x[:, 0].astype(np.float32)  # channel slices summed: a strided mean(axis=1) is several times slower
        for c in range(1, x.shape[1]):
            mono += x[:, c]
        mono /= np.float32(x.shape[1])
    else:
        mono = x.astype(np.float32, copy=False)
    if sample_rate == ANALYSIS_RATE:
        return mono
    return soxr.resample(mono, sample_rate, ANALYSIS_RATE, quality="HQ").astype(np.float32, copy=False)


def integrated_loudness(x: np.ndarray, sample_rate: int) -> float | None:
    """Gated integrated loudness in LUFS (pyloudnorm's BS.1770-4 meter), floored at R128's absolute gate."""
    if x.shape[0] < LOUDNESS_BLOCK_SECONDS * sample_rate:
        return None
    import pyloudnorm  # imported here: only loudness needs it

    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # the log of a silent block's zero energy: the floor below
        lufs = float(pyloudnorm.Meter(sample_rate, block_size=LOUDNESS_BLOCK_SECONDS).integrated_loudness(
            x.astype(np.float32, copy=False)  # half the memory of float64, same result to 1e-6 dB
        ))
    return round(lufs, 2) if np.isfinite(lufs) and lufs > LOUDNESS_FLOOR_LUFS else LOUDNESS_FLOOR_LUFS


def onset_envelope(y: np.ndarray) -> np.ndarray:
    import librosa

    return librosa.onset.onset_strength(y=y, sr=ANALYSIS_RATE, hop_length=HOP)


def estimate_tempo(envelope: np.ndarray, prior: Any = None) -> tuple[float, float]:
    """(BPM, confidence) from an onset envelope; (0.0, 0.0) when it holds no onsets. `prior` is librosa's (None:
    its log-normal around 120 BPM)."""
    import librosa

    centred = envelope - envelope.mean()
    energy = float(np.dot(centred, centred))
    if energy <= 1e-12 * max(len(centred), 1):
        return 0.0, 0.0
    bpm = float(librosa.feature.tempo(onset_envelope=envelope, sr=ANALYSIS_RATE, hop_length=HOP, prior=prior)[0])
    ac = librosa.autocorrelate(centred) / energy
    lag = 60.0 * ANALYSIS_RATE / (HOP * bpm)  # one beat, in envelope frames (fractional)
    lo, hi = int(np.floor(lag)), int(np.ceil(lag))
    if hi >= len(ac):
        return bpm, 0.0
    return bpm, float(np.clip(max(ac[lo], ac[hi]), 0.0, 1.0))


def chroma_profile(y: np.ndarray, kind: str = CHROMA_KIND) -> np.ndarray:
    """The piece's pitch-class distribution: librosa's chroma (one of CHROMA_KINDS) summed over time, [12]."""
    import librosa

    if kind not in CHROMA_KINDS:
        raise ValueError(f"unknown chroma kind {kind!r} (one of {', '.join(CHROMA_KINDS)})")
    tuning = estimate_tuning(y)
    if kind == "cqt":
        with warnings.catch_warnings():
            # a few seconds of audio are shorter than the lowest octave's filter after the CQT's downsampling: that
            # octave is then measured on the zero-padded signal, which is what the warning says
            warnings.filterwarnings("ignore", message="n_fft=.* is too large for input signal", category=UserWarning)
            chroma = librosa.feature.chroma_cqt(y=y, sr=ANALYSIS_RATE, hop_length=CHROMA_HOP, tuning=tuning)
    else:
        chroma = librosa.feature.chroma_stft(
            y=y, sr=ANALYSIS_RATE, hop_length=CHROMA_HOP, n_fft=4 * CHROMA_HOP, tuning=tuning
        )
    return chroma.sum(axis=1)


def estimate_tuning(y: np.ndarray) -> float:
    """Deviation from A440 in fractions of a chroma bin (librosa's pitch-track estimate), from at most
    TUNING_SECONDS in the middle of the piece: a band's tuning does not drift, and on the whole of a 4-minute song
    the estimate costs more than all the rest of the analysis."""
    import librosa

    n = int(TUNING_SECONDS * ANALYSIS_RATE)
    start = max(0, (len(y) - n) // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "empty frequency set": nothing pitched, and 0.0 is the answer
        return float(librosa.estimate_tuning(y=y[start : start + n], sr=ANALYSIS_RATE, bins_per_octave=12))


@functools.lru_cache(maxsize=None)
def _profile_matrix(profile: str) -> np.ndarray:
    major, minor = (np.asarray(p, dtype=np.float64) for p in KEY_PROFILES[profile])
    rows = [np.roll(major, k) for k in range(12)] + [np.roll(minor, k) for k in range(12)]
    m = np.stack(rows)
    m -= m.mean(axis=1, keepdims=True)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def key_correlations(chroma: np.ndarray, profile: str = KEY_PROFILE) -> np.ndarray:
    """Pearson correlation of a [12] chroma with the 24 keys: rows 0-11 C..B major, 12-23 C..B minor."""
    if profile not in KEY_PROFILES:
        raise ValueError(f"unknown key profile {profile!r} (one of {', '.join(KEY_PROFILES)})")
    c = np.asarray(chroma, dtype=np.float64) - np.mean(chroma)
    norm = np.linalg.norm(c)
    if norm <= 1e-12:
        return np.zeros(24)
    return _profile_matrix(profile) @ (c / norm)


def estimate_key(chroma: np.ndarray, profile: str = KEY_PROFILE, min_confidence: float = KEY_MIN_CONFIDENCE) -> Key:
    """The best-correlated key; undecided (-1, -1) when even the best correlation is below `min_confidence`."""
    r = key_correlations(chroma, profile)
    best = int(np.argmax(r))
    confidence = float(np.clip(r[best], 0.0, 1.0))
    if confidence < min_confidence or confidence == 0.0:
        return Key(UNDECIDED, UNDECIDED, confidence)
    return Key(best % 12, MAJOR if best < 12 else MINOR, confidence)


def key_name(key: int, mode: int) -> str:
    """'A minor', 'Eb major', or 'undecided'."""
    if key == UNDECIDED:
        return "undecided"
    return f"{PITCH_CLASSES[key]} {'major' if mode == MAJOR else 'minor'}"

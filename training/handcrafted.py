"""Hand-crafted librosa descriptors of clips and of 3 s windows, cached: the features of the non-model baselines.

MFCC and delta-MFCC, spectral centroid/bandwidth/rolloff/flatness/contrast, chroma, RMS, zero-crossing rate and
onset strength (mean and std over a segment) plus the segment's tempo; one vector per whole clip and one per 3 s
window every 1.5 s (the runtime's geometry). Cached under <cache>/handcrafted/<recipe hash>/.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from training.manifest import Item
from training.recipe import RUNTIME_HOP_SECONDS


@dataclass(frozen=True)
class HandcraftedRecipe:
    """Everything that changes the hand-crafted features; its hash names the cache folder."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256  # the model front end's hop, so windows fall on the same frames
    n_mfcc: int = 20
    n_mels: int = 64
    window_seconds: float = 3.0
    hop_seconds: float = RUNTIME_HOP_SECONDS
    version: int = 2  # 2: chroma with tuning=0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def window_frames(self) -> int:
        return int(round(self.window_seconds * self.sample_rate / self.hop_length))

    @property
    def hop_frames(self) -> int:
        return int(round(self.hop_seconds * self.sample_rate / self.hop_length))


FRAME_FEATURES = (
    [f"mfcc{i}" for i in range(20)] + [f"dmfcc{i}" for i in range(20)]
    + ["centroid", "bandwidth", "rolloff", "flatness", "zcr", "rms"]
    + [f"contrast{i}" for i in range(7)] + [f"chroma{i}" for i in range(12)] + ["onset"]
)
FEATURE_NAMES = [f"{f}_mean" for f in FRAME_FEATURES] + [f"{f}_std" for f in FRAME_FEATURES] + ["tempo"]


def frame_features(y: np.ndarray, r: HandcraftedRecipe) -> np.ndarray:
    """Frame-level descriptors [len(FRAME_FEATURES), frames] from one STFT (frames: 1 + len(y) // hop)."""
    import librosa

    S = np.abs(librosa.stft(y, n_fft=r.n_fft, hop_length=r.hop_length, center=True))
    power = S**2
    mel = librosa.feature.melspectrogram(S=power, sr=r.sample_rate, n_mels=r.n_mels)
    log_mel = librosa.power_to_db(mel)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=r.n_mfcc)
    width = min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2)) if mfcc.shape[1] >= 3 else 0
    dmfcc = librosa.feature.delta(mfcc, width=width) if width >= 3 else np.zeros_like(mfcc)
    sr = r.sample_rate
    rows = [
        mfcc,
        dmfcc,
        librosa.feature.spectral_centroid(S=S, sr=sr),
        librosa.feature.spectral_bandwidth(S=S, sr=sr),
        librosa.feature.spectral_rolloff(S=S, sr=sr),
        librosa.feature.spectral_flatness(S=S),
        librosa.feature.zero_crossing_rate(y, frame_length=r.n_fft, hop_length=r.hop_length, center=True),
        librosa.feature.rms(S=S, frame_length=r.n_fft),
        librosa.feature.spectral_contrast(S=S, sr=sr, fmin=100.0, n_bands=6),
        librosa.feature.chroma_stft(S=power, sr=sr, tuning=0.0),  # A440: tuning estimation is noisy (and warns on silence)
        librosa.onset.onset_strength(S=log_mel, sr=sr)[None, :],
    ]
    n = min(x.shape[1] for x in rows)
    return np.concatenate([x[:, :n] for x in rows], axis=0).astype(np.float32)


def segment_vector(frames: np.ndarray, r: HandcraftedRecipe) -> np.ndarray:
    """Mean and std of every frame descriptor over a segment, plus the segment's tempo."""
    import librosa

    onset = frames[-1]
    if len(onset) >= 8 and onset.any():
        tempo = float(librosa.feature.tempo(onset_envelope=onset, sr=r.sample_rate, hop_length=r.hop_length)[0])
    else:
        tempo = 0.0
    return np.concatenate([frames.mean(axis=1), frames.std(axis=1), [tempo]]).astype(np.float32)


def window_starts(n_frames: int, r: HandcraftedRecipe) -> np.ndarray:
    """Window start frames: every hop, and at least one window (a short clip is one window)."""
    if n_frames <= r.window_frames:
        return np.array([0])
    return np.arange(0, n_frames - r.window_frames + 1, r.hop_frames)


def clip_features(file: str, r: HandcraftedRecipe, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(clip vector, window vectors [n_windows, d]) of one file, cached by recipe and file."""
    from training.cache import cache_dir, file_key, load_audio

    path = cache_dir(cache) / "handcrafted" / r.key() / f"{file_key(file)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["clip"], z["windows"]
    y = load_audio(file, r.sample_rate, cache)
    frames = frame_features(y, r)
    clip = segment_vector(frames, r)
    windows = np.stack([segment_vector(frames[:, s : s + r.window_frames], r) for s in window_starts(frames.shape[1], r)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, clip=clip, windows=windows)
    tmp.replace(path)
    return clip, windows


def dataset_features(items: Sequence[Item], r: HandcraftedRecipe, cache: Path | None, progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    from tqdm import tqdm

    return [clip_features(it.file, r, cache) for it in tqdm(items, desc="hand-crafted features", disable=not progress, file=sys.stderr)]

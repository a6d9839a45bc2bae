"""Decoded audio and log-mel features of datasets, cached on disk with the runtime's own front end.

Training must see exactly the features the server computes, so this module never re-implements the front end: it
decodes audio once (cached as float32 .npy at the model rate), resamples with the runtime's resampler and calls
`sendreturn_mood.audio.frontend.log_mel`. Features are cached under `<cache>/logmel/<FrontEndSpec.key()>/`, so a change
of recipe can never silently reuse stale features. Datasets are named like everywhere in `training`: a manifest CSV,
a folder in the ROOT/<label>/ layout, or the shorthands `4q` / `emotify` / `musifeast` for the shared research data.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from sendreturn_mood.audio.files import decode as decode_file
from sendreturn_mood.audio.frontend import FrontEndSpec, log_mel
from sendreturn_mood.audio.resample import resample
from training.manifest import (REPO, SHARED_DATA, Item, ManifestError, read_4q, read_emotify, read_folder, read_manifest,
                               read_musifeast)

DEFAULT_CACHE = REPO / "cache"
SHORTHANDS = {"4q": "moods-4q", "emotify": "emotify", "musifeast": "musifeast17"}
_READERS = {"4q": read_4q, "emotify": read_emotify, "musifeast": read_musifeast}


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The feature cache: explicit path, else $SENDRETURN_CACHE, else `cache/` in the repository (gitignored)."""
    return Path(path or os.environ.get("SENDRETURN_CACHE") or DEFAULT_CACHE)


def resolve_dataset(name: str) -> list[Item]:
    """`4q`, `emotify`, `musifeast`, a manifest CSV or a ROOT/<label>/ folder -> items. Missing shared data is an error here."""
    if name in SHORTHANDS:
        root = SHARED_DATA / SHORTHANDS[name]
        if not (root / "labels.csv").is_file():
            raise ManifestError(f"{name}: the shared research data is not at {root}")
        return _READERS[name](root)
    path = Path(name)
    if path.is_dir():
        return read_folder(path)
    if path.is_file():
        return read_manifest(path)
    raise ManifestError(f"{name}: not '4q', 'emotify', 'musifeast', a manifest CSV or a ROOT/<label>/ folder")


def file_key(file: str | os.PathLike[str]) -> str:
    """Cache key of an audio file: absolute path, size and mtime (an edited file is decoded again)."""
    p = Path(file).resolve()
    st = p.stat()
    return hashlib.sha1(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]


def atomic_save(path: Path, arr: np.ndarray | None = None, **arrays: np.ndarray) -> None:
    """Write one array (.npy) or several (.npz) via a temporary name, so a killed run never leaves a truncated entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".npz" if arrays else ".npy"
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp{suffix}")
    if arrays:
        np.savez(tmp, **arrays)
    else:
        np.save(tmp, arr)
    os.replace(tmp, path)


def decode(file: str | os.PathLike[str], sample_rate: int) -> np.ndarray:
    """Any soundfile-readable file (wav, flac, ogg, mp3) -> mono float32 at `sample_rate` (runtime resampler)."""
    y, sr = decode_file(Path(file))  # what the runtime decodes: up to where the decoder stops, never an estimate
    if sr != sample_rate:
        y = resample(y, sr, sample_rate)
    return np.ascontiguousarray(y, dtype=np.float32)


def load_audio(file: str | os.PathLike[str], sample_rate: int, cache: Path | None = None) -> np.ndarray:
    """Decoded mono audio at `sample_rate`, cached under <cache>/audio/<rate>/."""
    path = cache_dir(cache) / "audio" / str(sample_rate) / f"{file_key(file)}.npy"
    if path.is_file():
        return np.load(path)
    y = decode(file, sample_rate)
    atomic_save(path, y)
    return y


def clip_logmel(file: str | os.PathLike[str], spec: FrontEndSpec, cache: Path | None = None) -> np.ndarray:
    """Log-mel [n_mels, frames] of a whole clip, cached under <cache>/logmel/<spec.key()>/."""
    path = cache_dir(cache) / "logmel" / spec.key() / f"{file_key(file)}.npy"
    if path.is_file():
        return np.load(path)
    mel = log_mel(load_audio(file, spec.sample_rate, cache), spec)
    atomic_save(path, mel)
    return mel


def dataset_logmels(items: Iterable[Item], spec: FrontEndSpec, cache: Path | None = None, progress: bool = True) -> list[np.ndarray]:
    """Log-mels of every item, in order (computed once, then read from the cache)."""
    from tqdm import tqdm

    items = list(items)
    return [clip_logmel(it.file, spec, cache) for it in tqdm(items, desc="log-mel", disable=not progress, file=sys.stderr)]

"""Pieces every benchmark shares: one BLAS thread, CPU clocks, medians, and the test signal sources send."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

FRAME_SECONDS = 0.1  # what the issue measures: 100 ms websocket frames


def one_blas_thread() -> None:
    """Pin BLAS/OpenMP to one thread, so a number means 'one core' (the server does the same at start-up)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def cpu_seconds_of(fn: Callable[[], Any]) -> float:
    """CPU seconds this thread spends in `fn()` (thread_time: other threads' and processes' work is not counted)."""
    t = time.thread_time()
    fn()
    return time.thread_time() - t


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def music_like(seconds: float, rate: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """[samples, channels] float32 in [-1, 1]: tones with vibrato and noise bursts. Cost of the DSP does not depend on
    what the audio is, but silence or a pure tone could hit fast paths, so it is broadband and changing."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    y = np.zeros((t.size, channels), dtype=np.float64)
    for c in range(channels):
        for f in (110.0, 220.0, 330.0, 440.0, 1320.0, 5000.0):
            y[:, c] += 0.08 * np.sin(2 * np.pi * f * t * (1 + 0.002 * np.sin(2 * np.pi * 0.3 * t)) + rng.uniform(0, 6))
        y[:, c] += 0.1 * rng.standard_normal(t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.0 * t) ** 2)
    return np.clip(y, -1, 1).astype(np.float32)


def pcm_frames(y: np.ndarray, rate: int, encoding: str, frame_seconds: float = FRAME_SECONDS) -> list[bytes]:
    """Interleaved [samples, channels] audio -> the websocket binary frames a source would send (pre-encoded)."""
    from ..audio.pcm import encode

    step = int(round(rate * frame_seconds))
    return [encode(y[i : i + step].ravel(), encoding) for i in range(0, len(y), step)]


def write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1) + "\n")

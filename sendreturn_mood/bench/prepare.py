"""Wall time to prepare a track: decode + `analyze`'s whole path, as a PUT of the file does it.

    python -m sendreturn_mood.bench prepare --minutes 4

The song is real music when ../shared/data is there (clips of moods-4q played back to back, resampled to 44.1 kHz
stereo and encoded as an MP3, as a backend's file would be; else made music-like audio), prepared `--repeats` times
by the server's own TrackPreparer (one analysis thread, one BLAS thread) with a fresh store each time so nothing is
cached. Reports the median and every run, with the machine's load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import median, music_like, one_blas_thread, write_json

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "moods-4q"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=4.0, help="length of the song (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="runs; the median is reported (default 3)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")


def song_mp3(minutes: float) -> tuple[bytes, str]:
    """(an MP3 file's bytes, what it is)."""
    import soundfile as sf

    from ..audio.files import decode
    from ..audio.resample import resample

    seconds = minutes * 60
    clips = sorted(SHARED.glob("Q*/*.mp3"))
    if clips:
        parts, total = [], 0
        for clip in clips:
            y, rate = decode(clip)
            parts.append(y)
            total += y.size
            if total >= seconds * rate:
                break
        mono = np.concatenate(parts)[: int(seconds * rate)]
        y44 = resample(mono, rate, 44100)
        stereo = np.stack([y44, y44], axis=1)
        what = f"{len(parts)} real clips of moods-4q back to back, 44.1 kHz stereo MP3"
    else:
        stereo = music_like(seconds, 44100, 2, seed=3)
        what = "made music-like audio, 44.1 kHz stereo MP3 (../shared/data not found)"
    buf = io.BytesIO()
    sf.write(buf, stereo, 44100, format="MP3")
    return buf.getvalue(), what


async def _prepare_once(data: bytes, warm: bytes) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one prepare, after a warm-up prepare of a short file (a
    server pays the one-off costs, imports and the mel filterbank, at start-up)."""
    from ..broker.tracks import TrackStore
    from ..config import load_config
    from ..model.contract import MoodModel
    from ..server.prepared import TrackPreparer

    config = load_config(None, {"logging.level": "warning"})
    preparer = TrackPreparer(MoodModel(config.model.path), config, TrackStore(10, 10, 3600))
    await preparer.prepare("bench", "warm", warm)
    t, cpu = time.perf_counter(), time.process_time()
    track = await preparer.prepare("bench", "song", data)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    preparer.close()
    assert track.analysis.updates > 0
    return wall, cpu


def run(args: argparse.Namespace) -> int:
    one_blas_thread()
    data, what = song_mp3(args.minutes)
    warm, _ = song_mp3(0.1)
    runs = [asyncio.run(_prepare_once(data, warm)) for _ in range(args.repeats)]
    walls = [w for w, _ in runs]
    out: dict[str, Any] = {
        "command": f"python -m sendreturn_mood.bench prepare --minutes {args.minutes:g} --repeats {args.repeats}",
        "song": what,
        "minutes": args.minutes,
        "file_mb": round(len(data) / 2**20, 2),
        "prepare_seconds_median": round(median(walls), 3),
        "prepare_seconds_runs": [round(w, 3) for w in walls],
        # decode and analysis run in two threads: CPU can exceed wall on an idle machine, and wall exceeds CPU on
        # a busy one (the load average says how busy)
        "cpu_seconds_median": round(median([c for _, c in runs]), 3),
        "machine_load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out, indent=2))
    write_json(args.json, out)
    return 0

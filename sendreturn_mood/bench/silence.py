"""Window levels of real music, to choose `analysis.silence_db`: every window the server would cut from the clips in
../shared/data (every 4th 4Q clip, every 2nd Emotify clip), its level as level.window_level_db reads it from the
log-mel, and the levels of white noise and silence for reference. Not a test.

    python -m sendreturn_mood.bench silence [--every-4q 4] [--every-emotify 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..room.offline import read_blocks
from ..config import load_config
from ..audio.level import window_level_db
from ..model.contract import MoodModel
from ..audio.pipeline import AnalysisStream, window_plan
from .common import one_blas_thread

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--every-4q", type=int, default=4, help="every Nth 4Q clip (default: 4)")
    p.add_argument("--every-emotify", type=int, default=2, help="every Nth Emotify clip (default: 2)")


def run(args: argparse.Namespace) -> int:
    one_blas_thread()
    info = MoodModel(None).info
    plan = window_plan(info, load_config())
    files = sorted(DATA.glob("moods-4q/**/*.mp3"))[:: args.every_4q] + sorted(DATA.glob("emotify/**/*.mp3"))[:: args.every_emotify]
    if not files:
        raise SystemExit(f"no clips under {DATA}")
    levels = []
    for f in files:
        rate, blocks = read_blocks(f)
        stream = AnalysisStream(info.frontend, rate, plan)
        windows = [w for b in blocks for w in stream.push(b)] + stream.finish()
        levels += [window_level_db(w.logmel, info.frontend) for w in windows]
    lv = np.array(levels)
    print(f"{len(files)} clips, {lv.size} windows: min {lv.min():.1f} dB, percentiles 0.1/1/5/50: "
          + " / ".join(f"{v:.1f}" for v in np.percentile(lv, [0.1, 1, 5, 50])))
    rng = np.random.default_rng(0)
    for db in (-40, -60, -80):
        stream = AnalysisStream(info.frontend, 16000, plan)
        w = stream.push((10 ** (db / 20) * rng.standard_normal(16000 * 4)).astype(np.float32))[0]
        print(f"white noise at {db} dBFS RMS: {window_level_db(w.logmel, info.frontend):.1f} dB")
    stream = AnalysisStream(info.frontend, 16000, plan)
    print(f"digital silence: {window_level_db(stream.push(np.zeros(64000, np.float32))[0].logmel, info.frontend):.1f} dB")
    return 0

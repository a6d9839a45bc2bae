"""Measure a model's inference time per window on one onnxruntime thread (median of many runs).

The real-time budget is per window: the server runs one window per room per hop, batched across rooms. So this
reports milliseconds per window at batch 1 (one room) and at larger batches (many rooms), each the median of
`--runs` timed calls after warm-up, with BLAS pinned to one thread so the number means "one core".

The machines we share are noisy (the same model's median moves by 2x between runs), so `--compare OTHER.onnx`
times the two models alternately, call by call, in the same run, and reports the ratio of their medians: the
number to quote when saying one model costs more than another.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

WARMUP = 10


def time_calls(models: list, x: np.ndarray, runs: int) -> tuple[list[float], list[float]]:
    """(median, p90) ms per window of each model on `x`, the models called alternately (one model: plain repetition)."""
    for _ in range(WARMUP):
        for m in models:
            m.predict(x)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for k, m in enumerate(models):
            t = time.perf_counter()
            m.predict(x)
            times[k].append(time.perf_counter() - t)
    return [float(np.median(t) / len(x) * 1000) for t in times], [float(np.percentile(t, 90) / len(x) * 1000) for t in times]


def _window(model, batch: int) -> np.ndarray:
    n_mels, frames = model.info.frontend.n_mels, model.info.patch_frames
    return (np.random.default_rng(0).random((batch, n_mels, frames)) * 3).astype(np.float32)


def bench(path: str | os.PathLike[str] | None, batches: list[int], runs: int, threads: int = 1) -> dict:
    from sendreturn_mood.model import MoodModel

    model = MoodModel(path, threads=threads)
    result = {"model": str(model.path), "name": model.info.name, "threads": threads, "n_mels": model.info.frontend.n_mels,
              "frames": model.info.patch_frames, "runs": runs, "ms_per_window": {}}
    for b in batches:
        (median,), (p90,) = time_calls([model], _window(model, b), runs)
        result["ms_per_window"][str(b)] = {"median": median, "p90": p90}
    return result


def compare(path: str | os.PathLike[str] | None, other: str | os.PathLike[str], batch: int, runs: int, threads: int = 1) -> dict:
    """Both models timed alternately on the same input: median ms/window of each and the ratio this / other."""
    from sendreturn_mood.model import MoodModel

    models = [MoodModel(path, threads=threads), MoodModel(other, threads=threads)]
    med, _ = time_calls(models, _window(models[0], batch), runs)
    return {"batch": batch, "runs": runs, "models": [str(m.path) for m in models], "median_ms_per_window": med,
            "ratio": med[0] / med[1]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, help="ONNX model (default: the shipped exported_models/mood_cnn.onnx)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes (default 1 16)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per batch size (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--compare", default=None, metavar="OTHER",
                        help="also time OTHER.onnx alternately with the model (batch 1) and report the ratio of medians")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    res = bench(args.model, args.batch, args.runs, args.threads)
    for b, r in res["ms_per_window"].items():
        print(f"{res['name']}: batch {b}: {r['median']:.3f} ms/window median, {r['p90']:.3f} p90 "
              f"({res['threads']} thread, {res['n_mels']}x{res['frames']} log-mel)")
    if args.compare:
        c = compare(args.model, args.compare, 1, args.runs, args.threads)
        res["compare"] = c
        print(f"side by side, batch 1: {c['median_ms_per_window'][0]:.3f} ms ({c['models'][0]}) vs "
              f"{c['median_ms_per_window'][1]:.3f} ms ({c['models'][1]}): ratio {c['ratio']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

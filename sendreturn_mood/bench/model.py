"""The model's cost per window at the batch sizes the server forms, optionally side by side with other models.

    python -m sendreturn_mood.bench model [MODEL] [--compare OTHER.onnx ...] [--batch 1 8 32] [--runs 200]

Each model is loaded as the server loads it (`MoodModel`, `model.threads` intra-op threads, default 1) and fed
log-mel windows of the same synthetic music through the runtime's front end. For every batch size the models are
called alternately, call by call, so they share the machine's noise; reported per model and batch: median wall ms
per window, median CPU ms per window (this thread: with one intra-op thread onnxruntime runs the graph in the
caller's thread), and the ratio of CPU medians to the first model (on a shared machine wall time also counts the
time other processes had the core). Amortised = call time / batch size, softmax
included (what `MoodModel.predict` returns to the inference worker).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from .common import median, music_like, one_blas_thread, write_json

WARMUP = 5


def windows(model: Any, n: int) -> np.ndarray:
    """n log-mel windows [n, n_mels, patch] of synthetic music, cut on the runtime's grid."""
    from ..audio.frontend import log_mel

    spec, patch = model.info.frontend, model.info.patch_frames
    hop = max(1, patch // 2)
    y = music_like((n * hop + patch) * spec.hop_length / spec.sample_rate + 1, spec.sample_rate, channels=1)[:, 0]
    lm = log_mel(y, spec)
    return np.stack([lm[:, i * hop : i * hop + patch] for i in range(n)]).astype(np.float32)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from ..model.contract import MoodModel

    one_blas_thread()
    models = [MoodModel(p, threads=args.threads) for p in [args.model, *args.compare]]
    pool = windows(models[0], max(args.batch) * 4)
    result: dict[str, Any] = {"threads": args.threads, "runs": args.runs,
                              "models": [f"{m.info.name} {m.info.version} ({m.path})" for m in models], "batches": {}}
    for b in args.batch:
        wall: list[list[float]] = [[] for _ in models]
        cpu: list[list[float]] = [[] for _ in models]
        for m in models:
            for _ in range(WARMUP):
                m.predict(pool[:b])
        runs = max(10, args.runs // b)
        for r in range(runs):
            x = pool[(r * b) % (len(pool) - b + 1) :][:b]
            for k, m in enumerate(models):
                t, c = time.perf_counter(), time.thread_time()
                m.predict(x)
                cpu[k].append((time.thread_time() - c) / b * 1000)
                wall[k].append((time.perf_counter() - t) / b * 1000)
        med, cmed = [median(w) for w in wall], [median(c) for c in cpu]
        result["batches"][str(b)] = {
            "calls": runs,
            "wall_ms_per_window": [round(v, 4) for v in med],
            "cpu_ms_per_window": [round(v, 4) for v in cmed],
            "cpu_ratio_to_first": [round(v / cmed[0], 3) for v in cmed],
        }
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="ONNX model (default: the shipped exported_models/mood_cnn.onnx)")
    p.add_argument("--compare", nargs="*", default=[], metavar="OTHER", help="models timed alternately with MODEL")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2, 8, 32], help="batch sizes (default 1 2 8 32: 2 is about what the server forms at 200-400 rooms)")
    p.add_argument("--runs", type=int, default=400, help="windows per model and batch size (calls = runs / batch, >= 10)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1, as model.threads)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    res = measure(args)
    print(f"ms per window, amortised over the batch ({res['threads']} intra-op thread, medians, models alternating):")
    for b, r in res["batches"].items():
        for k, name in enumerate(res["models"]):
            ratio = f"  {r['cpu_ratio_to_first'][k]:.2f}x the first's CPU" if k else ""
            print(f"  batch {b:>3}: {r['wall_ms_per_window'][k]:7.3f} ms wall  {r['cpu_ms_per_window'][k]:7.3f} ms CPU  {name}{ratio}")
    write_json(args.json, res)
    return 0

"""The audio path's CPU per room-second: ours (streaming) against the naive per-hop recompute, side by side.

    python -m sendreturn_mood.bench audio [--seconds 60] [--repeats 7] [--rate 48000] [--channels 2]

A room's source sends pre-encoded PCM frames (default 48 kHz stereo s16le, 100 ms each). Both paths decode every
frame (`pcm.decode`) and cut the same windows (the shipped model's recipe and patch, the default hop):

- ours: `AnalysisStream.push` per frame (streaming resampler, streaming log-mel, ring buffer of frames);
- naive: keep the raw mono audio; every hop, resample the last window with soxr and compute
  `librosa.feature.melspectrogram` of it again (what a straightforward implementation does).

Each repeat runs both over the same frames, alternating which goes first, timed with this thread's CPU clock and
BLAS pinned to one thread. Reported: medians over repeats of CPU ms per room-second (one second of one room's
audio), times real time per core (1000 / that), and naive / ours. `--stages` adds what each piece of ours costs
alone over the same audio, in the pieces the pipeline gives it (decode per frame; resampling per quarter second; the
log-mel front end per 96 frames), and the rest (ours minus their sum: buffering, window copies, Python calls).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from .common import FRAME_SECONDS, cpu_seconds_of, median, music_like, one_blas_thread, pcm_frames, write_json


def _setup(args: argparse.Namespace) -> tuple[Any, Any]:
    """The shipped (or --model) front-end recipe and the server's default window geometry."""
    from ..config import load_config
    from ..model.contract import MoodModel
    from ..audio.pipeline import WindowPlan

    config = load_config(None, {"model.path": args.model, "analysis.hop_seconds": args.hop})
    info = MoodModel(config.model.path).info
    a = config.analysis
    plan = WindowPlan.from_seconds(info.frontend, a.window_seconds or info.window_seconds, a.hop_seconds, a.min_seconds)
    return info.frontend, plan


class NaiveAnalysis:
    """The baseline: raw mono audio kept (bounded), every hop the last window resampled and melspectrogram'd anew."""

    def __init__(self, spec: Any, in_rate: int, plan: Any) -> None:
        self.spec, self.in_rate, self.plan = spec, in_rate, plan
        per_frame = in_rate * spec.hop_length / spec.sample_rate  # input samples per front-end frame
        self.first = int(math.ceil(plan.window_frames * per_frame))
        self.hop = plan.hop_frames * per_frame
        self.keep = self.first + int(math.ceil(spec.n_fft * in_rate / spec.sample_rate))
        self.chunks: list[np.ndarray] = []
        self.held = 0
        self.total = 0
        self.next_due = float(self.first)

    def push(self, mono: np.ndarray) -> list[np.ndarray]:
        import librosa
        import soxr

        self.chunks.append(mono)
        self.held += mono.size
        self.total += mono.size
        out = []
        while self.total >= self.next_due:
            raw = np.concatenate(self.chunks)[-self.keep :]
            self.chunks, self.held = [raw], raw.size
            s = self.spec
            y = soxr.resample(raw, self.in_rate, s.sample_rate, quality="HQ")
            mel = librosa.feature.melspectrogram(
                y=y, sr=s.sample_rate, n_fft=s.n_fft, hop_length=s.hop_length, n_mels=s.n_mels, fmin=s.fmin,
                fmax=s.fmax, htk=s.mel_htk, norm=s.mel_norm, power=s.power, center=True, pad_mode=s.pad_mode,
            )
            logmel = np.log10(s.log_scale * mel + s.log_offset) if s.log == "log10_scaled" else 10 * np.log10(np.maximum(mel, s.amin))
            out.append(logmel[:, -self.plan.window_frames :].astype(np.float32))
            self.next_due += self.hop
        return out


def run_ours(frames: list[bytes], spec: Any, plan: Any, args: argparse.Namespace) -> int:
    from ..audio.pipeline import AnalysisStream

    return _stream(AnalysisStream(spec, args.rate, plan), frames, args)


def run_naive(frames: list[bytes], spec: Any, plan: Any, args: argparse.Namespace) -> int:
    return _stream(NaiveAnalysis(spec, args.rate, plan), frames, args)


def _stream(path: Any, frames: list[bytes], args: argparse.Namespace) -> int:
    """Every frame decoded and pushed, as a source's frames arrive; returns the number of windows cut."""
    from ..audio.pcm import decode

    return sum(len(path.push(decode(f, args.encoding, args.channels))) for f in frames)


def stage_costs(frames: list[bytes], spec: Any, plan: Any, args: argparse.Namespace) -> dict[str, float]:
    """CPU seconds of each piece of ours alone over the same audio, in the pieces the pipeline gives it: decode per
    frame, resampling per `RESAMPLE_CHUNK_SECONDS` of input, the log-mel front end per `EMIT_FRAMES` frames (a
    pipeline without those constants, such as the one before them, gets every piece per frame). What the pipeline
    costs beyond their sum is its own bookkeeping (buffer copies, window copies, Python calls)."""
    from ..audio import pipeline
    from ..audio.frontend import StreamingLogMel
    from ..audio.pcm import decode
    from ..audio.resample import StreamingResampler

    mono = [decode(f, args.encoding, args.channels) for f in frames]
    flat = np.concatenate(mono)
    step = int(args.rate * getattr(pipeline, "RESAMPLE_CHUNK_SECONDS", 0) or 0)
    chunks = [flat[i : i + step] for i in range(0, flat.size, step)] if step else mono
    r = StreamingResampler(args.rate, spec.sample_rate)
    resampled = [r.push(c) for c in chunks]
    emit = getattr(pipeline, "EMIT_FRAMES", 0) * spec.hop_length
    if emit:
        flat16 = np.concatenate(resampled)
        resampled = [flat16[i : i + emit] for i in range(0, flat16.size, emit)]
    out = {"decode": cpu_seconds_of(lambda: [decode(f, args.encoding, args.channels) for f in frames])}
    r = StreamingResampler(args.rate, spec.sample_rate)
    out["resample"] = cpu_seconds_of(lambda: [r.push(c) for c in chunks])
    lm = StreamingLogMel(spec)
    out["log-mel"] = cpu_seconds_of(lambda: [lm.push(x) for x in resampled])
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    one_blas_thread()
    spec, plan = _setup(args)
    y = music_like(args.seconds, args.rate, args.channels)
    frames = pcm_frames(y, args.rate, args.encoding, args.frame_ms / 1000)
    seconds = len(y) / args.rate
    run_ours(frames[: 30], spec, plan, args)  # warm-up: imports, filterbank, librosa's caches
    run_naive(frames[: 60], spec, plan, args)
    ours: list[float] = []
    naive: list[float] = []
    stages: dict[str, list[float]] = {}
    windows = {}
    for k in range(args.repeats):
        order = [("ours", run_ours, ours), ("naive", run_naive, naive)]
        for name, fn, acc in order if k % 2 == 0 else order[::-1]:
            box = {}
            acc.append(cpu_seconds_of(lambda: box.setdefault("n", fn(frames, spec, plan, args))))
            windows[name] = box["n"]
        if args.stages:
            for name, cpu in stage_costs(frames, spec, plan, args).items():
                stages.setdefault(name, []).append(cpu)
    ms = {"ours": 1000 * median(ours) / seconds, "naive": 1000 * median(naive) / seconds}
    result = {
        "audio": {"rate": args.rate, "channels": args.channels, "encoding": args.encoding, "frame_ms": args.frame_ms,
                  "seconds": round(seconds, 3)},
        "window_frames": plan.window_frames, "hop_frames": plan.hop_frames, "repeats": args.repeats,
        "windows": windows,
        "cpu_ms_per_room_second": {k: round(v, 4) for k, v in ms.items()},
        "x_real_time_per_core": {k: round(1000 / v, 1) for k, v in ms.items()},
        "naive_over_ours": round(ms["naive"] / ms["ours"], 2),
    }
    if stages:
        st = {k: 1000 * median(v) / seconds for k, v in stages.items()}
        st["rest of ours"] = ms["ours"] - sum(st.values())
        result["stages_cpu_ms_per_room_second"] = {k: round(v, 4) for k, v in st.items()}
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of audio per repeat (default 60)")
    p.add_argument("--repeats", type=int, default=7, help="repeats of each path, alternating (default 7)")
    p.add_argument("--rate", type=int, default=48000, help="source sample rate (default 48000)")
    p.add_argument("--channels", type=int, default=2, help="source channels (default 2)")
    p.add_argument("--encoding", default="pcm_s16le", choices=["pcm_s16le", "pcm_f32le"])
    p.add_argument("--frame-ms", type=float, default=1000 * FRAME_SECONDS, help="ms of audio per websocket frame (default 100)")
    p.add_argument("--hop", type=float, default=None, help="analysis.hop_seconds (default: the config default)")
    p.add_argument("--model", default=None, help="ONNX model whose front end to use (default: the shipped one)")
    p.add_argument("--stages", action="store_true", help="also time decode, resampling and log-mel alone")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    res = measure(args)
    a = res["audio"]
    print(f"audio path, {a['rate']} Hz x{a['channels']} {a['encoding']} in {a['frame_ms']:g} ms frames, "
          f"{a['seconds']:g} s x {res['repeats']} repeats (median CPU, one thread):")
    for k in ("ours", "naive"):
        print(f"  {k:6s} {res['cpu_ms_per_room_second'][k]:8.4f} ms per room-second  "
              f"{res['x_real_time_per_core'][k]:9.1f}x real time per core  ({res['windows'][k]} windows)")
    print(f"  naive / ours: {res['naive_over_ours']:.2f}x")
    for k, v in res.get("stages_cpu_ms_per_room_second", {}).items():
        print(f"  stage: {k:12s} {v:8.4f} ms per room-second")
    write_json(args.json, res)
    return 0

"""POST /v1/analyze: analyses per second per core (decode included) for a 30 s clip and a 4-minute song, and live
rooms' update latency while analyses run against none.

    python -m sendreturn_mood.bench analyze                      # --rooms 20 --seconds 40 --in-flight 4 --repeats 3

1. Analyses per core: `room.offline.analyze_upload` (what a worker process runs for an upload: MP3 decode, the
   streaming path, the summary, the audio features) on one core (one BLAS thread, the shipped model with one
   thread), `--repeats` times per file after a warm-up; CPU seconds of this process per analysis (median), so
   analyses/s/core = 1 / that. The files are real music when ../shared/data is there (moods-4q clips back to back,
   44.1 kHz stereo MP3, as a backend's file would be; else made music-like audio).
2. Live latency: a `serve` process (as a user starts it, defaults but the per-address limits) with `--rooms` live
   rooms streaming 16 kHz mono in real time (the generator of `bench server`, its own process), one listener each;
   the `latency_ms` of every update the listeners get, p50/p95, first with no analysis, then with `--in-flight`
   uploads of the 4-minute song kept in flight (each one sent again as soon as it is answered), then with none
   again (A-B-A: on a shared machine the first and last phases show how much the load moved by itself). The
   analyses run in the server's analysis worker processes (analyze.workers, SCHED_IDLE), not on its event loop;
   the server process's own CPU seconds per phase say whether the loop itself did more work.

The machine is shared (other jobs run on it): the two latency phases are measured back to back in one run, and the
load average is reported beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .common import median, one_blas_thread, write_json
from .prepare import song_mp3
from .server import generator_process, load_limits, proc_cpu_seconds, spawn_server


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rooms", type=int, default=20, help="live rooms streaming during the latency phases (default 20)")
    p.add_argument("--seconds", type=float, default=40.0, help="length of each latency phase (default 40)")
    p.add_argument("--in-flight", type=int, default=4, help="uploads of the 4-minute song kept in flight (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="analyses per file for the per-core figure (default 3)")
    p.add_argument("--workers", type=int, default=None, help="analyze.workers of the server (default: its default)")
    p.add_argument("--skip-throughput", action="store_true", help="only the latency phases")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")


def throughput(files: dict[str, bytes], repeats: int) -> dict[str, Any]:
    from ..config import load_config
    from ..model.contract import MoodModel
    from ..room.offline import analyze_upload

    config = load_config()
    model = MoodModel(config.model.path, threads=1)
    out: dict[str, Any] = {}
    for name, data in files.items():
        analyze_upload(data, name, model, config, 3600)  # warm-up: imports, filterbanks, the model's first run
        cpu, wall = [], []
        for _ in range(repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            result = analyze_upload(data, name, model, config, 3600)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        out[name] = {
            "audio_seconds": result["duration"],
            "cpu_seconds_median": round(median(cpu), 3),
            "wall_seconds_median": round(median(wall), 3),
            "analyses_per_second_per_core": round(1.0 / median(cpu), 3),
            "cpu_seconds": [round(c, 3) for c in cpu],
        }
    return out


def _keep_in_flight(url: str, data: bytes, n: int, stop: threading.Event, done: list[float], errors: list[str]) -> None:
    """n concurrent uploads of `data`, each sent again when answered, until `stop`."""
    from ..client import Refused, analyze_file

    async def one() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                await analyze_file(url, data, name="song.mp3", timeout=600)
                done.append(time.perf_counter() - t)
            except Refused as e:
                errors.append(f"{e.status} {e.code}")
                await asyncio.sleep(1)

    async def all_of_them() -> None:
        await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(all_of_them())


def latency_phase(port: int, args: argparse.Namespace) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    gen_args = {"seconds": args.seconds, "hop": 1.5, "listeners": 1, "frame_ms": 100.0, "source": "16000:1"}
    start_at = time.time() + max(3.0, args.rooms / 150) + 1.0
    proc = ctx.Process(target=generator_process, args=(list(range(args.rooms)), port, gen_args, start_at, results))
    proc.start()
    stats = results.get(True, args.seconds + 300)
    proc.join(30)
    lat = np.array(stats["latency_ms"] or [np.nan])
    return {
        "updates": int(lat.size), "latency_ms_p50": round(float(np.nanpercentile(lat, 50)), 2),
        "latency_ms_p95": round(float(np.nanpercentile(lat, 95)), 2), "latency_ms_max": round(float(np.nanmax(lat)), 2),
        "seq_gaps": int(stats["gaps"]), "failed_rooms": int(stats["failed_rooms"]), "errors": dict(stats["errors"]),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def live_latency(song: bytes, clip: bytes, args: argparse.Namespace) -> dict[str, Any]:
    from ..client import analyze_file

    config: dict[str, Any] = {"server": load_limits(args.rooms, 1), "logging": {"level": "warning"},
                              "analyze": {"max_concurrent": max(4, args.in_flight)}}
    if args.workers is not None:
        config["analyze"]["workers"] = args.workers
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(yaml.safe_dump(config))
        proc, port = spawn_server(cfg)
        try:
            url = f"ws://127.0.0.1:{port}"
            asyncio.run(analyze_file(url, clip, timeout=300))  # the analysis workers exist in every phase

            def phase() -> dict[str, Any]:
                cpu = proc_cpu_seconds(proc.pid)  # the server process alone (its analysis workers are children)
                out = latency_phase(port, args)
                out["server_process_cpu_seconds"] = round(proc_cpu_seconds(proc.pid) - cpu, 2)
                return out

            before = phase()
            stop, done, errors = threading.Event(), [], []
            loader = threading.Thread(target=_keep_in_flight, args=(url, song, args.in_flight, stop, done, errors))
            loader.start()
            time.sleep(2.0)  # the uploads are in
            busy = phase()
            stop.set()
            loader.join(900)
            busy.update({"analyses_completed": len(done), "analysis_wall_seconds_median": round(median(done), 2) if done else None,
                         "upload_errors": errors[:5]})
            after = phase()  # none again: A-B-A, so a change of the shared machine's load shows as A != A
        finally:
            proc.terminate()
            proc.wait(30)
    return {"rooms": args.rooms, "seconds_per_phase": args.seconds, "in_flight": args.in_flight,
            "analyze_workers": args.workers if args.workers is not None else "default", "no_analyses": before,
            "with_analyses": busy, "no_analyses_again": after}


def run(args: argparse.Namespace) -> int:
    one_blas_thread()
    song, song_what = song_mp3(4.0)
    clip, clip_what = song_mp3(0.5)
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_average_1min_at_start": round(os.getloadavg()[0], 2)},
                              "files": {"30 s clip": clip_what, "4-minute song": song_what}}
    if not args.skip_throughput:
        result["per_core"] = throughput({"30 s clip": clip, "4-minute song": song}, args.repeats)
    result["live_latency"] = live_latency(song, clip, args)
    print(json.dumps(result, indent=2))
    write_json(args.json, result)
    return 0

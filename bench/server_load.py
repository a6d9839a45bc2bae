"""Load benchmark: N rooms streaming real songs into a real server; reports latency_ms and batch sizes.

    python bench/server_load.py --rooms 50 --seconds 30                # real time, tiny test model
    python bench/server_load.py --rooms 200 --seconds 20 --speed 4 --model exported_models/mood_cnn.onnx

The server runs as a separate process (`python -m sendreturn_mood serve --port 0`), so the clients' work does not
distort its latency; the clients (one source per room, optional listeners) run here on one event loop. Each source
streams a different song from ../shared/data/moods-4q (resampled once to --rate, stereo s16le), paced at --speed
times real time in 100 ms frames. Reported: mood updates received, latency_ms median/p95/max (the server's own
measurement: last audio byte of a window -> update sent), updates whose arrival lagged, batch sizes and inference
time (from /metrics), dropped messages, and the server process's CPU time. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "moods-4q"
FRAME_SECONDS = 0.1
LISTEN_RE = re.compile(r"listening on ws://([0-9.]+):(\d+)")


def load_songs(n: int, rate: int, seconds: float) -> list[np.ndarray]:
    """Up to n distinct songs (cycled if fewer), each as interleaved stereo s16le bytes source material."""
    from sendreturn_mood.analyze import read_blocks
    from sendreturn_mood.resample import resample

    files = sorted(DATA.glob("Q*/*.mp3"))
    if not files:
        sys.exit(f"no songs under {DATA} (the benchmark streams real music from ../shared/data)")
    songs = []
    for path in files[: min(n, 16)]:
        sr, blocks = read_blocks(path)
        y = np.concatenate(list(blocks))
        y = resample(y, sr, rate) if sr != rate else y
        while y.size < seconds * rate:
            y = np.concatenate([y, y])
        y = y[: int(seconds * rate)]
        pcm = (np.clip(y, -1, 1) * 32767).astype("<i2")
        songs.append(np.stack([pcm, pcm], axis=1).ravel())
    return songs


def start_server(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen[str], int]:
    config = {
        "server": {
            "max_connections": max(1000, args.rooms * (2 + args.listeners)),
            "max_rooms": max(500, args.rooms + 10),
            "rate_limit_factor": max(8.0, args.speed * 2),
            # every benchmark client shares one address: the per-address limits are not what is measured here
            "max_connections_per_address": max(100, args.rooms * (2 + args.listeners)),
            "max_rooms_per_address": max(50, args.rooms + 10),
            "room_creations_per_minute": max(120, args.rooms * 2),
        },
        "analysis": {"hop_seconds": args.hop, "max_batch": args.max_batch},
        "logging": {"level": "warning"},
    }
    cfg = tmp / "bench.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "sendreturn_mood", "serve", "--port", "0", "--config", str(cfg)]
    if args.model:
        cmd += ["--model", args.model]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    m = LISTEN_RE.search(line)
    if not m:
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    print(line.strip(), "|", proc.stdout.readline().strip(), file=sys.stderr)  # type: ignore[union-attr]
    return proc, int(m.group(2))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def run_room(port: int, room: str, audio: np.ndarray, args: argparse.Namespace, stats: dict) -> None:
    from websockets.asyncio.client import connect

    base = f"ws://127.0.0.1:{port}/v1/rooms/{room}"
    step = int(args.rate * FRAME_SECONDS) * 2
    listeners = [await connect(base, proxy=None, compression=None) for _ in range(args.listeners)]
    async with connect(f"{base}?role=source&sample_rate={args.rate}&channels=2", proxy=None, compression=None) as src:

        async def read(ws, record: bool) -> None:
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "mood":
                    if record:
                        stats["latency_ms"].append(msg["latency_ms"])
                    stats["updates"] += 1
                elif msg["type"] == "error":
                    stats["errors"][msg["code"]] = stats["errors"].get(msg["code"], 0) + 1

        readers = [asyncio.create_task(read(src, True))] + [asyncio.create_task(read(ws, False)) for ws in listeners]
        # Independent rooms are not in step: spread the starts over one hop (--sync: all at once, the worst case).
        spread = FRAME_SECONDS if args.sync else args.hop
        t0 = time.monotonic() + np.random.default_rng(int(room.removeprefix("bench"))).uniform(0, spread)
        for k, i in enumerate(range(0, audio.size, step)):
            delay = t0 + k * FRAME_SECONDS / args.speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                stats["late_frames"] += 1
            await src.send(audio[i : i + step].tobytes())
        await src.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(readers[0], 60)
    for ws in listeners:
        await ws.close()
    for r in readers[1:]:
        r.cancel()


def histogram_mean(metrics: dict[str, float], name: str) -> float:
    count = metrics.get(f"sendreturn_{name}_count", 0.0)
    return metrics.get(f"sendreturn_{name}_sum", 0.0) / count if count else float("nan")


def histogram_quantile(metrics: dict[str, float], name: str, q: float) -> float:
    buckets = sorted(
        (float(k.split('le="')[1].rstrip('"}')), v)
        for k, v in metrics.items()
        if k.startswith(f"sendreturn_{name}_bucket") and "+Inf" not in k
    )
    total = metrics.get(f"sendreturn_{name}_count", 0.0)
    for bound, n in buckets:
        if n >= q * total:
            return bound
    return float("inf")


async def main_async(args: argparse.Namespace) -> dict:
    songs = load_songs(args.rooms, args.rate, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(args, Path(tmp)) if args.port is None else (None, args.port)
        pid = proc.pid if proc else args.server_pid
        try:
            stats = {"latency_ms": [], "updates": 0, "errors": {}, "late_frames": 0}
            cpu0, t0 = (cpu_seconds(pid) if pid else 0.0), time.monotonic()
            await asyncio.gather(*(run_room(port, f"bench{i}", songs[i % len(songs)], args, stats) for i in range(args.rooms)))
            wall, cpu = time.monotonic() - t0, (cpu_seconds(pid) - cpu0 if pid else float("nan"))
            metrics = scrape(port)
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    lat = np.array(stats["latency_ms"]) if stats["latency_ms"] else np.array([np.nan])
    return {
        "rooms": args.rooms,
        "listeners_per_room": args.listeners,
        "speed": args.speed,
        "sync_start": args.sync,
        "audio_seconds_per_room": args.seconds,
        "hop_seconds": args.hop,
        "wall_seconds": round(wall, 2),
        "updates_received": stats["updates"],
        "updates_per_second": round(stats["updates"] / wall, 1),
        "latency_ms_median": round(float(np.median(lat)), 2),
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 2),
        "latency_ms_max": round(float(np.max(lat)), 2),
        "batch_size_mean": round(histogram_mean(metrics, "batch_size"), 2),
        "batch_size_p95_bucket": histogram_quantile(metrics, "batch_size", 0.95),
        "batches": int(metrics.get("sendreturn_batch_size_count", 0)),
        "inference_ms_mean": round(1000 * histogram_mean(metrics, "inference_seconds"), 2),
        "windows_analysed": int(metrics.get("sendreturn_windows_analysed_total", 0)),
        "dropped_messages": int(metrics.get("sendreturn_dropped_messages_total", 0)),
        "errors": stats["errors"],
        "client_late_frames": stats["late_frames"],
        "server_cpu_seconds": round(cpu, 2),
        "server_cpu_fraction_of_one_core": round(cpu / wall, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--listeners", type=int, default=1, help="listeners per room (besides the source)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of audio each room streams")
    p.add_argument("--speed", type=float, default=1.0, help="times real time")
    p.add_argument("--rate", type=int, default=44100, help="sample rate the sources send (stereo s16le)")
    p.add_argument("--hop", type=float, default=1.5, help="analysis.hop_seconds")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--sync", action="store_true", help="start every room at once (windows fall due together)")
    p.add_argument("--model", help="ONNX model (default: the shipped model)")
    p.add_argument("--port", type=int, help="use a server already running on 127.0.0.1:PORT (its own config applies)")
    p.add_argument("--server-pid", type=int, help="with --port: the server's pid, to report its CPU time")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

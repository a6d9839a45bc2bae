"""Rooms across processes: N rooms streaming into 1..P real server processes sharing rooms through Redis.

    python -m sendreturn_mood.bench cluster --rooms 100 --seconds 20                 # one process, rooms in memory
    python -m sendreturn_mood.bench cluster --rooms 250 --processes 2 --seconds 20   # two processes + a redis-server
    python -m sendreturn_mood.bench cluster --table --rooms 100,250,500,1000 --processes 1,2   # the README table

Servers: `python -m sendreturn_mood serve` processes on their own ports (what a user runs); with more than one
process (or --redis) they share rooms through a redis-server this command starts on a free port (or --redis-url).
Room i's source connects to process i % P and its listeners to the next processes, so with P > 1 every update
crosses Redis to reach a listener.

Load generator: --clients processes (default: one per 250 rooms, at least one), each with its own event loop and a
share of the rooms. The audio (16 variants of `common.music_like`, stereo s16le) is encoded once before the clock
starts, and every frame is sent as pre-encoded bytes, paced at --speed times real time in 100 ms frames.
The generator's own CPU time is reported: it must stay well below what the machine has, or it is the bottleneck.

Reported (JSON, one object per run): updates/s received by listeners, latency at the listeners (the server's own
latency_ms, from the arrival of the frame that completed a window to the update's publication, plus how much later
the listener received it than the room's source did: the fan-out, through Redis when P > 1) p50/p95/max, the
server's own latency_ms (source side), server CPU per process and in total (one core = 1.0), Redis CPU, generator
CPU, updates missing at listeners, and messages dropped anywhere (server outboxes, broker queue). Not a test.
`bench server` is the one-process benchmark (CPU per room-second by stage, memory, a profile); this one is about
what spreading rooms over processes costs and gains.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import DEFAULTS
from .common import FRAME_SECONDS, music_like
from .server import load_limits, metric, proc_cpu_seconds, scrape_metrics, spawn_server

ROOMS_PER_CLIENT = 250
SONGS = 16  # distinct audio variants, cycled over rooms


def make_songs(rate: int, seconds: float) -> np.ndarray:
    """[SONGS, samples*2] interleaved stereo s16le."""
    out = []
    for k in range(SONGS):
        y = music_like(seconds, rate, 2, seed=k)
        out.append((y * 32767).astype("<i2").ravel())
    return np.stack(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server); or pass --redis-url")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    sys.exit("redis-server did not start")


def start_servers(args: argparse.Namespace, processes: int, rooms: int, broker: str | None, tmp: Path) -> list[tuple[subprocess.Popen[str], int]]:
    config: dict[str, Any] = {
        "server": {**load_limits(rooms, args.listeners), "rate_limit_factor": max(8.0, args.speed * 2)},
        "analysis": {"hop_seconds": args.hop, "max_batch": args.max_batch},
        "logging": {"level": "warning"},
    }
    if broker:
        config["broker"] = {"url": broker}
    cfg = tmp / "bench.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return [spawn_server(cfg, args.model) for _ in range(processes)]


# ------------------------------------------------------------------------------------------------------ load generator


async def run_room(ports: list[int], index: int, audio: np.ndarray, args: argparse.Namespace, stats: dict[str, Any]) -> None:
    """One room: a source on process index % P, listeners on the following processes."""
    from websockets.asyncio.client import connect

    room = f"bench{index}"
    p = len(ports)
    step = int(args.rate * FRAME_SECONDS) * 2
    frames = [audio[i : i + step].tobytes() for i in range(0, audio.size, step)]  # pre-encoded before the clock
    listeners = [
        await connect(f"ws://127.0.0.1:{ports[(index + 1 + k) % p]}/v1/rooms/{room}", proxy=None, compression=None, max_queue=None)
        for k in range(args.listeners)
    ]
    src_url = f"ws://127.0.0.1:{ports[index % p]}/v1/rooms/{room}?role=source&sample_rate={args.rate}&channels=2"
    async with connect(src_url, proxy=None, compression=None) as src:

        heard: list[tuple[int, float]] = []  # listeners: (seq, arrival)
        at_source: dict[int, tuple[float, float]] = {}  # seq -> (arrival at the source, the server's latency_ms)

        async def listen(ws: Any) -> None:
            async for raw in ws:
                t = time.monotonic()
                if raw.startswith('{"type":"mood"'):
                    seq = json.loads(raw)["seq"]
                    heard.append((seq, t))
                    stats["updates"] += 1
                    stats["seqs"].setdefault(room, set()).add(seq)

        async def source_reader() -> None:
            async for raw in src:
                t = time.monotonic()
                msg = json.loads(raw)
                if msg["type"] == "mood":
                    stats["server_ms"].append(msg["latency_ms"])
                    at_source[msg["seq"]] = (t, msg["latency_ms"])
                    stats["source_updates"][room] = max(stats["source_updates"].get(room, 0), msg["seq"])
                elif msg["type"] == "error":
                    stats["errors"][msg["code"]] = stats["errors"].get(msg["code"], 0) + 1

        readers = [asyncio.create_task(listen(ws)) for ws in listeners]
        src_task = asyncio.create_task(source_reader())
        # Independent rooms are not in step: spread the starts over one hop (--sync: all at once, the worst case).
        spread = FRAME_SECONDS if args.sync else args.hop
        t0 = time.monotonic() + 0.5 + np.random.default_rng(index).uniform(0, spread)
        for k, frame in enumerate(frames):
            delay = t0 + k * FRAME_SECONDS / args.speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                stats["late_frames"] += 1
            await src.send(frame)
        await src.send(json.dumps({"type": "end"}))
        try:
            await asyncio.wait_for(src_task, 120)
        except TimeoutError:
            stats["errors"]["end_timeout"] = stats["errors"].get("end_timeout", 0) + 1
    await asyncio.sleep(1.0)  # the last update crosses to listeners elsewhere
    for ws in listeners:
        await ws.close()
    for r in readers:
        r.cancel()
    # End to end at a listener = the server's latency (window complete -> update published, at the source's
    # process) + how much later the listener got it than the source did (the fan-out, through Redis when P > 1).
    for seq, t in heard:
        if seq in at_source:
            t_src, server_ms = at_source[seq]
            stats["e2e_ms"].append(server_ms + (t - t_src) * 1000)


def client_process(ports: list[int], indices: list[int], songs_path: str, args: argparse.Namespace, out: Any) -> None:
    """One load-generator process: its share of the rooms on one event loop; reports its stats and CPU."""
    songs = np.load(songs_path, mmap_mode="r")
    stats: dict[str, Any] = {"updates": 0, "e2e_ms": [], "server_ms": [], "errors": {}, "late_frames": 0, "seqs": {}, "source_updates": {}}

    async def main() -> None:
        await asyncio.gather(*(run_room(ports, i, np.asarray(songs[i % len(songs)]), args, stats) for i in indices))

    asyncio.run(main())
    missing = sum(max(0, stats["source_updates"].get(room, 0) * args.listeners - len(seqs)) for room, seqs in stats["seqs"].items())
    missing += sum(n * args.listeners for room, n in stats["source_updates"].items() if room not in stats["seqs"])
    t = os.times()
    out.put({
        "updates": stats["updates"], "e2e_ms": stats["e2e_ms"], "server_ms": stats["server_ms"], "errors": stats["errors"],
        "late_frames": stats["late_frames"], "missing": missing, "cpu": t.user + t.system,
    })


# ------------------------------------------------------------------------------------------------------ one run


def run_once(args: argparse.Namespace, rooms: int, processes: int, songs_path: str) -> dict[str, Any]:
    use_redis = processes > 1 or args.redis or args.redis_url
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc, broker = (None, args.redis_url)
        if use_redis and not broker:
            redis_proc, broker = start_redis()
        servers = start_servers(args, processes, rooms, broker if use_redis else None, Path(tmp))
        ports = [port for _, port in servers]
        clients = args.clients or max(1, -(-rooms // ROOMS_PER_CLIENT))
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        try:
            cpu0 = [proc_cpu_seconds(p.pid) for p, _ in servers]
            redis0 = proc_cpu_seconds(redis_proc.pid) if redis_proc else float("nan")
            t0 = time.monotonic()
            workers = [ctx.Process(target=client_process, args=(ports, list(range(k, rooms, clients)), songs_path, args, queue))
                       for k in range(clients)]
            for w in workers:
                w.start()
            results = [queue.get(timeout=args.seconds / args.speed * 4 + 300) for _ in workers]
            for w in workers:
                w.join(30)
            wall = time.monotonic() - t0
            cpu = [proc_cpu_seconds(p.pid) - c for (p, _), c in zip(servers, cpu0)]
            redis_cpu = proc_cpu_seconds(redis_proc.pid) - redis0 if redis_proc else float("nan")
            metrics = [scrape_metrics(port) for port in ports]
        finally:
            for p, _ in servers:
                p.send_signal(signal.SIGTERM)
            for p, _ in servers:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                if p.stdout is not None:
                    p.stdout.close()
            if redis_proc is not None:
                redis_proc.kill()
                redis_proc.wait()
    e2e = np.array([x for r in results for x in r["e2e_ms"]] or [np.nan])
    srv = np.array([x for r in results for x in r["server_ms"]] or [np.nan])
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    updates = sum(r["updates"] for r in results)
    return {
        "rooms": rooms,
        "processes": processes,
        "broker": "redis" if use_redis else "memory",
        "listeners_per_room": args.listeners,
        "speed": args.speed,
        "audio_seconds_per_room": args.seconds,
        "hop_seconds": args.hop,
        "wall_seconds": round(wall, 2),
        "updates_received": updates,
        "updates_per_second": round(updates / wall, 1),
        "latency_ms_p50": round(float(np.median(e2e)), 2),
        "latency_ms_p95": round(float(np.percentile(e2e, 95)), 2),
        "latency_ms_max": round(float(np.max(e2e)), 2),
        "server_latency_ms_p50": round(float(np.median(srv)), 2),
        "server_latency_ms_p95": round(float(np.percentile(srv, 95)), 2),
        "server_cpu": [round(c / wall, 3) for c in cpu],
        "server_cpu_total": round(sum(cpu) / wall, 3),
        "server_cpu_ms_per_room_second": round(1000 * sum(cpu) / (rooms * args.seconds), 2),
        "redis_cpu": round(redis_cpu / wall, 3) if redis_proc else None,
        "generator_cpu": round(sum(r["cpu"] for r in results) / wall, 3),
        "generator_processes": len(results),
        "updates_missing_at_listeners": sum(r["missing"] for r in results),
        "dropped_messages": int(sum(metric(m, "sendreturn_dropped_messages_total") + metric(m, "sendreturn_broker_dropped_total") for m in metrics)),
        "errors": errors,
        "client_late_frames": sum(r["late_frames"] for r in results),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| rooms | processes | updates/s | latency ms p50 | p95 | max | server CPU (cores) | Redis CPU | generator CPU "
            "| missing / dropped |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in rows:
        redis = "-" if r["redis_cpu"] is None else f"{r['redis_cpu']:.2f}"
        lines.append(
            f"| {r['rooms']} | {r['processes']} | {r['updates_per_second']:.0f} | {r['latency_ms_p50']:.1f} | "
            f"{r['latency_ms_p95']:.1f} | {r['latency_ms_max']:.0f} | {r['server_cpu_total']:.2f} | {redis} | "
            f"{r['generator_cpu']:.2f} | {r['updates_missing_at_listeners']} / {r['dropped_messages']} |"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rooms", default="20", help="rooms (with --table: a comma list, e.g. 100,250,500,1000)")
    p.add_argument("--processes", default="1", help="server processes (with --table: a comma list, e.g. 1,2)")
    p.add_argument("--table", action="store_true", help="run every rooms x processes combination; print a markdown table")
    p.add_argument("--listeners", type=int, default=1, help="listeners per room (besides the source)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of audio each room streams")
    p.add_argument("--speed", type=float, default=1.0, help="times real time")
    p.add_argument("--rate", type=int, default=48000, help="sample rate the sources send (stereo s16le)")
    p.add_argument("--hop", type=float, default=DEFAULTS["analysis"]["hop_seconds"], help="analysis.hop_seconds (default: the server's)")
    p.add_argument("--max-batch", type=int, default=64, help="analysis.max_batch")
    p.add_argument("--sync", action="store_true", help="start every room at once (windows fall due together)")
    p.add_argument("--clients", type=int, default=0, help=f"load-generator processes (default: one per {ROOMS_PER_CLIENT} rooms)")
    p.add_argument("--redis", action="store_true", help="use Redis even with one process (its overhead)")
    p.add_argument("--redis-url", help="an existing Redis instead of starting one (its CPU is then not reported)")
    p.add_argument("--model", help="ONNX model (default: the shipped model)")
    p.add_argument("--out", help="also write the results (JSON list) here")


def run(args: argparse.Namespace) -> int:
    rooms_list = [int(x) for x in args.rooms.split(",")]
    procs_list = [int(x) for x in args.processes.split(",")]
    if not args.table and (len(rooms_list) > 1 or len(procs_list) > 1):
        sys.exit("several --rooms or --processes values need --table")
    with tempfile.TemporaryDirectory() as tmp:
        songs_path = str(Path(tmp) / "songs.npy")
        np.save(songs_path, make_songs(args.rate, args.seconds))
        rows = []
        for rooms in rooms_list:
            for procs in procs_list:
                row = run_once(args, rooms, procs, songs_path)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.table:
        print(table(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0

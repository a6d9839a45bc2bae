"""Prepared rooms under load, side by side with live rooms: server CPU per room-second and update delay.

    python -m sendreturn_mood.bench prepared --rooms 200 --live          # CPU per room-second: prepared vs live
    python -m sendreturn_mood.bench prepared --rooms 5000 --seconds 30   # 5,000 prepared rooms, one listener each

One server process (this one: the server runs on this process's event loop, uvloop when installed as for `serve`, so its CPU is this process's CPU while
the load generators, separate processes, drive it), every room one source and `--listeners` listeners. Prepared: one
song is analysed once and put for every room by reference; each source sends `play` (starts spread over one hop) and
a position report every 2 s, as a player would; the delay of an update is when its listener got it minus when it
was due (the source's `play` time plus the update's position), measured in the generator, so it includes the
generator's own lag on this shared machine. Live: the same rooms streaming 16 kHz mono PCM in real time (what the
clients send by default), the generator of `bench server`. CPU is counted over the middle of the run, when every
room is going.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import re
import resource
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .common import music_like, one_blas_thread, write_json
from .server import generator_process, load_limits

POSITION_EVERY_SECONDS = 5.0  # what the clients do (sendreturn_mood.client.POSITION_EVERY_S)
CONNECT_CONCURRENCY = 64


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rooms", type=int, default=200, help="rooms (default 200)")
    p.add_argument("--listeners", type=int, default=1, help="listeners per room besides the source (default 1)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds each room plays (default 30)")
    p.add_argument("--song-seconds", type=float, default=60.0, help="length of the prepared song (default 60)")
    p.add_argument("--hop", type=float, default=1.5, help="analysis.hop_seconds (default 1.5)")
    p.add_argument("--lead", type=float, default=0.0, help="lead_seconds of every room (default 0)")
    p.add_argument(
        "--start-spread", type=float, default=None,
        help="seconds over which the prepared rooms' plays (and so their position reports) are spread (default: one hop)",
    )
    p.add_argument("--procs", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    p.add_argument("--live", action="store_true", help="also run the same rooms live, and report the CPU ratio")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    one_blas_thread()
    out: dict[str, Any] = {"command": "python -m sendreturn_mood.bench prepared " + " ".join(_argv(args))}
    from ..server.eventloop import run as run_on_server_loop

    # the server's own event loop (`server.event_loop: auto`: uvloop when installed), as `serve` runs it
    out["prepared"] = run_on_server_loop("auto", measure(args, "prepared"))
    if args.live:
        out["live"] = run_on_server_loop("auto", measure(args, "live"))
        p, live = out["prepared"]["server_cpu_ms_per_room_second"], out["live"]["server_cpu_ms_per_room_second"]
        out["prepared_cpu_over_live"] = round(p / live, 4) if live else None
    out["machine_load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=2))
    write_json(args.json, out)
    return 0


def spread(args: argparse.Namespace) -> float:
    """Seconds over which the prepared rooms start."""
    return args.hop if args.start_spread is None else args.start_spread


def _argv(args: argparse.Namespace) -> list[str]:
    out = [f"--rooms {args.rooms}", f"--seconds {args.seconds:g}", f"--song-seconds {args.song_seconds:g}"]
    if args.lead:
        out.append(f"--lead {args.lead:g}")
    if args.start_spread is not None:
        out.append(f"--start-spread {args.start_spread:g}")
    if args.live:
        out.append("--live")
    return out


def song_bytes(seconds: float) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, music_like(seconds, 16000, 1, seed=7)[:, 0], 16000, format="WAV")
    return buf.getvalue()


def loop_thread_wait_seconds() -> float:
    """Seconds the event loop's thread (this one) has waited, runnable, for a core (Linux schedstat; 0 elsewhere):
    on a shared machine, how much of an update's delay was the machine's other work, not the server's."""
    try:
        text = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").read_text()
        return int(text.split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def following(server: Any) -> int:
    """How many of the server's rooms follow a prepared track now."""
    return sum(1 for room in server.rooms if room.prepared is not None)


def self_cpu_seconds() -> float:
    """CPU seconds of this process, every thread (in `measure` the server's alone: the generators are processes
    of their own, counted separately)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    from ..config import load_config
    from ..server.app import MoodServer

    limits = load_limits(args.rooms, args.listeners)
    overrides: dict[str, Any] = {f"server.{k}": v for k, v in limits.items()}
    overrides.update({
        "server.port": 0, "analysis.hop_seconds": args.hop, "logging.level": "warning",
        "prepared.max_tracks": args.rooms + 10, "prepared.max_tracks_per_room": 10,
        "server.rate_limit_factor": 8.0, "model.path": args.model,
    })
    server = MoodServer(load_config(None, overrides))
    await server.start()
    try:
        if mode == "prepared":
            t = time.perf_counter()
            song = await server.tracks.prepare("bench-song", "song", song_bytes(args.song_seconds))
            prepare_seconds = time.perf_counter() - t
            for k in range(args.rooms):
                await server.tracks.refer(f"bench{k}", "song", song.analysis.id)
        ramp = max(3.0, args.rooms / 150)
        start_at = time.time() + ramp + 1.0
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        shares = [list(range(args.rooms))[i :: args.procs] for i in range(args.procs)]
        if mode == "prepared":
            gen_args = {"seconds": args.seconds, "hop": args.hop, "listeners": args.listeners, "lead": args.lead,
                        "spread": spread(args)}
            target = prepared_generator
        else:
            gen_args = {"seconds": args.seconds, "hop": args.hop, "listeners": args.listeners, "frame_ms": 100.0,
                        "source": "16000:1"}
            target = generator_process
        procs = [ctx.Process(target=target, args=(s, server.port, gen_args, start_at, results)) for s in shares if s]
        for p in procs:
            p.start()
        t_begin = start_at + (spread(args) if mode == "prepared" else args.hop) + 3.0
        t_end = start_at + args.seconds - 1.0
        await asyncio.sleep(max(0.0, t_begin - time.time()))
        cpu0, w0, updates0, heard0 = self_cpu_seconds(), time.time(), server.metrics.updates.get(), server.metrics.audio_seconds.get()
        waited0, following0 = loop_thread_wait_seconds(), following(server)
        await asyncio.sleep(max(0.0, t_end - time.time()))
        cpu1, w1, updates1, heard1 = self_cpu_seconds(), time.time(), server.metrics.updates.get(), server.metrics.audio_seconds.get()
        waited1, following1 = loop_thread_wait_seconds(), following(server)
        loop = asyncio.get_running_loop()
        gens = [await loop.run_in_executor(None, results.get, True, args.seconds + 300) for _ in procs]
        for p in procs:
            await loop.run_in_executor(None, p.join, 30)
    finally:
        await server.close()
    # a prepared room-second is a second of a room following its track (rooms whose connections failed do not
    # count: the mean of the rooms following one at the start and the end of the measured time); a live one a
    # second of audio the server actually analysed meanwhile (fewer than rooms x seconds when it falls behind, as
    # `bench server` counts)
    room_seconds = (following0 + following1) / 2 * (w1 - w0) if mode == "prepared" else heard1 - heard0
    out: dict[str, Any] = {
        "mode": mode,
        "rooms": args.rooms,
        "listeners_per_room": args.listeners,
        "measured_seconds": round(w1 - w0, 2),
        "server_cpu_ms_per_room_second": round(1000 * (cpu1 - cpu0) / room_seconds, 4),
        "server_cores_busy": round((cpu1 - cpu0) / (w1 - w0), 3),
        # of the measured time, the share the server's event-loop thread was ready to run but waited for a core
        "server_loop_waiting_for_a_core": round((waited1 - waited0) / (w1 - w0), 3),
        "updates_per_second": round((updates1 - updates0) / (w1 - w0), 1),
        "room_seconds": round(room_seconds, 1),
        "failed_rooms": int(sum(g["failed_rooms"] for g in gens)),
        "errors": {k: v for g in gens for k, v in g["errors"].items()},
        "failures": sorted({f for g in gens for f in g.get("failures", [])})[:5],
        "generator_cpu_seconds": round(sum(g["cpu_seconds"] for g in gens), 2),
        "seq_gaps_at_listeners": int(sum(g["gaps"] for g in gens)),
    }
    if mode == "prepared":
        out["prepare_seconds"] = round(prepare_seconds, 3)
        out["rooms_following_a_track"] = [following0, following1]  # at the start and the end of the measured time
        delay = np.array([x for g in gens for x in g["delay_ms"]] or [np.nan])
        sent_late = np.array([x for g in gens for x in g["latency_ms"]] or [np.nan])
        out.update({
            "updates_at_listeners": int(delay.size),
            "delay_ms_p50": round(float(np.nanpercentile(delay, 50)), 2),
            "delay_ms_p95": round(float(np.nanpercentile(delay, 95)), 2),
            "delay_ms_max": round(float(np.nanmax(delay)), 2),
            "server_latency_ms_p95": round(float(np.nanpercentile(sent_late, 95)), 2),
        })
    else:
        lat = np.array([x for g in gens for x in g["latency_ms"]] or [np.nan])
        out.update({"updates_at_listeners": int(lat.size), "latency_ms_p50": round(float(np.nanpercentile(lat, 50)), 2),
                    "latency_ms_p95": round(float(np.nanpercentile(lat, 95)), 2)})
    return out


SEQ_AND_TIME = re.compile(r'"seq":(\d+),"stream_time":([^,]+),')
LATENCY = re.compile(r'"latency_ms":([^,}]+)}$')


def mood_numbers(text: str) -> tuple[int, float, float]:
    """(seq, stream_time, latency_ms) of a prepared `mood` message's text (protocol.mood_text's fixed order), read
    without parsing the whole message: at 5,000 rooms the generators' JSON parsing was a share of the delay they
    measured."""
    head, tail = SEQ_AND_TIME.search(text), LATENCY.search(text)
    if head is None or tail is None:
        msg = json.loads(text)
        return msg["seq"], msg["stream_time"], msg["latency_ms"]
    return int(head[1]), float(head[2]), float(tail[1])


def prepared_generator(rooms: list[int], port: int, args: dict[str, Any], start_at: float, results: Any) -> None:
    """One load-generator process for prepared rooms (uvloop when installed)."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is optional
        runner = asyncio.run
    cpu0 = self_cpu_seconds()
    stats = runner(_prepared_rooms(rooms, port, args, start_at))
    stats["cpu_seconds"] = self_cpu_seconds() - cpu0
    results.put(stats)


async def _prepared_rooms(rooms: list[int], port: int, args: dict[str, Any], start_at: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    seconds, n_listeners, lead, spread_seconds = args["seconds"], args["listeners"], args["lead"], args["spread"]
    measure_from = start_at + spread_seconds + 3.0
    stats: dict[str, Any] = {"delay_ms": [], "latency_ms": [], "gaps": 0, "errors": Counter(), "failed_rooms": 0}
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    base = f"ws://127.0.0.1:{port}/v1/rooms"

    async def listen(ws: Any, played: list[float], record: bool) -> None:
        last = None
        async for raw in ws:
            now = time.time()
            if raw.startswith('{"type":"mood"'):
                if not record or not played:
                    continue
                seq, stream_time, latency_ms = mood_numbers(raw)
                if now >= measure_from:
                    stats["delay_ms"].append(1000 * (now - (played[0] + stream_time - lead)))
                    stats["latency_ms"].append(latency_ms)
                if last is not None and seq != last + 1:
                    stats["gaps"] += seq - last - 1
                last = seq
            elif raw.startswith('{"type":"error"'):
                stats["errors"][json.loads(raw)["code"]] += 1

    async def room(k: int) -> None:
        name = f"bench{k}"
        async with gate:
            listeners = [await connect(f"{base}/{name}", proxy=None, compression=None) for _ in range(n_listeners)]
            src = await connect(f"{base}/{name}?role=source&sample_rate=16000", proxy=None, compression=None)
        played: list[float] = []
        readers = [asyncio.create_task(listen(ws, played, True)) for ws in listeners]
        readers.append(asyncio.create_task(listen(src, played, False)))
        t_play = start_at + np.random.default_rng(k).uniform(0, spread_seconds)
        await asyncio.sleep(max(0.0, t_play - time.time()))
        played.append(time.time())
        await src.send(json.dumps({"type": "play", "track": "song", "position": 0, "lead_seconds": lead}))
        while time.time() < t_play + seconds:
            await asyncio.sleep(POSITION_EVERY_SECONDS)
            await src.send(json.dumps({"type": "position", "position": round(time.time() - played[0], 3)}))
        for ws in [*listeners, src]:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)

    outcomes = await asyncio.gather(*(room(k) for k in rooms), return_exceptions=True)
    stats["failed_rooms"] = sum(isinstance(o, BaseException) for o in outcomes)
    stats["failures"] = sorted({repr(o)[:160] for o in outcomes if isinstance(o, BaseException)})[:5]
    stats["errors"] = dict(stats["errors"])
    return stats

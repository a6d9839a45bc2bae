"""The OSC output alone: CPU per room-second of a server's OSC sinks, one target per room, at each rate.

    python -m sendreturn_mood.bench osc [--rooms 200] [--seconds 10] [--rates 0 30] [--hop 1.5]

One process, one event loop, the server's own sink (`outputs.osc.OscTarget`, as `serve --osc` or `bench server
--osc` configure it): per room one target, a UDP socket bound in this process (never read: the kernel drops what
overflows, the sender's cost is the same), and one real `Update` per hop (rooms spread over the hop, the updates made
before the clock starts by a real room fed random predictions). What is measured is this process's CPU time
(`time.process_time`, all threads) while the rooms run for `--seconds` of wall-clock time, divided by the room-seconds,
and the bundles the sinks sent per room-second. CPU time, not wall time: on a machine shared with other work the
figure stays the cost of the work done (a starved loop skips stream ticks; `bundles_per_room_second` shows it).
Compare with `bench server`'s `server_cpu_ms_per_room_second` (the whole server without OSC).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from typing import Any

import numpy as np

from ..config import OscTargetSettings, load_config
from ..model.contract import MoodModel, Prediction
from ..outputs.osc import OscTarget
from ..room.effects import load_presets
from ..room.rooms import Room, outgoing
from ..room.tracker import tracker_from_config


def make_updates(model: MoodModel, count: int, hop: float) -> list[Any]:
    """`count` consecutive updates of one room: a real tracker fed random (but smooth) predictions."""
    config = load_config()
    presets = load_presets(config.effects.file, config.effects.default_preset)
    room = Room("bench", tracker_from_config(model.info, config, presets))
    rng = np.random.default_rng(0)
    n_moods, n_genres = len(model.info.moods), len(model.info.genres)
    out = []
    for k in range(count):
        moods, genres = rng.dirichlet(np.ones(n_moods)), rng.dirichlet(np.ones(n_genres)) if n_genres else None
        out.extend(room.on_window(room.generation, Prediction(moods, genres), hop * (k + 2), 1.0, None))
    return out


async def run_rooms(rooms: int, seconds: float, rate_hz: float | None, hop: float, updates: list[Any]) -> dict[str, Any]:
    """Rooms sending their updates through one OSC target each (rate_hz None: no target, the baseline)."""
    presets = load_presets()
    socks, targets = [], []
    for _ in range(rooms if rate_hz is not None else 0):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
        targets.append(OscTarget(OscTargetSettings("127.0.0.1", sock.getsockname()[1], rate_hz=rate_hz or 0.0), presets, hop))
    names = [f"bench{k}" for k in range(rooms)]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    cpu0 = time.process_time()

    async def room(k: int) -> None:
        await asyncio.sleep(hop * k / rooms)  # spread over one hop, as independent rooms are
        i = 0
        while loop.time() - t0 < seconds:
            out = outgoing(updates[i % len(updates)])  # what the registry hands every sink (encoded once)
            if targets:
                targets[k].deliver(names[k], out.message)
            i += 1
            await asyncio.sleep(hop - (loop.time() - t0 - hop * k / rooms) % hop)

    await asyncio.gather(*(room(k) for k in range(rooms)))
    cpu = time.process_time() - cpu0
    wall = loop.time() - t0
    sent = sum(t.sent for t in targets)
    errors = sum(t.errors for t in targets)
    for t in targets:
        t.close()
    for s in socks:
        s.close()
    return {
        "osc_rate_hz": rate_hz,
        "cpu_ms_per_room_second": round(1000 * cpu / (rooms * wall), 4),
        "bundles_per_room_second": round(sent / (rooms * wall), 2),
        "send_errors": errors,
        "wall_seconds": round(wall, 2),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rooms", type=int, default=200, help="rooms, one OSC target each (default 200)")
    p.add_argument("--seconds", type=float, default=10.0, help="wall-clock seconds per rate (default 10)")
    p.add_argument("--rates", type=float, nargs="+", default=[0.0, 30.0], help="rate_hz values to measure (default 0 30)")
    p.add_argument("--hop", type=float, default=1.5, help="seconds between a room's updates (default 1.5)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    from .common import write_json

    updates = [u for u in make_updates(MoodModel(), 64, args.hop) if not isinstance(u, dict)]
    results = [asyncio.run(run_rooms(args.rooms, args.seconds, None, args.hop, updates))]
    results += [asyncio.run(run_rooms(args.rooms, args.seconds, r, args.hop, updates)) for r in args.rates]
    base = results[0]["cpu_ms_per_room_second"]
    for r in results[1:]:  # what the OSC sinks cost: the run minus the rooms' own loop without them
        r["osc_cpu_ms_per_room_second"] = round(r["cpu_ms_per_room_second"] - base, 4)
        sent = r["bundles_per_room_second"]
        r["osc_cpu_us_per_bundle"] = round(1000 * r["osc_cpu_ms_per_room_second"] / sent, 1) if sent else None

    out = {"rooms": args.rooms, "hop_seconds": args.hop, "runs": results}
    print(json.dumps(out, indent=1))
    write_json(args.json, out)
    return 0

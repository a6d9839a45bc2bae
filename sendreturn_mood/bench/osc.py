"""The OSC output alone: CPU per room-second of a server's OSC sinks, one target per room, at each rate.

    python -m sendreturn_mood.bench osc [--rooms 200] [--seconds 10] [--rates 0 30] [--hop 1.5]
    python -m sendreturn_mood.bench osc --against DIR --repeats 3   # this code and DIR's, alternating

One process, one event loop, the server's own sinks (`outputs.osc.OscOutputs`, as `serve --osc` or `bench server
--osc` configure them: the targets of one rate share one stream clock): per room one target, a UDP socket bound in this process (never read: the kernel drops what
overflows, the sender's cost is the same), and one real `Update` per hop (rooms spread over the hop, the updates made
before the clock starts by a real room fed random predictions). What is measured is this process's CPU time
(`time.process_time`, all threads) while the rooms run for `--seconds` of wall-clock time, divided by the room-seconds,
and the bundles the sinks sent per room-second. CPU time, not wall time: on a machine shared with other work the
figure stays the cost of the work done (a starved loop skips stream ticks; `bundles_per_room_second` shows it).
Compare with `bench server`'s `server_cpu_ms_per_room_second` (the whole server without OSC).

`--against DIR` runs DIR's own `bench osc` (a checkout of other code, e.g. `git worktree add DIR COMMIT`) and this
checkout's, each in a fresh process started in its checkout, alternately `--repeats` times, and prints the medians of
each and their ratio per rate: the before/after of a change measured side by side on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import OscTargetSettings, load_config
from ..model.contract import MoodModel, Prediction
from ..outputs.osc import OscOutputs
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
    socks = []
    for _ in range(rooms if rate_hz is not None else 0):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    settings = [OscTargetSettings("127.0.0.1", s.getsockname()[1], rate_hz=rate_hz or 0.0) for s in socks]
    outputs = OscOutputs.from_settings(settings, presets, hop)
    targets = outputs.targets
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
    outputs.close()
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
    p.add_argument("--against", default=None, metavar="DIR",
                   help="a checkout of other code: its `bench osc` and this one's run alternately, medians and ratios printed")
    p.add_argument("--repeats", type=int, default=1, help="runs of each checkout with --against (default 1)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")


SUMMARY_KEYS = ("osc_cpu_us_per_bundle", "osc_cpu_ms_per_room_second", "bundles_per_room_second", "cpu_ms_per_room_second")
THIS = Path(__file__).resolve().parents[2]  # the checkout this package is in


def run_in(code: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One `bench osc` of the checkout `code`, in a fresh process started there (`python -m` runs its package)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "osc.json"
        cmd = [sys.executable, "-m", "sendreturn_mood.bench", "osc", "--rooms", str(args.rooms), "--seconds",
               str(args.seconds), "--hop", str(args.hop), "--rates", *(f"{r:g}" for r in args.rates), "--json", str(out)]
        subprocess.run(cmd, cwd=code, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def run_against(args: argparse.Namespace) -> dict[str, Any]:
    """This checkout and `--against`'s, alternating; per rate the medians of each and the ratio against / this."""
    other = Path(args.against).resolve()
    if not (other / "sendreturn_mood" / "bench" / "osc.py").is_file():
        sys.exit(f"--against {args.against}: no `bench osc` there (a checkout of this repository with the OSC output)")
    runs: dict[str, list[dict[str, Any]]] = {"this": [], "against": []}
    for i in range(args.repeats):  # alternating, so both see the same moments of a noisy machine
        for name, code in (("this", THIS), ("against", other)):
            res = run_in(code, args)
            runs[name].append(res)
            print(f"run {i + 1} {name:8s} " + "  ".join(
                f"{r['osc_rate_hz']} Hz: " + " ".join(f"{k}={r.get(k)}" for k in SUMMARY_KEYS) for r in res["runs"][1:]), flush=True)
    medians: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, results in runs.items():
        for k, rate in enumerate(args.rates):
            rows = [res["runs"][k + 1] for res in results]
            medians.setdefault(name, {})[f"{rate:g} Hz"] = {
                key: round(statistics.median(v), 4) if (v := [r[key] for r in rows if r.get(key) is not None]) else None
                for key in SUMMARY_KEYS}
    ratio = {rate: {key: round(a / t, 2) if a and t else None for key in SUMMARY_KEYS[:2]
                    for a, t in [(medians["against"][rate][key], medians["this"][rate][key])]}
             for rate in medians["this"]}
    return {"rooms": args.rooms, "seconds": args.seconds, "repeats": args.repeats, "against": args.against,
            "medians": medians, "ratio_against_over_this": ratio, "runs": runs}


def run(args: argparse.Namespace) -> int:
    from .common import write_json

    if args.against is not None:
        out = run_against(args)
        print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
        write_json(args.json, out)
        return 0
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

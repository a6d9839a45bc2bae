"""Song changes, prepared against live, side by side on real songs: when does a room's broadcast mood follow the new
song, and what does the room say at the moment of the change?

    python -m sendreturn_mood.bench songchange --pairs 20

Each pair is one 4Q clip (~30 s, the end of a song as far as the data goes) followed by a clip of another quadrant
(../shared/data/moods-4q, labels.csv). One server (this process; the shipped model, default settings) and, per pair,
rooms played in real time at the same moment: one live (a source streams the pair's PCM, 16 kHz mono in 100 ms
frames), and one prepared room per `--leads` value (the pair is PUT as a WAV, then `play`ed at position 0; the server's
clock runs). Every room has one listener that notes when each update arrives.

Per room, with c = the change's position (the first clip's length) and T = the wall time playback reached it:
- follow_s: first arrival of an update saying the new song's mood (its prepared analysis's label at its end), minus T;
  only pairs whose two songs' labels differ. What a player sees: how long after the music changed the room did.
- at_change_equals_prepared: the update the room had sent last by T equals `analyze`'s update for that position (the
  last one at or before c + lead), field for field.
- out_before_change: the first update at or after c arrived before T (what lead_seconds >= the hop buys).
Medians and p90 over pairs; the runs' raw values go to --json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import one_blas_thread, write_json

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "moods-4q"
FRAME_SECONDS = 0.1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", type=int, default=20, help="song-change pairs (default 20)")
    p.add_argument("--leads", type=float, nargs="+", default=[0.0, 1.5, 3.0], help="lead_seconds of the prepared rooms")
    p.add_argument("--json", default=None, help="also write the result (with every pair's values) to this JSON file")


def pairs(n: int) -> list[tuple[Path, Path]]:
    """n pairs of clips of different quadrants, each clip used once, the same every run."""
    if not (SHARED / "labels.csv").is_file():
        raise SystemExit(f"songchange needs the real songs in {SHARED} (../shared/data beside the repository)")
    rows = list(csv.DictReader((SHARED / "labels.csv").open()))
    by_q: dict[str, list[Path]] = {}
    for r in sorted(rows, key=lambda r: r["file"]):
        path = SHARED / r["file"]
        if path.is_file():
            by_q.setdefault(r["quadrant"], []).append(path)
    quadrants = sorted(by_q)
    out = []
    for i in range(n):  # every ordered pair of quadrants in turn; a clip from the first half, one from the second
        qa = quadrants[i % 4]
        qb = quadrants[(i % 4 + 1 + (i // 4) % 3) % 4]
        out.append((by_q[qa][i], by_q[qb][len(by_q[qb]) // 2 + i]))
    return out


def run(args: argparse.Namespace) -> int:
    one_blas_thread()
    result = asyncio.run(measure(args))
    result["command"] = "python -m sendreturn_mood.bench songchange " + f"--pairs {args.pairs} --leads " + " ".join(f"{x:g}" for x in args.leads)
    result["machine_load_average_1min"] = round(os.getloadavg()[0], 2)
    raw = result.pop("pairs")
    print(json.dumps(result, indent=2))
    write_json(args.json, {**result, "pairs": raw})
    return 0


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    import soundfile as sf
    from websockets.asyncio.client import connect

    from ..audio.files import decode
    from ..audio.pcm import encode
    from ..config import load_config
    from ..server.app import MoodServer

    from .server import load_limits

    rooms = args.pairs * (1 + len(args.leads))
    overrides: dict[str, Any] = {f"server.{k}": v for k, v in load_limits(rooms, 1).items()}
    overrides.update({"server.port": 0, "logging.level": "warning", "prepared.max_tracks": rooms + 10})
    server = MoodServer(load_config(None, overrides))
    await server.start()
    hop = server.hop_seconds
    try:
        jobs = []
        for i, (a, b) in enumerate(pairs(args.pairs)):
            ya, rate = decode(a)
            yb, rate_b = decode(b)
            assert rate == rate_b
            audio = np.concatenate([ya, yb]).astype(np.float32)
            buf = io.BytesIO()
            sf.write(buf, audio, rate, format="WAV")
            track = await server.tracks.prepare(f"pair{i}-lead0", "pair", buf.getvalue())
            for lead in args.leads[1:]:
                await server.tracks.refer(f"pair{i}-lead{lead:g}", "pair", track.analysis.id)
            jobs.append((i, a, b, ya.size / rate, audio, rate, track))
        start = time.time() + 2.0

        async def listen(room: str, log: list[tuple[float, dict[str, Any]]], until: float) -> None:
            async with connect(f"{server.url}/v1/rooms/{room}", proxy=None, compression=None) as ws:
                while time.time() < until:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), max(0.05, until - time.time()))
                    except TimeoutError:
                        break
                    msg = json.loads(raw)
                    if msg["type"] == "mood":
                        log.append((time.time(), msg))

        async def live(i: int, audio: np.ndarray, rate: int, log: list[Any], t0: list[float]) -> None:
            room = f"pair{i}-live"
            frames = [encode(audio[k : k + int(rate * FRAME_SECONDS)], "pcm_s16le") for k in range(0, audio.size, int(rate * FRAME_SECONDS))]
            async with connect(f"{server.url}/v1/rooms/{room}?role=source&sample_rate={rate}", proxy=None, compression=None, max_queue=None) as src:
                reader = asyncio.create_task(listen(room, log, start + audio.size / rate + 8))
                await asyncio.sleep(max(0.0, start - time.time()))
                t0.append(time.time())
                for k, frame in enumerate(frames):
                    await asyncio.sleep(max(0.0, start + (k + 1) * FRAME_SECONDS - time.time()))  # a frame once it played
                    await src.send(frame)
                await reader

        async def prepared(i: int, lead: float, duration: float, log: list[Any], t0: list[float]) -> None:
            room = f"pair{i}-lead{lead:g}"
            async with connect(f"{server.url}/v1/rooms/{room}?role=source", proxy=None, compression=None, max_queue=None) as src:
                reader = asyncio.create_task(listen(room, log, start + duration + 3))
                await asyncio.sleep(max(0.0, start - time.time()))
                t0.append(time.time())
                await src.send(json.dumps({"type": "play", "track": "pair", "position": 0, "lead_seconds": lead}))
                await reader

        tasks, logs = [], {}
        for i, a, b, change, audio, rate, track in jobs:
            for kind in ["live", *[f"lead{x:g}" for x in args.leads]]:
                logs[(i, kind)] = ([], [])
            tasks.append(live(i, audio, rate, *logs[(i, "live")]))
            for lead in args.leads:
                tasks.append(prepared(i, lead, audio.size / rate, *logs[(i, f"lead{lead:g}")]))
        await asyncio.gather(*tasks)
    finally:
        await server.close()

    per_pair = []
    for i, a, b, change, audio, rate, track in jobs:
        rows = [json.loads("{" + c.body + "}") | {"stream_time": c.position} for c in track.analysis.cues if c.kind == "mood"]
        target = rows[-1]["mood"]
        before = max((r for r in rows if r["stream_time"] <= change), key=lambda r: r["stream_time"])["mood"]
        entry: dict[str, Any] = {"a": str(a.relative_to(SHARED)), "b": str(b.relative_to(SHARED)), "change_s": round(change, 3),
                                 "mood_before": before, "mood_after": target}
        for kind in ["live", *[f"lead{x:g}" for x in args.leads]]:
            log, t0 = logs[(i, kind)]
            lead = 0.0 if kind == "live" else float(kind[4:])
            t_change = t0[0] + change
            follow = next((t - t_change for t, m in log if m["stream_time"] > change and m["mood"] == target), None)
            sent = [m for t, m in log if t <= t_change]
            expected = max((r for r in rows if r["stream_time"] <= change + lead + 1e-9), key=lambda r: r["stream_time"], default=None)
            first_after = next(((t, m) for t, m in log if m["stream_time"] >= change), None)
            e = {
                "follow_s": None if follow is None or before == target else round(follow, 3),
                "last_update_stream_time_at_change": sent[-1]["stream_time"] if sent else None,
                "out_before_change": bool(first_after and first_after[0] < t_change),
            }
            if kind != "live" and sent and expected is not None:
                e["at_change_equals_prepared"] = all(sent[-1].get(k) == v for k, v in expected.items())
            entry[kind] = e
        per_pair.append(entry)

    summary: dict[str, Any] = {"pairs_run": len(per_pair), "pairs_with_a_mood_change": sum(p["mood_before"] != p["mood_after"] for p in per_pair),
                               "hop_seconds": hop, "window_seconds": server.window_seconds}
    for kind in ["live", *[f"lead{x:g}" for x in args.leads]]:
        follows = [p[kind]["follow_s"] for p in per_pair if p[kind]["follow_s"] is not None]
        s = {
            "follow_s_median": round(float(np.median(follows)), 2) if follows else None,
            "follow_s_p90": round(float(np.percentile(follows, 90)), 2) if follows else None,
            "followed": f"{len(follows)}/{summary['pairs_with_a_mood_change']}",
            "out_before_change": f"{sum(p[kind]['out_before_change'] for p in per_pair)}/{len(per_pair)}",
        }
        if kind != "live":
            s["at_change_equals_prepared"] = f"{sum(bool(p[kind].get('at_change_equals_prepared')) for p in per_pair)}/{len(per_pair)}"
        summary[kind] = s
    summary["pairs"] = per_pair
    return summary

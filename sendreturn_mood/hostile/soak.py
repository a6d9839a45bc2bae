"""The soak: N rooms streaming for M minutes with connection churn, the server's RSS and open file descriptors
sampled all along. A leak shows as a slope; a stuck room as updates that stop; a lost update as a seq gap."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .harness import FRAME_SECONDS, ServerProcess, slope_per_minute

WARM_UP_SECONDS = 60.0  # default: slopes are fitted after this (allocator and caches settle in the first minute)
STALL_SECONDS = 10.0  # a room with no update for this long while streaming is stalled (counted once per 10 s)
# Expected rate, for reading the figures: a new track every 30 s restarts the analysis (first update after one ~3 s
# window, then one per 1.5 s hop): about 38 updates per room-minute at the defaults when the server keeps up.


@dataclass
class SoakResult:
    rooms: int
    minutes: float
    updates: int = 0
    seq_gaps: int = 0
    stalls: int = 0
    reconnects: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (seconds, rss MB, fds)
    stall_log: list[str] = field(default_factory=list)
    warm_up_seconds: float = WARM_UP_SECONDS

    def slopes(self) -> tuple[float, float]:
        late = [s for s in self.samples if s[0] >= self.warm_up_seconds] or self.samples
        return slope_per_minute([(t, r) for t, r, _ in late]), slope_per_minute([(t, float(f)) for t, _, f in late])


async def _room(base: str, i: int, audio: np.ndarray, rate: int, until: float, churn: float, result: SoakResult) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake

    address: dict[str, Any] = {"local_addr": (f"127.0.0.{10 + i % 40}", 0), "ping_interval": None}
    url = f"{base}/v1/rooms/soak{i}"
    step = int(rate * FRAME_SECONDS)
    offset = (i * 7919 * step) % max(step, audio.size - step)
    last_update = [time.monotonic()]

    async def listen() -> None:
        while time.monotonic() < until:
            try:
                await listen_once()
            except (OSError, TimeoutError, InvalidHandshake) as e:
                # a server too starved to answer a handshake in time: counted, and the listener tries again (a
                # listener that gave up would leave its room counted as stalled for the rest of the run)
                key = f"listener connect {type(e).__name__}"
                result.errors[key] = result.errors.get(key, 0) + 1
                await asyncio.sleep(1.0)

    async def listen_once() -> None:
        async with connect(url, proxy=None, compression=None, **address) as ws:
            last_update[0] = time.monotonic()  # a reconnect's own gap is not the server's stall
            last = 0
            deadline = min(until, time.monotonic() + churn)
            while time.monotonic() < deadline:
                try:
                    raw = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                msg = json.loads(raw)
                if msg["type"] == "mood":
                    result.updates += 1
                    if last and msg["seq"] > last + 1:
                        result.seq_gaps += msg["seq"] - last - 1
                    last = msg["seq"]
                    last_update[0] = time.monotonic()
                elif msg["type"] == "error":
                    result.errors[msg["code"]] = result.errors.get(msg["code"], 0) + 1
        result.reconnects += 1

    async with connect(f"{url}?role=source&sample_rate={rate}", proxy=None, compression=None, **address) as src:
        reader = asyncio.create_task(listen())

        async def drain() -> None:
            async for raw in src:
                msg = json.loads(raw)
                if msg["type"] == "error":
                    result.errors[msg["code"]] = result.errors.get(msg["code"], 0) + 1

        own = asyncio.create_task(drain())
        t0 = time.monotonic()
        k = 0
        next_track = t0 + churn
        while time.monotonic() < until:
            i0 = (offset + k * step) % (audio.size - step)
            await src.send(audio[i0 : i0 + step].tobytes())
            k += 1
            now = time.monotonic()
            if now >= next_track:
                await src.send(json.dumps({"type": "track", "id": f"soak:{i}:{k}", "title": "soak"}))
                next_track = now + churn
            if now - last_update[0] > STALL_SECONDS:
                result.stalls += 1
                if len(result.stall_log) < 20:
                    result.stall_log.append(f"soak{i} at {now - t0:.0f} s")
                last_update[0] = now
            delay = t0 + k * FRAME_SECONDS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await src.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(own, 60)
        await asyncio.wait_for(reader, 60)


async def _sample(server: ServerProcess | None, until: float, every: float, result: SoakResult) -> None:
    t0 = time.monotonic()
    while time.monotonic() < until:
        if server is not None and server.alive:
            result.samples.append((time.monotonic() - t0, server.rss_mb(), server.fds()))
        await asyncio.sleep(every)


async def soak(base: str, server: ServerProcess | None, rooms: int, minutes: float, audio: np.ndarray, rate: int,
               churn_seconds: float = 30.0, sample_seconds: float = 10.0,
               warm_up_seconds: float = WARM_UP_SECONDS) -> SoakResult:
    pcm = (np.clip(audio, -1, 32767 / 32768) * 32768).round().astype("<i2")
    result = SoakResult(rooms, minutes, warm_up_seconds=warm_up_seconds)
    until = time.monotonic() + minutes * 60.0
    tasks = []
    for i in range(rooms):  # starts spread over a second, like independent clients
        tasks.append(asyncio.create_task(_room(base, i, pcm, rate, until, churn_seconds, result)))
        await asyncio.sleep(1.0 / max(1, rooms))
    sampler = asyncio.create_task(_sample(server, until, sample_seconds, result))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await sampler
    for o in outcomes:
        if isinstance(o, BaseException):
            key = f"client {type(o).__name__}"
            result.errors[key] = result.errors.get(key, 0) + 1
    return result


def summary(result: SoakResult, server: Any) -> dict[str, Any]:
    rss_slope, fd_slope = result.slopes()
    first, last = (result.samples[0], result.samples[-1]) if result.samples else ((0, float("nan"), 0),) * 2
    return {
        "rooms": result.rooms,
        "minutes": result.minutes,
        "updates": result.updates,
        "missed_updates (seq gaps)": result.seq_gaps,
        "updates per room-minute": round(result.updates / max(1e-9, result.rooms * result.minutes), 1),
        "stalls (a listener connected for 10 s without an update while its source streams)": result.stalls,
        "stalls, first 20": result.stall_log,
        "listener reconnects": result.reconnects,
        "errors": result.errors,
        "rss_mb start/end": [round(first[1], 1), round(last[1], 1)],
        "slopes fitted after (s)": result.warm_up_seconds,
        "rss_mb per minute after warm-up": round(rss_slope, 3),
        "rss_mb per hour after warm-up": round(rss_slope * 60, 2),
        "fds start/end": [first[2], last[2]],
        "fds per minute after warm-up": round(fd_slope, 3),
        "server tracebacks": None if server is None else server.tracebacks,
        "server ERROR lines": None if server is None else server.errors,
        "machine load average (1, 5, 15 min) at the end": [round(x, 1) for x in os.getloadavg()],
    }

"""`hostile cluster`: N rooms on 2-3 real server processes sharing them through a real `redis-server`, each process
reaching Redis through a TCP proxy this command controls (asyncio, loopback only), for M minutes of random faults:
Redis stopped (and restarted empty), one process's broker connection stalled or dropped, a process killed (-9) and
started again, a source reconnecting to another process while a rival tries to take its room.

Every room has a source (streaming audio in real time, announcing a track id of its own on every connection) and a
listener on every process. What is checked, from what the clients saw:
- one source per room at any time: at every listener, the updates of one source connection never resume after
  another source's updates began (a fenced process's late updates would), and a rival is never accepted while the
  room's source is connected and the cluster is healthy;
- `seq` never decreases at any listener connection, and every gap in it is announced by a `resync` just before;
- every update published while the broker was reachable (no fault on the source's process, on the listener's, or on
  Redis, within a margin of lease + reconnect) reaches every listener of its room that was connected throughout.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .harness import FRAME_SECONDS, ServerProcess
from .proxy import FaultProxy

LEASE_SECONDS = 1.5
RECONNECT_MAX_SECONDS = 0.5
FAULTS = ("redis_stop", "stall", "drop", "kill", "reconnect")
MARGIN_BEFORE = 1.0  # seconds before a fault from which an update may already be lost (queued, not yet written)
MARGIN_AFTER = LEASE_SECONDS + RECONNECT_MAX_SECONDS + 2.5  # after it: reconnection, resync, lease renewal
COVER_BEFORE, COVER_AFTER = 1.0, 3.0  # a listener must be connected this long around an update to be owed it
RATE = 16000


class RedisProcess:
    """A throw-away `redis-server` (no persistence) on a free loopback port, which can be stopped (-9) and started
    again on the same port (the tests' Redis too)."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.exe = exe
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisProcess":
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@dataclass
class Window:
    kind: str
    slot: int | None  # the process it hit (None: Redis, every process)
    start: float
    end: float = float("inf")

    def hits(self, slot: int, t0: float, t1: float) -> bool:
        return (self.slot is None or self.slot == slot) and self.start - MARGIN_BEFORE <= t1 and t0 <= self.end + MARGIN_AFTER


@dataclass
class Heard:
    room: str
    slot: int
    opened: float
    closed: float = float("inf")
    moods: list[tuple[float, int, str]] = field(default_factory=list)  # (time, seq, track id)
    messages: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Figures:
    rooms: int
    processes: int
    minutes: float
    faults: dict[str, int] = field(default_factory=dict)
    published: int = 0  # updates the sources received of their own (every update of the cluster)
    owed: int = 0  # (update, listener) pairs that had to arrive
    missed: int = 0
    missed_examples: list[str] = field(default_factory=list)
    seq_decreases: int = 0
    unannounced_gaps: int = 0
    resyncs: int = 0
    interleavings: int = 0  # a source's updates resuming at a listener after another source's had begun
    rivals_accepted_while_held: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    source_connections: int = 0
    listener_connections: int = 0
    disconnect_notice_seconds: list[float] = field(default_factory=list)  # kill -9 -> listeners elsewhere told

    @property
    def violations(self) -> int:
        return self.missed + self.seq_decreases + self.unannounced_gaps + self.interleavings + self.rivals_accepted_while_held


class Cluster:
    def __init__(self, processes: int, rooms: int, minutes: float, seed: int, model: str | None) -> None:
        self.n = processes
        self.room_names = [f"c{i}" for i in range(rooms)]
        self.minutes = minutes
        self.rng = random.Random(seed)
        self.model = model
        self.redis = RedisProcess()
        self.proxies: list[FaultProxy] = []
        self.procs: list[ServerProcess | None] = [None] * processes
        self.windows: list[Window] = []
        self.heard: list[Heard] = []
        self.published: list[tuple[str, int, float, int]] = []  # (room, seq, time, slot of the source)
        self.figures = Figures(rooms, processes, minutes)
        self.reconnect_now: set[str] = set()
        self.until = 0.0
        self._killed_at: dict[int, float] = {}
        t = np.arange(int(RATE * 30)) / RATE
        tone = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.05 * np.sin(0.7 * t))) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t))
        self.audio = (tone * 32767).astype("<i2")

    # ------------------------------------------------------------------------------------------------ processes

    def _config(self, slot: int) -> dict[str, Any]:
        config: dict[str, Any] = {
            "broker": {"url": f"redis://127.0.0.1:{self.proxies[slot].port}/0", "lease_seconds": LEASE_SECONDS,
                       "reconnect_max_seconds": RECONNECT_MAX_SECONDS, "connect_timeout_seconds": 2.0},
            "logging": {"level": "warning"},
        }
        if self.model:
            config["model"] = {"path": self.model}
        return config

    async def _start_process(self, slot: int) -> None:
        self.procs[slot] = await asyncio.to_thread(lambda: ServerProcess(self._config(slot)).start())

    def url(self, slot: int) -> str | None:
        p = self.procs[slot]
        return f"ws://127.0.0.1:{p.port}" if p is not None and p.alive else None

    def alive_slots(self) -> list[int]:
        return [i for i in range(self.n) if self.url(i) is not None]

    def healthy(self, slot: int, t0: float, t1: float) -> bool:
        return not any(w.hits(slot, t0, t1) for w in self.windows)

    # ------------------------------------------------------------------------------------------------ clients

    async def _listener(self, room: str, slot: int) -> None:
        from websockets.asyncio.client import connect

        while time.monotonic() < self.until:
            base = self.url(slot)
            if base is None:
                await asyncio.sleep(0.2)
                continue
            try:
                async with connect(f"{base}/v1/rooms/{room}", proxy=None, compression=None, open_timeout=5) as ws:
                    heard = Heard(room, slot, time.monotonic())
                    self.heard.append(heard)
                    self.figures.listener_connections += 1
                    try:
                        while time.monotonic() < self.until:
                            raw = await asyncio.wait_for(ws.recv(), max(0.05, self.until - time.monotonic()))
                            msg = json.loads(raw)
                            heard.messages.append(msg)
                            if msg["type"] == "mood":
                                heard.moods.append((time.monotonic(), msg["seq"], (msg.get("track") or {}).get("id", "")))
                            elif msg["type"] == "source" and msg["state"] == "disconnected":
                                self._notice(slot)
                    except (TimeoutError, Exception):
                        pass
                    heard.closed = time.monotonic()
            except Exception:
                await asyncio.sleep(0.2)

    def _notice(self, slot: int) -> None:
        """A listener on `slot` heard a source leave: how long after a kill of another process, if one is recent."""
        now = time.monotonic()
        for killed, t in self._killed_at.items():
            if killed != slot and now - t < 4 * LEASE_SECONDS:
                self.figures.disconnect_notice_seconds.append(round(now - t, 2))

    async def _source(self, room: str) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        step = int(RATE * FRAME_SECONDS)
        k = self.room_names.index(room) * 7919
        connection = 0
        while time.monotonic() < self.until:
            slots = self.alive_slots()
            if not slots:
                await asyncio.sleep(0.2)
                continue
            slot = self.rng.choice(slots)
            base = self.url(slot)
            try:
                ws = await connect(f"{base}/v1/rooms/{room}?role=source&sample_rate={RATE}", proxy=None,
                                   compression=None, open_timeout=5)
            except InvalidStatus as e:
                code = str(e.response.status_code)
                self.figures.refusals[code] = self.figures.refusals.get(code, 0) + 1
                await asyncio.sleep(self.rng.uniform(0.1, 0.4))
                continue
            except Exception:
                await asyncio.sleep(0.2)
                continue
            connection += 1
            self.figures.source_connections += 1
            track = f"{room}-{connection}"
            own = asyncio.ensure_future(self._own_updates(ws, room, slot))
            try:
                await ws.send(json.dumps({"type": "track", "id": track}))
                t0 = time.monotonic()
                sent = 0
                while time.monotonic() < self.until and not own.done():
                    if room in self.reconnect_now:
                        self.reconnect_now.discard(room)
                        await self._rival(room, slot, connect, InvalidStatus)
                        break
                    i = (k * step) % (self.audio.size - step)
                    await ws.send(self.audio[i : i + step].tobytes())
                    k += 1
                    sent += 1
                    delay = t0 + sent * FRAME_SECONDS - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
            except Exception:
                pass
            finally:
                await ws.close()
                own.cancel()

    async def _own_updates(self, ws: Any, room: str, slot: int) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "mood":
                self.published.append((room, msg["seq"], time.monotonic(), slot))

    async def _rival(self, room: str, held_on: int, connect: Any, invalid: type[Exception]) -> None:
        """While the room's source is connected on `held_on`, a second source tries another process: refused."""
        others = [s for s in self.alive_slots() if s != held_on] or [held_on]
        slot = self.rng.choice(others)
        t = time.monotonic()
        try:
            async with connect(f"{self.url(slot)}/v1/rooms/{room}?role=source&sample_rate={RATE}", proxy=None, open_timeout=5):
                if self.healthy(held_on, t, t) and self.healthy(slot, t, t):
                    self.figures.rivals_accepted_while_held += 1
        except invalid as e:
            code = f"rival {e.response.status_code}"
            self.figures.refusals[code] = self.figures.refusals.get(code, 0) + 1
        except Exception:
            pass

    # ------------------------------------------------------------------------------------------------ faults

    async def _faults(self) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(3.0, 7.0))
            if time.monotonic() > self.until - 8:
                return
            kind = self.rng.choice(FAULTS)
            slot = self.rng.randrange(self.n)
            self.figures.faults[kind] = self.figures.faults.get(kind, 0) + 1
            now = time.monotonic()
            if kind == "reconnect":
                self.reconnect_now.add(self.rng.choice(self.room_names))
                continue
            window = Window(kind, None if kind == "redis_stop" else slot, now)
            self.windows.append(window)
            if kind == "redis_stop":
                await asyncio.to_thread(self.redis.stop)
                await asyncio.sleep(self.rng.uniform(1.0, 4.0))
                await asyncio.to_thread(self.redis.start)
            elif kind == "stall":
                self.proxies[slot].stall()
                await asyncio.sleep(self.rng.uniform(0.5, 3.0 * LEASE_SECONDS))
                self.proxies[slot].resume()
            elif kind == "drop":
                self.proxies[slot].drop()
            elif kind == "kill" and self.procs[slot] is not None:
                self._killed_at[slot] = now
                self.procs[slot].proc.kill()  # type: ignore[union-attr]
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
                await asyncio.to_thread(self.procs[slot].stop)  # type: ignore[union-attr]
                await self._start_process(slot)
            window.end = time.monotonic()

    # ------------------------------------------------------------------------------------------------ run and check

    async def run(self) -> Figures:
        self.redis.start()
        try:
            self.proxies = [await FaultProxy(self.redis.port).start() for _ in range(self.n)]
            for slot in range(self.n):
                await self._start_process(slot)
            self.until = time.monotonic() + self.minutes * 60
            tasks = [asyncio.ensure_future(self._listener(r, s)) for r in self.room_names for s in range(self.n)]
            await asyncio.sleep(1.0)  # listeners first: they hear each source arrive
            tasks += [asyncio.ensure_future(self._source(r)) for r in self.room_names]
            faults = asyncio.ensure_future(self._faults())
            await asyncio.gather(*tasks, return_exceptions=True)
            faults.cancel()
        finally:
            for p in self.procs:
                if p is not None:
                    await asyncio.to_thread(p.stop)
            for x in self.proxies:
                await x.close()
            self.redis.stop()
        self._check()
        return self.figures

    def _check(self) -> None:
        f = self.figures
        f.published = len(self.published)
        for h in self.heard:
            last = 0
            seen_tracks: list[str] = []
            for msg in h.messages:
                if msg["type"] == "resync":
                    f.resyncs += 1
                    last = max(last, msg["to_seq"])
                elif msg["type"] == "mood":
                    if msg["seq"] <= last:
                        f.seq_decreases += 1
                    elif last and msg["seq"] != last + 1:
                        f.unannounced_gaps += 1
                    last = max(last, msg["seq"])
                    track = (msg.get("track") or {}).get("id", "")
                    if track and (not seen_tracks or seen_tracks[-1] != track):
                        if track in seen_tracks:
                            f.interleavings += 1
                        seen_tracks.append(track)
        by_room: dict[str, list[Heard]] = {}
        for h in self.heard:
            by_room.setdefault(h.room, []).append(h)
        for room, seq, t, src_slot in self.published:
            if not self.healthy(src_slot, t, t):
                continue
            for h in by_room.get(room, []):
                if not (h.opened <= t - COVER_BEFORE and t + COVER_AFTER <= h.closed) or not self.healthy(h.slot, t, t):
                    continue
                f.owed += 1
                if not any(s == seq for _, s, _ in h.moods):
                    f.missed += 1
                    if len(f.missed_examples) < 10:
                        f.missed_examples.append(self._explain(room, seq, t, src_slot, h))


    def _explain(self, room: str, seq: int, t: float, src_slot: int, h: Heard) -> str:
        """A missed update with what is needed to understand it: the nearest fault and whether a resync told."""
        near = min(self.windows, key=lambda w: min(abs(t - w.start), abs(t - w.end)), default=None)
        told = any(m["type"] == "resync" and m["from_seq"] <= seq <= m["to_seq"] for m in h.messages)
        fault = f"; nearest fault: {near.kind} on {'Redis' if near.slot is None else f'process {near.slot}'} " \
                f"{t - near.start:+.1f} s from its start, {t - near.end:+.1f} s from its end" if near else ""
        return (f"{room} seq {seq} (source on process {src_slot}) at the listener on process {h.slot}"
                f"{', announced by a resync' if told else ', not announced'}{fault}")


def report(f: Figures) -> dict[str, Any]:
    notices = sorted(f.disconnect_notice_seconds)
    return {
        "rooms": f.rooms, "processes": f.processes, "minutes": f.minutes,
        "faults": dict(sorted(f.faults.items())),
        "updates published": f.published,
        "deliveries owed (published while the broker was reachable, listener connected throughout)": f.owed,
        "missed": f.missed, "missed, first 10": f.missed_examples,
        "seq decreases at a listener": f.seq_decreases,
        "gaps without a resync": f.unannounced_gaps,
        "resync messages": f.resyncs,
        "a source's updates resuming after another's (two sources streaming)": f.interleavings,
        "rivals accepted while the room's source was connected and the cluster healthy": f.rivals_accepted_while_held,
        "source connections": f.source_connections, "listener connections": f.listener_connections,
        "refusals seen by sources (HTTP status)": dict(sorted(f.refusals.items())),
        "kill -9 -> `source: disconnected` at listeners elsewhere, s (median, max)":
            [notices[len(notices) // 2], notices[-1]] if notices else None,
        "violations": f.violations,
    }


def run_cluster(processes: int, rooms: int, minutes: float, seed: int, model: str | None) -> Figures:
    return asyncio.run(Cluster(processes, rooms, minutes, seed, model).run())

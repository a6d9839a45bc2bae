"""What both hostile commands need: a real server process, its resource use, and a well-behaved room streaming
beside the attack that must miss no update."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

LISTEN_RE = re.compile(r"listening on ws://([0-9.]+):(\d+)")
GOOD_ADDRESS = "127.0.0.2"  # the well-behaved clients connect from here: the attack's per-address limits are not theirs
FRAME_SECONDS = 0.1
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "moods-4q"
LOG_LINES = 2000


class ServerProcess:
    """`python -m sendreturn_mood serve --port 0` with a config (only the keys it changes), its stderr collected."""

    def __init__(self, config: dict[str, Any], model: str | None = None) -> None:
        self.config = config
        self.model = model
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.tracebacks = 0
        self.errors = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="hostile-")

    def start(self) -> "ServerProcess":
        cfg = Path(self._tmp.name) / "config.yaml"
        cfg.write_text(yaml.safe_dump(self.config))
        cmd = [sys.executable, "-m", "sendreturn_mood", "serve", "--port", "0", "--config", str(cfg)]
        if self.model:
            cmd += ["--model", self.model]
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        m = LISTEN_RE.search(line)
        if not m:
            self.stop()
            raise RuntimeError(f"the server did not start: {line!r} {list(self.log)[-5:]}")
        self.proc.stdout.readline()  # type: ignore[union-attr]  # the model line
        self.port = int(m.group(2))
        return self

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())
            if line.startswith("Traceback"):
                self.tracebacks += 1
            if " ERROR " in line or " CRITICAL " in line:
                self.errors += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():  # type: ignore[union-attr]
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))  # type: ignore[union-attr]

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._reader.join(5)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        self._tmp.cleanup()
        return None if self.proc is None else self.proc.returncode


def load_audio(seconds: float, rate: int, songs: int = 3) -> np.ndarray:
    """Mono float32 at `rate`: real songs from ../shared/data when present (concatenated), else a synthetic mix."""
    from ..room.offline import read_blocks
    from ..audio.resample import resample

    files = sorted(DATA.glob("Q*/*.mp3"))[:: max(1, len(sorted(DATA.glob("Q*/*.mp3"))) // max(1, songs))][:songs]
    parts = []
    for path in files:
        sr, blocks = read_blocks(path)
        y = np.concatenate(list(blocks))
        parts.append(resample(y, sr, rate) if sr != rate else y)
    if not parts:
        t = np.arange(int(seconds * rate)) / rate
        parts = [(0.2 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(t))) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2)]
    y = np.concatenate(parts).astype(np.float32)
    return np.clip(y, -1, 1)


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) pairs, per minute."""
    if len(samples) < 2:
        return float("nan")
    t = np.array([s[0] for s in samples])
    v = np.array([s[1] for s in samples])
    return float(np.polyfit(t, v, 1)[0] * 60.0)


@dataclass
class RoomReport:
    room: str
    expected: int = 0  # windows the server must analyse for the audio sent (computed here with the same pipeline)
    received: int = 0  # mood updates the listener got
    seq_gaps: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    done: bool = False
    failure: str | None = None

    @property
    def missed(self) -> int:
        return max(0, self.expected - self.received) + self.seq_gaps


class GoodRoom:
    """A source streaming real audio in real time (s16le, 100 ms frames) and a listener, in their own thread and
    event loop; `stop()` sends `end` and returns what the listener saw against what it should have seen."""

    def __init__(
        self, base_url: str, room: str, audio: np.ndarray, rate: int, config: dict[str, Any],
        source_address: str = GOOD_ADDRESS, token: str | None = None,
    ) -> None:
        self.base_url = base_url
        self.room = room
        self.audio = (np.clip(audio, -1, 32767 / 32768) * 32768).round().astype("<i2")
        self.rate = rate
        self.config = config
        self.source_address = source_address
        self.token = token  # for a server that requires one
        self.report = RoomReport(room)
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True, name=f"good-{room}")

    def start(self, timeout: float = 30.0) -> "GoodRoom":
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"the well-behaved room did not start: {self.report.failure}")
        return self

    def stop(self, timeout: float = 120.0) -> RoomReport:
        self._stop.set()
        self._thread.join(timeout)
        return self.report

    async def _run(self) -> None:
        from websockets.asyncio.client import connect

        from ..config import load_config
        from ..model.contract import MoodModel
        from ..audio.pipeline import AnalysisStream, window_plan

        try:
            config = load_config(None, _flatten(self.config))
            info = MoodModel(config.model.path).info
            stream = AnalysisStream(info.frontend, self.rate, window_plan(info, config))
            url = f"{self.base_url}/v1/rooms/{self.room}"
            local = {"local_addr": (self.source_address, 0)} if self.source_address else {}
            # ping_interval=None: the client's own pings draw from the global `random`, which Hypothesis (running the
            # attack in the main thread at the same time) reports as a strategy using `random`; the server pings anyway
            opts: dict[str, Any] = dict(proxy=None, compression=None, ping_interval=None, **local)
            if self.token is not None:
                opts["additional_headers"] = {"Authorization": f"Bearer {self.token}"}
            async with connect(url, **opts) as listener, connect(f"{url}?role=source&sample_rate={self.rate}", **opts) as source:
                reading = asyncio.create_task(self._listen(listener))
                own = asyncio.create_task(self._drain(source))
                self._started.set()
                step = int(self.rate * FRAME_SECONDS)
                t0 = time.monotonic()
                k = 0
                while not self._stop.is_set():
                    i = (k * step) % (self.audio.size - step)
                    chunk = self.audio[i : i + step]
                    await source.send(chunk.tobytes())
                    self.report.expected += len(stream.push(chunk.astype(np.float32) / 32768.0))
                    k += 1
                    delay = t0 + k * FRAME_SECONDS - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                self.report.expected += len(stream.finish())
                await source.send(json.dumps({"type": "end"}))
                await asyncio.wait_for(own, 60)
                await asyncio.wait_for(reading, 60)
            self.report.done = True
        except Exception as e:  # reported, never raised into the attacker's thread
            self.report.failure = f"{type(e).__name__}: {e}"
            self._started.set()

    async def _drain(self, ws: Any) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "error":
                self.report.errors[msg["code"]] = self.report.errors.get(msg["code"], 0) + 1

    async def _listen(self, ws: Any) -> None:
        last = 0
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "mood":
                self.report.received += 1
                if last and msg["seq"] != last + 1:
                    self.report.seq_gaps += msg["seq"] - last - 1
                last = msg["seq"]
            elif msg["type"] == "source" and msg["state"] == "disconnected":
                return
            elif msg["type"] == "error":
                self.report.errors[msg["code"]] = self.report.errors.get(msg["code"], 0) + 1


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

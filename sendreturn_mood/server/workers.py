"""`serve --workers N`: N server processes on one port (SO_REUSEPORT), sharing rooms through the broker.

One process is one core's worth of rooms (the event loop and the audio path are single-threaded). The kernel
spreads new connections over the N processes listening on the port; a room's source and its listeners may land on
different processes, so the workers need a broker (`broker.url`) and this refuses to start without one (the config
check says why). This supervisor only starts, watches and stops processes: it never loads the model or touches a
room. A worker that dies unexpectedly is restarted (with backoff); SIGINT/SIGTERM stop them all (clients get 1001).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from ..config import Settings

log = logging.getLogger(__name__)

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder this sendreturn_mood package was imported from
START_TIMEOUT_SECONDS = 120.0  # a worker loads the model and warms up before it prints its listening line
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_SECONDS = 60.0  # a worker that ran this long before dying restarts without the backoff it had earned


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket so that port 0 becomes one concrete port every worker can share;
    it is kept open while the workers run so no other program takes the number meanwhile."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class Supervisor:
    def __init__(self, n: int, worker_args: list[str], config: Settings) -> None:
        self.n = n
        self.worker_args = worker_args
        self.config = config
        self.stopping = False
        self.procs: dict[int, asyncio.subprocess.Process] = {}

    async def _spawn(self, index: int, port: int) -> str:
        """Start worker `index`; return its listening line once it is serving."""
        # -P and PYTHONPATH: a worker runs this very package, not whatever `sendreturn_mood` the working directory
        # holds (`python -m` would put the working directory first: at a repository root, the source folder)
        cmd = [sys.executable, "-P", "-m", "sendreturn_mood", "serve", *self.worker_args, "--port", str(port), "--reuse-port"]
        metrics_port = self.config.server.metrics_port
        if metrics_port is not None:  # each worker its own metrics port, so every worker can be scraped
            cmd += ["--metrics-port", str(metrics_port + index)]
        path = os.pathsep.join(p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, SENDRETURN_WORKER=str(index), PYTHONUNBUFFERED="1", PYTHONPATH=path)
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, env=env)
        self.procs[index] = proc
        assert proc.stdout is not None
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_SECONDS)).decode().strip()
            model = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_SECONDS)).decode().strip()
        except TimeoutError:
            proc.kill()
            raise RuntimeError(f"worker {index} did not start within {START_TIMEOUT_SECONDS:.0f} s") from None
        if not line.startswith("listening on"):
            await proc.wait()
            raise RuntimeError(f"worker {index} failed to start (exit {proc.returncode}); its error is above")
        asyncio.get_running_loop().create_task(self._drain(proc))
        return f"{line}\n{model}"

    @staticmethod
    async def _drain(proc: asyncio.subprocess.Process) -> None:
        """Keep reading a worker's stdout so it never blocks on a full pipe."""
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    async def run(self) -> int:
        s = self.config.server
        reserved = reserve_port(s.host, s.port)
        port = reserved.getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            lines = await asyncio.gather(*(self._spawn(i, port) for i in range(self.n)))
        except RuntimeError as e:
            await self._stop_all()
            reserved.close()
            print(f"error: {e}", file=sys.stderr)
            return 1
        first, model = lines[0].split("\n", 1)
        print(f"{first} [{self.n} workers, broker {_redacted_broker(self.config)}]", flush=True)
        print(model, flush=True)
        watchers = [loop.create_task(self._watch(i, port)) for i in range(self.n)]
        await stop.wait()
        self.stopping = True
        for w in watchers:
            w.cancel()
        log.info("stopping %d workers", self.n)
        await self._stop_all()
        reserved.close()
        return 0

    async def _watch(self, index: int, port: int) -> None:
        """Restart worker `index` whenever it exits while we are not stopping."""
        attempt = 0
        while not self.stopping:
            proc = self.procs[index]
            started = loop_time()
            code = await proc.wait()
            if self.stopping:
                return
            attempt = 0 if loop_time() - started > HEALTHY_SECONDS else attempt + 1
            delay = RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)]
            log.error("worker %d exited with %s; restarting in %.0f s", index, code, delay)
            await asyncio.sleep(delay)
            try:
                await self._spawn(index, port)
            except RuntimeError as e:
                log.error("%s", e)

    async def _stop_all(self) -> None:
        timeout = self.config.server.shutdown_timeout_seconds + 5.0
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def _redacted_broker(config: Settings) -> str:
    from ..broker.redis_broker import redact

    return redact(str(config.broker.url))


def run(n: int, worker_args: list[str], config: Settings) -> int:
    return asyncio.run(Supervisor(n, worker_args, config).run())

"""Real parts for the cluster tests: a `redis-server` of our own on a free 127.0.0.1 port, and server processes
started exactly as a user starts them (`python -m sendreturn_mood serve --broker redis://...`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from sendreturn_mood.hostile.cluster import RedisProcess
from tests.server_support import TEST_SETTINGS

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer(RedisProcess):
    """A throw-away redis-server (no persistence) that a test can stop and start again on the same port."""

    def __init__(self) -> None:
        try:
            super().__init__()
        except FileNotFoundError:
            pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")


def write_config(folder: Path, **extra: Any) -> Path:
    """The server tests' settings (short windows, generous rate limit) as a YAML file for server processes."""
    nested: dict[str, Any] = {}
    for dotted, value in {**TEST_SETTINGS, "logging.level": "warning", **extra}.items():
        if dotted in ("server.port",):
            continue
        cur = nested
        *parents, last = dotted.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = value
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(nested))
    return path


class ServerProcess:
    """`python -m sendreturn_mood serve` in its own process; `url` once it printed its listening line."""

    def __init__(self, config: Path, model: Path, broker: str | None, *extra: str) -> None:
        cmd = [sys.executable, "-m", "sendreturn_mood", "serve", "--port", "0", "--config", str(config), "--model", str(model)]
        if broker:
            cmd += ["--broker", broker]
        cmd += list(extra)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.log = tempfile.TemporaryFile(mode="w+")  # the server's log, shown when it fails to start
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO, env=env)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("listening on "):
            self.proc.wait(30)
            self.log.seek(0)
            error = self.log.read()
            self.stop()
            raise RuntimeError(f"server did not start: {line!r} {error}")
        self.url = line.split()[2]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.model_line = self.proc.stdout.readline()  # type: ignore[union-attr]

    def http(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                body = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            body, status = e.read(), e.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int:
        """SIGTERM (the server closes its clients with 1001), then its exit code; pipes and log closed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if not self.log.closed:
            self.log.close()
        return int(self.proc.returncode)

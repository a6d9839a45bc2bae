"""Helpers for the server tests: a real in-process server on 127.0.0.1 port 0, real websocket clients, test audio.

Tests use short windows and hops (fast) and a high rate limit (they stream faster than real time) unless a test
is about those settings.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlencode

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sendreturn_mood import contract
from sendreturn_mood.config import load_config
from sendreturn_mood.model.contract import MoodModel
from sendreturn_mood.audio.pcm import encode
from sendreturn_mood.server.app import MoodServer

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

TEST_SETTINGS: dict[str, Any] = {
    "server.host": "127.0.0.1",
    "server.port": 0,
    "server.rate_limit_factor": 10000.0,
    "server.rate_limit_burst_seconds": 600.0,
    "server.shutdown_timeout_seconds": 3,
    "analysis.window_seconds": 1.0,
    "analysis.hop_seconds": 0.5,
    "analysis.min_seconds": 0.25,
    "smoothing.time_constant_seconds": 1.0,
}
TIMEOUT = 10.0


def server_config(**overrides: Any) -> dict[str, Any]:
    """The test config; keyword keys use '__' for '.', e.g. server__max_rooms=1."""
    settings = dict(TEST_SETTINGS)
    settings.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(None, settings)


@asynccontextmanager
async def running_server(model_path: Path, **overrides: Any) -> AsyncIterator[MoodServer]:
    server = MoodServer(server_config(**overrides), MoodModel(model_path))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def room_url(server: MoodServer, room: str, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{server.url}/v1/rooms/{room}" + (f"?{query}" if query else "")


def checked(msg: Any, union: str = contract.SERVER_MESSAGE) -> Any:
    """`msg` after validating it against the protocol's JSON Schema (strict: a field the schema does not list
    fails too, so the server and schema/v1/ cannot drift apart). Every server message the tests read passes here."""
    contract.validate_message(union, msg, strict=True)
    return msg


def checked_body(schema: str, body: bytes | str) -> Any:
    """A JSON HTTP body after validating it against schema/v1/{schema}.json (strict)."""
    obj = json.loads(body)
    contract.validate(schema, obj, strict=True)
    return obj


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    return checked(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


@asynccontextmanager
async def client(
    server: MoodServer, room: str, headers: dict[str, str] | None = None, own_source_state: bool = False, **params: Any
) -> AsyncIterator[tuple[ClientConnection, dict[str, Any]]]:
    """A connected client and its welcome message. A source also gets its own `source: connected` message; it
    is consumed here unless `own_source_state` (so tests start reading at the next message)."""
    async with connect(room_url(server, room, **params), proxy=None, compression=None, additional_headers=headers) as ws:
        welcome = await recv_json(ws)
        assert welcome["type"] == "welcome", welcome
        if welcome["role"] == "source" and not own_source_state:
            assert await recv_json(ws) == {"type": "source", "state": "connected"}
        yield ws, welcome


async def refusal(server: MoodServer, path_and_query: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Open a websocket that the server must refuse -> (HTTP status, JSON body)."""
    try:
        async with connect(f"{server.url}{path_and_query}", proxy=None, additional_headers=headers):
            pass
    except InvalidStatus as e:
        return e.response.status_code, checked_body("http-error", e.response.body)
    raise AssertionError(f"{path_and_query} was accepted")


async def read_until_closed(ws: ClientConnection, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """Every message until the server closes the connection."""
    out = []

    async def run() -> None:
        try:
            async for m in ws:
                out.append(checked(json.loads(m)))
        except ConnectionClosed:
            pass

    await asyncio.wait_for(run(), timeout)
    return out


async def read_messages(ws: ClientConnection, until: Any, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """Messages up to and including the first one for which `until(msg)` is true."""
    out = []
    while True:
        msg = await recv_json(ws, timeout)
        out.append(msg)
        if until(msg):
            return out


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """Interleaved float32 test audio: a tone plus a little noise, slightly different per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    chans = [amp * np.sin(2 * np.pi * freq * (1 + 0.01 * c) * t) + 0.02 * rng.standard_normal(t.size) for c in range(channels)]
    return np.stack(chans, axis=1).astype(np.float32).ravel()


async def send_audio(ws: ClientConnection, interleaved: np.ndarray, rate: int, channels: int, encoding: str, chunk_seconds: float = 0.1) -> None:
    step = int(rate * chunk_seconds) * channels
    for i in range(0, interleaved.size, step):
        await ws.send(encode(interleaved[i : i + step], encoding))


def http_get(server: MoodServer, path: str) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET on the server's port (blocking; call via asyncio.to_thread)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


def metric_value(text: str, name: str) -> float:
    """The value of one sample in Prometheus text, read with prometheus_client's own parser; `name` is the sample
    name with its labels as they are written, e.g. 'sendreturn_errors_total{code="bad_audio"}'."""
    from prometheus_client.parser import text_string_to_metric_families

    base, _, labels = name.partition("{")
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == base and sample.labels == wanted:
                return float(sample.value)
    raise AssertionError(f"{name} not in metrics")

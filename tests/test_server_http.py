"""HTTP on the websocket's port (/healthz, /metrics, room info, static files) and slow-client isolation."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sendreturn_mood.server.app import static_root
from tests.server_support import (
    checked_body,
    client,
    http_get,
    read_messages,
    read_until_closed,
    running_server,
    send_audio,
    tone,
)


async def get(server, path):
    return await asyncio.to_thread(http_get, server, path)


async def test_healthz(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        status, headers, body = await get(server, "/healthz")
        assert status == 200 and headers["content-type"] == "application/json"
        h = checked_body("healthz", body)
        assert h["status"] == "ok" and h["rooms"] == 0 and h["connections"] == 0
        assert h["model"]["name"] == "tiny-test-model" and h["model"]["version"] == "0.0.1"
        async with client(server, "h1"), client(server, "h1"), client(server, "h2", role="source"):
            h = checked_body("healthz", (await get(server, "/healthz"))[2])
            assert (h["rooms"], h["connections"]) == (2, 3)


async def test_health_and_metrics_stay_open_when_a_token_is_set(tiny_model_path):
    """Probes and Prometheus scrape without credentials: both carry counts only, never room names or audio."""
    async with running_server(tiny_model_path, server__auth_tokens=["s3cret"]) as server:
        async with client(server, "private-room", token="s3cret"):
            health = await get(server, "/healthz")
            metrics = await get(server, "/metrics")
    assert health[0] == 200 and json.loads(health[2])["rooms"] == 1
    assert metrics[0] == 200
    assert b"private-room" not in health[2] and b"private-room" not in metrics[2]


async def test_metrics_after_streaming(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        async with client(server, "m", role="source", sample_rate=16000) as (src, _):
            await send_audio(src, tone(2.0, 16000), 16000, 1, "pcm_s16le")
            await src.send(b"\x00")  # one bad_audio error
            await src.send(json.dumps({"type": "end"}))
            await read_until_closed(src)
        await asyncio.sleep(0.05)
        status, headers, body = await get(server, "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}  # prometheus_client's own parser
    expected = {"sendreturn_open_connections": "gauge", "sendreturn_accepted_connections": "counter",
                "sendreturn_rooms": "gauge", "sendreturn_audio_seconds": "counter",
                "sendreturn_windows_analysed": "counter", "sendreturn_batch_size": "histogram",
                "sendreturn_update_latency_seconds": "histogram", "sendreturn_errors": "counter",
                "sendreturn_dropped_messages": "counter", "sendreturn_inference_duration_seconds": "histogram",
                "sendreturn_inference_queue_windows": "gauge"}
    for name, kind in expected.items():
        assert families[name].type == kind, name
    for f in families.values():  # conventions: _total only on counters, units as suffix
        assert f.name.startswith("sendreturn_") and not f.name.endswith("_total"), f.name
        assert all(f.type == "counter" for s in f.samples if s.name.endswith("_total")), f.name

    def value(name: str, **labels: str) -> float:
        family = name.removesuffix("_total").removesuffix("_count").removesuffix("_bucket")
        (v,) = [s.value for s in families[family].samples if s.name == name and s.labels == labels]
        return v

    assert value("sendreturn_audio_seconds_total") == pytest.approx(2.0)
    assert value("sendreturn_windows_analysed_total") == 3  # 0.992, 1.488, 1.984
    assert value("sendreturn_update_latency_seconds_count") == 3
    assert value("sendreturn_update_latency_seconds_bucket", le="+Inf") == 3
    assert value("sendreturn_batch_size_count") >= 1
    assert value("sendreturn_errors_total", code="bad_audio") == 1
    assert value("sendreturn_open_connections", role="source") == 0
    assert value("sendreturn_accepted_connections_total", role="source") == 1
    assert value("sendreturn_rooms") == 0


async def test_room_info(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        status, _, body = await get(server, "/v1/rooms/nobody")
        assert status == 404 and checked_body("http-error", body)["error"]["code"] == "not_found"
        async with client(server, "info", role="source", sample_rate=16000) as (src, _), client(server, "info"):
            await send_audio(src, tone(1.0, 16000), 16000, 1, "pcm_s16le")
            await read_messages(src, lambda m: m["type"] == "mood")
            status, _, body = await get(server, "/v1/rooms/info")
    info = checked_body("room-info", body)
    assert status == 200
    assert info == {"room": "info", "source": True, "listeners": 1, "seq": 1, "track": None, "preset": "default", "audio_seconds": 1.0}


async def test_static_files_and_no_traversal(tiny_model_path):
    root = static_root()
    async with running_server(tiny_model_path) as server:
        if (root / "index.html").is_file():
            status, headers, body = await get(server, "/")
            assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
            assert body == (root / "index.html").read_bytes()
        for f in root.iterdir():
            if f.suffix == ".js":
                status, headers, body = await get(server, "/" + f.name)
                assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
                assert body == f.read_bytes()
        for bad in ("/../server.py", "/%2e%2e/server.py", "/..%2fserver.py", "/__init__.py", "/.hidden", "/static/../../x",
                    "//etc/passwd", "/%2fetc%2fpasswd", "/nope.html"):
            status, _, body = await get(server, bad)
            assert status == 404, bad
            assert checked_body("http-error", body)["error"]["code"] == "not_found"


async def test_slow_listener_does_not_stall_the_room(tiny_model_path):
    """A listener that never reads only loses (conflated) updates; the source and a normal listener get all."""
    async with running_server(tiny_model_path, analysis__hop_seconds=0.1, analysis__window_seconds=0.5, server__send_queue_size=2) as server:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", server.port))
        raw.sendall(
            b"GET /v1/rooms/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        for _ in range(100):  # wait until the stalled listener has joined
            if server.connections == 1:
                break
            await asyncio.sleep(0.02)
        # Simulate a constrained path to that client: a small kernel send buffer on the server's side, so the
        # stall reaches the server after a few kilobytes rather than after megabytes of loopback buffering.
        (stalled,) = server._server.connections  # type: ignore[union-attr]
        stalled.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        try:
            async with client(server, "slow") as (fast, _), client(server, "slow", role="source", sample_rate=16000) as (src, _):
                t0 = time.monotonic()

                async def stream() -> None:
                    await send_audio(src, tone(60.0, 16000), 16000, 1, "pcm_s16le", chunk_seconds=0.25)
                    await src.send(json.dumps({"type": "end"}))

                def disconnected(m: dict) -> bool:
                    return m["type"] == "source" and m["state"] == "disconnected"

                _, from_src, from_fast = await asyncio.gather(
                    stream(), read_until_closed(src, timeout=60), read_messages(fast, disconnected, timeout=60)
                )
                elapsed = time.monotonic() - t0
                src_msgs = [m for m in from_src if m["type"] == "mood"]
                fast_msgs = [m for m in from_fast if m["type"] == "mood"]
        finally:
            raw.close()
        dropped = server.metrics.dropped.get()
    n = len(src_msgs)
    assert n > 500
    assert [m["seq"] for m in src_msgs] == list(range(1, n + 1))  # the source got every update
    assert [m["seq"] for m in fast_msgs] == list(range(1, n + 1))  # so did the listener that reads
    assert dropped > 0  # the stalled listener's outbox conflated
    assert elapsed < 45


async def test_the_js_client_is_served_from_the_package(tiny_model_path):
    """The page imports ./client/index.js: the JS client package's files, served from inside sendreturn_mood (a
    symlink in a checkout, real files in a wheel through pyproject's package-dir mapping)."""
    import tomllib

    from tests.conftest import REPO

    js = REPO / "clients" / "js" / "src"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert pyproject["package-dir"]["sendreturn_mood.static.client"] == "clients/js/src"
    assert "sendreturn_mood.static.client" in pyproject["packages"]
    assert pyproject["package-data"]["sendreturn_mood.static.client"] == ["*.js"]
    assert 'from "./client/index.js"' in (static_root() / "app.js").read_text()
    async with running_server(tiny_model_path) as server:
        for name in ("index.js", "worklet.js"):
            status, headers, body = await get(server, f"/client/{name}")
            assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
            assert body == (js / name).read_bytes()
        for bad in ("/client/../../server.py", "/client/%2e%2e/index.js", "/client/.x"):
            assert (await get(server, bad))[0] == 404, bad

"""Hostile prepared tracks: every kind of bad PUT /v1/rooms/{room}/tracks/{id} and bad playback message against a
real server, each expected to get its own answer, while a well-behaved live room streams beside them (it must miss no
update) and a well-behaved prepared room keeps playing.

    python -m sendreturn_mood.hostile prepared [--url ws://HOST:PORT]

HTTP (raw sockets): more uploads at once than the server admits (429), not audio (415), audio longer than prepared.max_track_seconds (413), a Content-Length beyond the
upload limit (413, before any body), no body and no analysis (400), a reference to an analysis never stored (404),
a track id with a control character (400), a room filled to prepared.max_tracks_per_room (507 naming the limit),
GET of a track never put (404). Websocket: play of an unknown track (unknown_track, non-fatal), a listener's play
(not_allowed), positions negative, NaN, a string or past the end (bad_message), 40 position reports at once
(rate_limited, at most one such error per second, the connection stays), audio while a prepared track plays
(not_allowed); after all of it the attacked source's room still follows its track.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from typing import Any
from urllib.parse import quote

import numpy as np

from .uploads import UploadResult, exchange

PREPARED_SERVER_CONFIG: dict[str, Any] = {
    "server": {"rate_limit_factor": 4.0, "room_creations_per_minute": 100_000, "http_requests_per_second": 100_000},
    "prepared": {"max_tracks_per_room": 3, "max_track_seconds": 20},
    "analyze": {"max_bytes": 2_000_000, "upload_timeout_seconds": 2, "max_concurrent": 2},
    "logging": {"level": "warning"},
}
ROOM = "hostile-prepared"


def wav(seconds: float, rate: int = 16000) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    y = (0.3 * np.sin(2 * np.pi * 220 * (1 + (t // 2) % 3 * 0.25) * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, y, rate, format="WAV")
    return buf.getvalue()


def put(host: str, room: str, track: str, body: bytes, query: str = "", length: int | None = None, method: str = "PUT") -> bytes:
    n = len(body) if length is None else length
    target = f"/v1/rooms/{room}/tracks/{track}" + (f"?{query}" if query else "")
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n".encode() + body


def attack_prepared(host: str, port: int, base: str) -> tuple[UploadResult, dict[str, Any]]:
    """Every bad request and message once; (the HTTP answers, what the websocket side saw)."""
    r = UploadResult()
    hostname = f"{host}:{port}"
    go = lambda data: exchange(host, port, data)  # noqa: E731
    limits = PREPARED_SERVER_CONFIG
    r.check("not audio", 415, go(put(hostname, ROOM, "x", b"<html>not audio</html>" * 20)), "not audio")
    r.check("too long", 413, go(put(hostname, ROOM, "x", wav(limits["prepared"]["max_track_seconds"] + 5))), "max_track_seconds")
    r.check("too big (declared)", 413, go(put(hostname, ROOM, "x", b"", length=10**10)), "limit")
    r.check("no body, no analysis", 400, go(put(hostname, ROOM, "x", b"")), "?analysis=")
    r.check("unknown analysis", 404, go(put(hostname, ROOM, "x", b"", query="analysis=" + "0" * 32)), "analysis")
    r.check("control character in the id", 400, go(put(hostname, ROOM, quote("a\nb"), wav(4))))
    good = go(put(hostname, ROOM, "song", wav(12)))
    r.check("a good track", 200, good)
    analysis = good[2].get("analysis", "") if isinstance(good[2], dict) else ""
    for i in range(limits["prepared"]["max_tracks_per_room"] - 1):
        go(put(hostname, ROOM, f"more{i}", b"", query=f"analysis={analysis}"))
    r.check("room full", 507, go(put(hostname, ROOM, "one-too-many", b"", query=f"analysis={analysis}")), "max_tracks_per_room")
    r.check("never put", 404, go(put(hostname, ROOM, "never", b"", method="GET")))
    # more uploads at once than the server admits: hold max_concurrent half-sent, then one more is 429
    held = [socket.create_connection((host, port), timeout=30) for _ in range(limits["analyze"]["max_concurrent"])]
    try:
        for s in held:
            s.sendall(put(hostname, ROOM, "held", b"RIFF", length=500_000))
        time.sleep(0.5)
        r.check("too many at once", 429, go(put(hostname, "other-room", "x", wav(4))), "max_concurrent")
    finally:
        for s in held:
            s.close()
    seen = asyncio.run(_playback(base))
    for case, ok in seen["checks"].items():
        if not ok:
            r.violations.append(f"websocket: {case}")
    return r, seen


async def _playback(base: str) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    checks: dict[str, bool] = {}
    errors: list[dict[str, Any]] = []

    async def next_error(ws: Any, timeout: float = 5.0) -> dict[str, Any] | None:
        try:
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
                if msg["type"] == "error":
                    errors.append(msg)
                    return msg
        except TimeoutError:
            return None

    async with connect(f"{base}/v1/rooms/{ROOM}?role=source&sample_rate=16000", proxy=None, compression=None, max_queue=None) as src, \
            connect(f"{base}/v1/rooms/{ROOM}", proxy=None, compression=None, max_queue=None) as lis:
        await src.send(json.dumps({"type": "play", "track": "nope"}))
        e = await next_error(src)
        checks["unknown track is unknown_track, not fatal"] = bool(e and e["code"] == "unknown_track" and not e["fatal"])
        await lis.send(json.dumps({"type": "play", "track": "song"}))
        e = await next_error(lis)
        checks["a listener's play is not_allowed"] = bool(e and e["code"] == "not_allowed")
        for bad in ('{"type": "play", "track": "song", "position": -1}', '{"type": "play", "track": "song", "position": NaN}',
                    '{"type": "play", "track": "song", "position": "3"}', '{"type": "play", "track": "song", "position": 1e300}',
                    '{"type": "position", "position": 1}'):
            await src.send(bad)
            e = await next_error(src)
            checks[f"{bad} is bad_message"] = bool(e and e["code"] == "bad_message")
        await src.send(json.dumps({"type": "play", "track": "song"}))
        for _ in range(40):
            await src.send(json.dumps({"type": "position", "position": 0.5}))
        limited = 0
        while (e := await next_error(src, 1.5)) is not None:
            limited += e["code"] == "rate_limited"
        checks["a flood of position reports is rate_limited (one error a second at most)"] = 1 <= limited <= 2
        await src.send(b"\0\0" * 1600)
        e = await next_error(src)
        checks["audio while a prepared track plays is not_allowed"] = bool(e and e["code"] == "not_allowed")
        await src.send(json.dumps({"type": "play", "track": "song", "position": 4.0}))  # after all that: still playing
        got = None
        try:
            while got is None:
                msg = json.loads(await asyncio.wait_for(lis.recv(), 5))
                got = msg if msg["type"] == "mood" and msg.get("prepared") else None
        except TimeoutError:
            pass
        checks["the room still follows its track"] = bool(got and abs(got["stream_time"] - 4.0) <= 1.5)
    return {"checks": checks, "errors": [(e["code"], e["message"][:100]) for e in errors]}


def run_beside_a_good_room(host: str, port: int, base: str, config: dict[str, Any]) -> tuple[UploadResult, dict[str, Any], Any]:
    """attack_prepared while a live GoodRoom streams; (HTTP result, websocket result, the room's report)."""
    from .harness import GoodRoom, load_audio

    good = GoodRoom(base, "hostile-prepared-good", load_audio(30, 16000, songs=1), 16000, config).start()
    try:
        result, seen = attack_prepared(host, port, base)
    finally:
        room = good.stop()
    return result, seen, room

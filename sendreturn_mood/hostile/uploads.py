"""Hostile uploads: every kind of bad POST /v1/analyze against a real server, each expected to get its own status
and a JSON body saying what was wrong, while a well-behaved room streams beside them (it must miss no update).

    python -m sendreturn_mood.hostile uploads [--url ws://HOST:PORT --token T]

What is sent (raw sockets, as a hostile client would): not audio (415), corrupt audio behind an MP3 header (422), a
truncated MP3 (422), an empty body (400), a Content-Length beyond the limit with no body behind it (413, answered
before any body), a chunked body that passes the limit (413), audio longer than the duration limit (413), a body
that stops arriving (408), no token and a wrong token (401), a malformed request head (400), and more analyses at
once than the server admits (429 with Retry-After), then one good upload (200) to show the server still analyses.
"""

from __future__ import annotations

import io
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

UPLOAD_SERVER_CONFIG: dict[str, Any] = {
    "server": {"auth_tokens": ["hostile-upload-token"], "rate_limit_factor": 4.0},
    "analyze": {"max_bytes": 1_000_000, "max_seconds": 20, "max_concurrent": 2, "upload_timeout_seconds": 2,
                "timeout_seconds": 60},
    "logging": {"level": "warning"},
}
TOKEN = "hostile-upload-token"
RATE = 22050


def music_mp3(seconds: float, rate: int = RATE) -> bytes:
    """An MP3 of a changing chord with a pulse (made here: no data needed)."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    root = 220.0 * 2 ** (np.floor(t / 2.0) % 5 / 12)
    y = sum(np.sin(2 * np.pi * root * r * t) for r in (1.0, 1.26, 1.5)) / 3 * (0.5 + 0.5 * np.exp(-((t * 2) % 1) * 6)) * 0.4
    buf = io.BytesIO()
    sf.write(buf, y.astype(np.float32), rate, format="MP3")
    return buf.getvalue()


def exchange(host: str, port: int, data: bytes, pause_after: float = 0.0, timeout: float = 30.0) -> tuple[int, dict[str, str], Any]:
    """Send raw bytes (optionally stop sending for `pause_after` s without closing), read the answer until the
    server closes: (status, headers, JSON body or the raw bytes)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # the server answered early and closed: read the answer
            pass
        if pause_after:
            time.sleep(pause_after)
        raw = b""
        try:
            while chunk := s.recv(65536):
                raw += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body[:200]
    return status, headers, parsed


def post(host: str, body: bytes, token: str | None = TOKEN, extra: str = "", length: int | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    n = len(body) if length is None else length
    return f"POST /v1/analyze HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: {n}\r\n{extra}\r\n".encode() + body


def chunked(host: str, body: bytes, piece: int = 100_000) -> bytes:
    head = f"POST /v1/analyze HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + piece]), body[i : i + piece]) for i in range(0, len(body), piece))
    return head.encode() + chunks + b"0\r\n\r\n"


@dataclass
class UploadResult:
    answers: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # case -> (expected, got, message)
    violations: list[str] = field(default_factory=list)

    def check(self, case: str, expected: int, got: tuple[int, dict[str, str], Any], needs: str = "") -> None:
        status, headers, body = got
        message = body.get("error", {}).get("message", "") if isinstance(body, dict) else str(body)
        self.answers[case] = (expected, status, message[:160])
        if status != expected:
            self.violations.append(f"{case}: expected {expected}, got {status} ({message[:120]})")
        elif expected != 200 and not (isinstance(body, dict) and "code" in body.get("error", {})):
            self.violations.append(f"{case}: {status} without a JSON error body")
        elif needs and needs not in message:
            self.violations.append(f"{case}: the message does not say {needs!r}: {message[:120]}")


def attack_uploads(host: str, port: int, limits: dict[str, Any] = UPLOAD_SERVER_CONFIG["analyze"]) -> UploadResult:
    """Every bad upload once (and one good one); the result lists any answer that was not the expected one."""
    r = UploadResult()
    hostname = f"{host}:{port}"
    song = music_mp3(8.0)
    long_song = music_mp3(float(limits["max_seconds"]) + 5)
    go = lambda data, **kw: exchange(host, port, data, **kw)  # noqa: E731
    r.check("not audio", 415, go(post(hostname, b"<html>not audio</html>" * 20)), "not audio")
    r.check("empty", 400, go(post(hostname, b"")), "empty")
    r.check("corrupt mp3", 422, go(post(hostname, b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 300)))
    r.check("truncated mp3", 422, go(post(hostname, song[: len(song) // 3])), "truncated")
    r.check("too big (declared)", 413, go(post(hostname, b"", length=10**10)), "limit")
    r.check("too big (chunked)", 413, go(chunked(hostname, b"ID3" + bytes(int(limits["max_bytes"]) + 200_000))), "limit")
    if len(long_song) <= int(limits["max_bytes"]):
        r.check("too long", 413, go(post(hostname, long_song)), "the limit is")
    r.check("no token", 401, go(post(hostname, song, token=None)))
    r.check("wrong token", 401, go(post(hostname, song, token="not-the-token")))
    r.check("malformed head", 400, go(b"POST /v1/analyze HTTP/1.1\r\nHost: " + hostname.encode() + b"\r\nContent-Length: x\r\n\r\n"))
    r.check("body stops arriving", 408, go(post(hostname, b"ID3", length=500_000)))

    # more at once than the server admits: hold max_concurrent uploads half-sent, then one more is 429
    held = [socket.create_connection((host, port), timeout=30) for _ in range(int(limits["max_concurrent"]))]
    try:
        for s in held:
            s.sendall(post(hostname, b"ID3", length=500_000))
        time.sleep(0.5)
        got = go(post(hostname, song))
        r.check("too many at once", 429, got)
        if got[0] == 429 and not got[1].get("retry-after", "").isdigit():
            r.violations.append("too many at once: 429 without a Retry-After in seconds")
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    r.check("a good upload still works", 200, go(post(hostname, song)))
    return r


def run_beside_a_good_room(host: str, port: int, base: str, config: dict[str, Any]) -> tuple[UploadResult, Any]:
    """attack_uploads while a GoodRoom streams; (result, the room's report)."""
    from .harness import GoodRoom, load_audio

    good = GoodRoom(base, "hostile-uploads-good", load_audio(60, 16000, songs=1), 16000, config, token=TOKEN).start()
    try:
        result = attack_uploads(host, port, {**UPLOAD_SERVER_CONFIG["analyze"], **config.get("analyze", {})})
    finally:
        room = good.stop()
    return result, room

"""The edges of the server a real client meets (a real server, real websocket clients, raw sockets where a library
would refuse to send what is tested): a source whose audio clock disagrees with the wall clock."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from urllib.parse import urlencode

import numpy as np

from sendreturn_mood.audio.pcm import encode
from tests.server_support import checked, checked_body, client, read_until_closed, refusal, running_server, tone

CLOCK_SPAN = 3.0  # server.clock_check_seconds for the test (20 s by default)


async def stream_real_time(ws, audio: np.ndarray, frame: int, seconds: float) -> None:
    """Send `frame` samples of `audio` every 100 ms of wall clock for `seconds` (what a live source does)."""
    t0 = time.monotonic()
    for i in range(int(seconds * 10)):
        await ws.send(encode(audio[(i * frame) % (len(audio) - frame):][:frame], "pcm_s16le"))
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.1 - time.monotonic()))


async def test_a_source_lying_about_its_rate_is_told_the_measured_rate(tiny_model_path):
    """48 kHz audio, paced in real time, announced as 8000 Hz (its stream time runs at 6x), as 192000 Hz (0.25x)
    and honestly: the two liars get one non-fatal clock_mismatch error each with the rate that really arrives,
    keep streaming and end normally; the honest source gets none."""
    audio = tone(2.0, 48000)
    async with running_server(tiny_model_path, server__clock_check_seconds=CLOCK_SPAN) as server:

        async def source(room: str, declared: int) -> list[dict]:
            async with client(server, room, role="source", sample_rate=declared) as (ws, _):
                await stream_real_time(ws, audio, 4800, CLOCK_SPAN + 1.5)
                await ws.send(json.dumps({"type": "end"}))
                messages = await read_until_closed(ws, timeout=30)  # every one checked against the schema
                assert ws.close_code == 1000
            return [m for m in messages if m["type"] == "error"]

        fast, slow, honest = await asyncio.gather(
            source("fast-clock", 8000), source("slow-clock", 192000), source("true-clock", 48000)
        )
    assert honest == []
    for errors, declared, ratio in ((fast, 8000, 6.0), (slow, 192000, 0.25)):
        [error] = errors
        assert error["code"] == "clock_mismatch" and error["fatal"] is False
        measured = re.search(r"([0-9.]+)x the wall clock: about (\d+) samples per second", error["message"])
        assert measured, error["message"]
        assert abs(float(measured.group(1)) - ratio) < 0.15 * ratio
        assert abs(int(measured.group(2)) - 48000) < 0.15 * 48000  # the rate the audio really has
        assert f"sample_rate={declared}" in error["message"]


def test_a_paused_player_is_not_a_wrong_clock():
    """The clock check is about the rate, not about gaps: a source that stops sending for a while (a paused
    player) starts a new span when it resumes; real-time audio in 100 ms frames is never flagged."""
    from sendreturn_mood.room.session import AudioClock

    clock = AudioClock(20.0)
    now, flagged = 0.0, []
    for second in range(120):
        if 30 <= second < 60:  # paused for 30 s
            now += 1.0
            continue
        for _ in range(10):
            now += 0.1
            flagged.append(clock.add(0.1, now))
    assert flagged.count(None) == len(flagged)
    fast = AudioClock(20.0)
    ratios = [r for r in (fast.add(0.2, 0.1 * i) for i in range(1, 400)) if r is not None]  # 2x, for 40 s
    assert len(ratios) == 1 and abs(ratios[0] - 2.0) < 0.01  # one warning per 20 s span (the first span starts late)


# ------------------------------------------------------------------------------------------------ HTTP edges


def raw_exchange(port: int, request: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """Send `request` as it is on a raw socket (no HTTP library would send a raw space or UTF-8 in a target) ->
    (status, headers, body); status None when the server closed without answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        return None, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def get(port: int, target: bytes, host: bytes | None = b"127.0.0.1", method: bytes = b"GET", extra: bytes = b"") -> tuple:
    head = method + b" " + target + b" HTTP/1.1\r\n" + (b"Host: " + host + b"\r\n" if host is not None else b"")
    return raw_exchange(port, head + extra + b"Connection: close\r\n\r\n")


UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


async def test_http_edges_answer_with_the_protocol_error_body(tiny_model_path):
    """Raw sockets against a real server with the default config (loopback): every odd request gets a JSON answer
    with the right status; none is closed without a word, none reaches a route it should not."""
    async with running_server(tiny_model_path) as server:
        port = server.port
        async with client(server, "lobby", role="source"):
            def run() -> dict[str, tuple]:
                return {
                    "rebinding": get(port, b"/v1/rooms/lobby", b"evil.example:%d" % port),
                    "rebinding_page": get(port, b"/", b"evil.example:%d" % port),
                    "rebinding_upgrade": get(port, b"/v1/rooms/lobby", b"evil.example:%d" % port, extra=UPGRADE),
                    "own_name": get(port, b"/v1/rooms/lobby", b"localhost:%d" % port),
                    "foreign_page": get(port, b"/v1/rooms/lobby", extra=b"Origin: http://evil.example\r\n"),
                    "space": get(port, b"/v1/rooms/lob by"),
                    "utf8": get(port, "/v1/rooms/lobby\u00e9".encode()),
                    "no_host_get": get(port, b"/v1/rooms/lobby", None),
                    "no_host_upgrade": get(port, b"/v1/rooms/lobby", None, extra=UPGRADE),
                    "trace": get(port, b"/", method=b"TRACE"),
                    "delete_room": get(port, b"/v1/rooms/lobby", method=b"DELETE"),
                    "options": get(port, b"/healthz", method=b"OPTIONS"),
                    "upgrade_by_post": get(port, b"/v1/rooms/lobby", method=b"OPTIONS", extra=UPGRADE),
                    "healthz": get(port, b"/healthz"),
                }

            answers = await asyncio.to_thread(run)

    def error(name: str, status: int, code: str) -> dict:
        got, headers, body = answers[name]
        assert got == status, (name, got, body)
        err = checked_body("http-error", body)["error"]
        assert err["code"] == code, (name, err)
        return err

    error("rebinding", 403, "forbidden_origin")
    assert b"lobby" not in answers["rebinding"][2]  # no room state for a page that rebound its name
    error("rebinding_page", 403, "forbidden_origin")
    error("rebinding_upgrade", 403, "forbidden_origin")
    assert answers["own_name"][0] == 200 and json.loads(answers["own_name"][2])["source"] is True
    error("foreign_page", 403, "forbidden_origin")
    assert "percent-encode" in error("space", 400, "bad_request")["message"]
    assert "ASCII" in error("utf8", 400, "bad_request")["message"]
    assert "Host" in error("no_host_get", 400, "bad_request")["message"]
    assert "Host" in error("no_host_upgrade", 400, "bad_request")["message"]
    for name in ("trace", "delete_room", "options", "upgrade_by_post"):
        error(name, 405, "method_not_allowed")
        assert answers[name][1]["allow"] == "GET", name
    assert b"<html" not in answers["trace"][2].lower()  # TRACE used to return the page
    health = checked_body("healthz", answers["healthz"][2])
    assert health["model"] == {"name": "tiny-test-model", "version": "0.0.1"}  # no file path


async def test_a_reverse_proxy_name_can_be_allowed(tiny_model_path):
    """A loopback server behind a proxy that keeps the public Host answers it when allowed (server.allowed_hosts)."""
    async with running_server(tiny_model_path, server__allowed_hosts=["mood.example.com"]) as server:
        ok = await asyncio.to_thread(get, server.port, b"/healthz", b"mood.example.com")
        other = await asyncio.to_thread(get, server.port, b"/healthz", b"evil.example")
    assert ok[0] == 200 and other[0] == 403


async def test_an_empty_or_blank_token_is_like_any_token_without_auth(tiny_model_path):
    """On a server without tokens, ?token= (empty or blank) is ignored as ?token=abc is; with tokens it is a 401
    saying a token is needed."""
    async with running_server(tiny_model_path) as server:
        for token in ("", " ", "abc"):
            async with client(server, "open-room", token=token) as (_, welcome):
                assert welcome["role"] == "listener"
    async with running_server(tiny_model_path, server__auth_tokens=["s3cret"]) as server:
        for token in ("", " "):
            status, body = await refusal(server, "/v1/rooms/r?" + urlencode({"token": token}))
            assert status == 401 and "needs an access token" in body["error"]["message"]


# ------------------------------------------------------------------------------------------------ engines


async def test_the_sendreturn_subprotocol_and_numeric_colours(tiny_model_path):
    """A real websocket client offering `sendreturn.v1` (as UE's IWebSocket does with a Protocols list) gets it
    back; one offering nothing or another name is served the same without one. Every colour effect also arrives as
    NAME_rgb, three 0..1 floats equal to the hex colour."""
    from websockets.asyncio.client import connect

    from sendreturn_mood.room.effects import parse_colour

    async with running_server(tiny_model_path) as server:
        url = f"{server.url}/v1/rooms/engine"
        async with connect(url, subprotocols=["sendreturn.v1"], proxy=None) as offered, \
                connect(url, proxy=None) as plain, \
                connect(url, subprotocols=["other.v2", "sendreturn.v1"], proxy=None) as both:
            assert offered.subprotocol == "sendreturn.v1" and both.subprotocol == "sendreturn.v1"
            assert plain.subprotocol is None
            async with client(server, "engine", role="source", sample_rate=16000) as (src, _):
                await src.send(encode(tone(2.0, 16000), "pcm_s16le"))
                update = None
                while update is None:
                    msg = json.loads(await asyncio.wait_for(offered.recv(), 10))
                    update = msg if msg["type"] == "mood" else None
        unknown_only = connect(url, subprotocols=["other.v2"], proxy=None)
        async with unknown_only as ws:
            assert ws.subprotocol is None
    checked(update)
    colours = {k: v for k, v in update["effects"].items() if isinstance(v, str)}
    assert colours, update["effects"]
    for name, hex_colour in colours.items():
        rgb = update["effects"][f"{name}_rgb"]
        assert rgb == [round(c / 255, 4) for c in parse_colour(hex_colour)] and all(0 <= c <= 1 for c in rgb)


# ------------------------------------------------------------------------------------------------ connections


def close_code_of(frames: bytes) -> int | None:
    """The status code of the first close frame in a server's (unmasked) websocket byte stream."""
    i = 0
    while i + 2 <= len(frames):
        opcode, length = frames[i] & 0x0F, frames[i + 1] & 0x7F
        i += 2
        if length == 126:
            length, i = int.from_bytes(frames[i : i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(frames[i : i + 8], "big"), i + 8
        if opcode == 0x8:
            return int.from_bytes(frames[i : i + 2], "big")
        i += length
    return None


async def test_a_listener_that_stops_answering_pings_is_closed_with_the_documented_code(tiny_model_path):
    """A real listener (a raw socket after a real handshake) that never answers pings: the server closes it with
    4408, the code PROTOCOL.md documents for a ping timeout, not 1011 (a server error)."""
    from sendreturn_mood import protocol

    async with running_server(tiny_model_path, server__ping_interval_seconds=0.3, server__ping_timeout_seconds=0.5) as server:

        def mute_listener() -> bytes:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                s.sendall(b"GET /v1/rooms/muted HTTP/1.1\r\nHost: 127.0.0.1\r\n" + UPGRADE + b"\r\n")
                data = b""
                deadline = time.monotonic() + 8
                while time.monotonic() < deadline:
                    try:
                        chunk = s.recv(65536)  # read (so TCP is fine) but never answer a ping
                    except (ConnectionResetError, socket.timeout):
                        break
                    if not chunk:
                        break
                    data += chunk
            return data

        data = await asyncio.to_thread(mute_listener)
    head, _, frames = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert close_code_of(frames) == protocol.CLOSE_PING_TIMEOUT == 4408


async def test_silence_first_over_osc_is_an_empty_label(tiny_model_path):
    """The same room over OSC (a real python-osc UDP server): before the track's first music the `mood` address
    carries an empty string (the websocket's null), then the label."""
    from tests.test_osc import osc_server

    rate = 16000
    audio = np.concatenate([np.zeros(3 * rate, dtype=np.float32), tone(3.0, rate)])
    async with osc_server() as (port, recorder):
        target = [{"host": "127.0.0.1", "port": port, "rooms": ["*"], "prefix": "/sendreturn", "rate_hz": 0}]
        async with running_server(tiny_model_path, outputs__osc__targets=target) as server:
            async with client(server, "quiet", role="source", sample_rate=rate, encoding="pcm_f32le") as (ws, _):
                await ws.send(encode(audio, "pcm_f32le"))
                await ws.send(json.dumps({"type": "end"}))
                updates = [m for m in await read_until_closed(ws) if m["type"] == "mood"]
            await asyncio.sleep(0.3)
    labels = {b["/sendreturn/quiet/seq"][1][0]: b["/sendreturn/quiet/mood"] for _, b in recorder.bundles("/seq")}
    assert sorted(labels) == [u["seq"] for u in updates]
    for u in updates:
        assert labels[u["seq"]] == ("s", (u["mood"] or "",))
    assert labels[updates[0]["seq"]] == ("s", ("",)) and labels[updates[-1]["seq"]][1][0] != ""


async def test_a_connection_outlives_its_token_unless_the_server_closes_at_expiry(tiny_model_path):
    """Tokens are checked at the handshake: by default a listener whose 2 s token expires stays connected. With
    server.auth.close_at_expiry it gets a fatal `unauthorized` error and close 1008 at exp + leeway."""
    from websockets.exceptions import ConnectionClosed

    secret = "edges-test-secret-of-at-least-32-bytes!"
    for close_at_expiry in (False, True):
        async with running_server(
            tiny_model_path, server__auth__secret=secret, server__auth__leeway_seconds=0.5,
            server__auth__close_at_expiry=close_at_expiry,
        ) as server:
            token = server.auth.mint("lobby", ["listener"], ttl=2)
            async with client(server, "lobby", token=token) as (ws, _):
                t0 = time.monotonic()
                messages = []
                try:
                    while time.monotonic() - t0 < 4.0:
                        messages.append(json.loads(await asyncio.wait_for(ws.recv(), 4.5 - (time.monotonic() - t0))))
                except (ConnectionClosed, TimeoutError):
                    pass
                took = time.monotonic() - t0
                if close_at_expiry:
                    assert messages[-1]["type"] == "error" and messages[-1]["code"] == "unauthorized"
                    assert messages[-1]["fatal"] is True and ws.close_code == 1008 and 1.5 <= took <= 3.5, took
                else:
                    assert ws.close_code is None and messages == []  # still open two seconds after exp

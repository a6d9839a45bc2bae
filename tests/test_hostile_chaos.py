"""Chaos tests: one per defect of issue 13, each reproducing the attack against a real server (real sockets, real
clients). Every test here failed on the code before issue 13 (checked by running this file against a copy of that
commit; see docs/RELIABILITY.md) and passes now."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sendreturn_mood.audio.pcm import encode
from tests.server_support import (
    TIMEOUT, client, http_get, read_messages, read_until_closed, recv_json, refusal, room_url, running_server, send_audio, tone,
)

TOKEN = "s3cret-token-0123456789abcdef"


def raw_request(server, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes as an HTTP request (blocking; via asyncio.to_thread) -> (status, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b"Content-Length" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
                if len(body) >= length:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def upgrade_request(target: str, *extra: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def finite_everywhere(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite_everywhere(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_everywhere(v) for v in value)
    return True


def no_tracebacks(caplog) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


# 1 ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["one_sample_1e30", "sustained_1e20"])
async def test_1_one_absurd_sample_cannot_silence_a_room(tiny_model_path, attack):
    rate = 16000
    async with running_server(tiny_model_path) as server:
        async with client(server, "r1") as (listener, _), client(server, "r1", role="source", encoding="pcm_f32le", sample_rate=rate) as (src, _):
            await recv_json(listener)  # source connected
            drain = asyncio.create_task(read_until_closed(src, timeout=30))  # the source reads what it is sent
            await send_audio(src, tone(2.0, rate), rate, 1, "pcm_f32le")
            bad = np.zeros(rate // 10, dtype=np.float32)
            if attack == "one_sample_1e30":
                bad[123] = 1e30
                frames = [bad]
            else:
                frames = [bad + 1e20] * 10
            for f in frames:
                await src.send(encode(f, "pcm_f32le"))
            await send_audio(src, tone(4.0, rate, seed=1), rate, 1, "pcm_f32le")
            await src.send(json.dumps({"type": "end"}))
            got = await read_messages(listener, lambda m: m["type"] == "source" and m["state"] == "disconnected", timeout=30)
            own = await drain
        assert {m["code"] for m in own if m["type"] == "error"} == {"bad_audio"}  # the source is told, non-fatally
        moods = [m for m in got if m["type"] == "mood"]
        # 6 s of good audio, window 1 s, hop 0.5 s: 11 windows plus the tail; none lost, none non-finite
        assert len(moods) >= 11
        assert [m["seq"] for m in moods] == list(range(1, len(moods) + 1))
        assert all(finite_everywhere(m) for m in moods)
        assert not [m for m in got if m["type"] == "error"]  # the listener hears nothing of the source's bad frames


# 2 ------------------------------------------------------------------------------------------------------------------


async def test_2_a_client_that_never_reads_cannot_make_the_server_hold_much(tiny_model_path):
    frame = json.dumps({"type": ["\u00e9" * 450_000]}, ensure_ascii=False)  # ~0.9 MB of UTF-8, under the 1 MiB limit
    async with running_server(tiny_model_path) as server:
        async with connect(room_url(server, "r2"), proxy=None, compression=None, max_queue=1) as ws:
            for _ in range(12):
                await ws.send(frame)
            await asyncio.sleep(1.0)
            room = server.rooms.get("r2")
            queued = [sum(len(t) for _, t in m.outbox._items) for m in room.members]
            assert max(queued) <= server.config.server.send_queue_bytes
            messages = [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) for _ in range(13)]
        errors = [m for m in messages if m["type"] == "error"]
        assert len(errors) == 12 and all(e["code"] == "bad_message" for e in errors)
        assert max(len(json.dumps(e)) for e in errors) < 1000


# 3 ------------------------------------------------------------------------------------------------------------------


async def test_3_tokens_never_reach_the_log(tiny_model_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_server(tiny_model_path, server__auth_tokens=[TOKEN]) as server:
        for path in (f"/v1/rooms/a?sample_rate=1&token={TOKEN}", f"/v1/rooms/a%0A?token={TOKEN}", "/v1/rooms/a?token=wrong-guess-xyz"):
            status, _ = await refusal(server, path)
            assert status in (400, 401)
        status, _ = await refusal(server, "/v1/rooms/a?sample_rate=1", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 400
        await asyncio.to_thread(http_get, server, f"/v1/rooms/a?token={TOKEN}")
    # every server-side record, the websockets library's debug lines included (the test's own client logs its
    # request too: that one is not the server's)
    logged = "\n".join(r.getMessage() + str(r.args) for r in caplog.records if not r.name.startswith("websockets.client"))
    assert "refused" in logged
    assert TOKEN not in logged and TOKEN[:12] not in logged and "wrong-guess-xyz" not in logged


# 4 ------------------------------------------------------------------------------------------------------------------


async def test_4_room_state_needs_a_token_and_cannot_be_probed_fast(tiny_model_path):
    async with running_server(tiny_model_path, server__auth_tokens=[TOKEN]) as server:
        async with client(server, "private", token=TOKEN):
            status, _, body = await asyncio.to_thread(http_get, server, "/v1/rooms/private")
            assert status == 401 and b"private" not in body.replace(b"/v1/rooms/private", b"")
            status, _, _ = await asyncio.to_thread(http_get, server, "/v1/rooms/private?token=nope")
            assert status == 401
            status, _, body = await asyncio.to_thread(http_get, server, f"/v1/rooms/private?token={TOKEN}")
            assert status == 200 and json.loads(body)["room"] == "private"
            statuses = [(await asyncio.to_thread(http_get, server, f"/v1/rooms/probe{i}"))[0] for i in range(100)]
        assert 429 in statuses and 200 not in statuses


# 5 ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ['{"type": "keepalive", "n": ' + "9" * 4301 + "}", '{"type": "keepalive", "n": NaN}', '{"type": "keepalive", "n": Infinity}',
     '{"type": "track", "id": "x", "n": -Infinity}', '{"type": "keepalive", "n": 1e400}'],
)
async def test_5_huge_integers_and_nan_are_bad_message_not_server_error(tiny_model_path, text, caplog):
    async with running_server(tiny_model_path) as server:
        async with client(server, "r5", role="source") as (ws, _):
            await ws.send(text)
            err = await recv_json(ws)
            assert (err["type"], err["code"], err["fatal"]) == ("error", "bad_message", False)
            await ws.send('{"type": "track", "id": "still-open"}')  # the connection is alive and usable
            await ws.send('{"type": "nonsense"}')
            assert (await recv_json(ws))["code"] == "bad_message"
    no_tracebacks(caplog)


# 6 ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/v1/rooms/lobby%0A", "/v1/rooms/lobby%0a", "/v1/rooms/lob%09by", "/v1/rooms/lobby%00"])
async def test_6_escaped_control_characters_are_not_a_second_lobby(tiny_model_path, target):
    async with running_server(tiny_model_path) as server:
        status, body = await refusal(server, target)
        assert status == 400 and body["error"]["code"] == "bad_request"


@pytest.mark.parametrize("target", ["/v1/rooms/lob\tby", "/v1/rooms/lobby?role=source\t"])
async def test_6_raw_tabs_are_refused_not_dropped(tiny_model_path, target):
    async with running_server(tiny_model_path) as server:
        status, body = await asyncio.to_thread(raw_request, server, upgrade_request(target))
        assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"
        assert server.rooms.get("lobby") is None


# 7 ------------------------------------------------------------------------------------------------------------------


async def test_7_web_pages_from_other_origins_cannot_connect(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        for role in ("listener", "source"):
            status, body = await refusal(server, f"/v1/rooms/r7?role={role}", headers={"Origin": "https://evil.example"})
            assert status == 403 and body["error"]["code"] == "forbidden_origin"
        status, _ = await refusal(server, "/v1/rooms/r7", headers={"Origin": "null"})
        assert status == 403
        own = f"http://127.0.0.1:{server.port}"
        async with client(server, "r7", headers={"Origin": own}), client(server, "r7", headers={"Origin": "http://localhost:5173"}):
            pass  # the page the server serves, and a dev server on localhost
        async with client(server, "r7"):
            pass  # no Origin: not a browser
    async with running_server(tiny_model_path, server__allowed_origins=["https://game.example"]) as server:
        async with client(server, "r7", headers={"Origin": "https://game.example"}):
            pass


# 8 ------------------------------------------------------------------------------------------------------------------


async def test_8_one_address_cannot_hold_every_room(tiny_model_path):
    async with running_server(tiny_model_path, server__max_rooms=8, server__max_rooms_per_address=4,
                              server__max_connections_per_address=6) as server:
        async with asyncio.timeout(30):
            held = []
            for i in range(4):
                ws = await connect(room_url(server, f"idle{i}"), proxy=None, local_addr=("127.0.0.1", 0))
                held.append(ws)
            try:
                await connect(room_url(server, "idle4"), proxy=None)
                raise AssertionError("a fifth room from one address was accepted")
            except InvalidStatus as e:
                assert e.response.status_code == 429
                assert json.loads(e.response.body)["error"]["code"] == "rate_limited"
            held.append(await connect(room_url(server, "idle0"), proxy=None))  # more connections to its rooms: fine
            held.append(await connect(room_url(server, "idle1"), proxy=None))
            try:
                await connect(room_url(server, "idle0"), proxy=None)
                raise AssertionError("a seventh connection from one address was accepted")
            except InvalidStatus as e:
                assert e.response.status_code == 429
            # everyone else still gets in (another address on the loopback network)
            other = await connect(room_url(server, "mine"), proxy=None, local_addr=("127.0.0.2", 0))
            assert json.loads(await other.recv())["type"] == "welcome"
            for ws in held + [other]:
                await ws.close()


async def test_8_room_creation_rate_per_address(tiny_model_path):
    async with running_server(tiny_model_path, server__room_creations_per_minute=5) as server:
        statuses = []
        for i in range(8):
            try:
                async with connect(room_url(server, f"churn{i}"), proxy=None):
                    statuses.append(101)
            except InvalidStatus as e:
                statuses.append(e.response.status_code)
        assert statuses[:5] == [101] * 5 and 429 in statuses[5:]


# 9 ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [("Authorization: Bearer a", "Authorization: Bearer b"), ("Upgrade: websocket",), ("Origin: http://localhost", "Origin: https://x.example")],
)
async def test_9_duplicated_headers_are_a_400_without_traceback(tiny_model_path, extra, caplog):
    async with running_server(tiny_model_path) as server:
        status, body = await asyncio.to_thread(raw_request, server, upgrade_request("/v1/rooms/r9", *extra))
        assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"
    no_tracebacks(caplog)


# 10 -----------------------------------------------------------------------------------------------------------------


async def test_10_silence_is_not_a_mood(tiny_model_path):
    rate = 16000
    async with running_server(tiny_model_path) as server:
        async with client(server, "r10") as (listener, _), client(server, "r10", role="source", sample_rate=rate) as (src, _):
            await recv_json(listener)
            drain = asyncio.create_task(read_until_closed(src, timeout=30))
            await send_audio(src, tone(3.0, rate), rate, 1, "pcm_s16le")
            await send_audio(src, np.zeros(rate * 10, dtype=np.float32), rate, 1, "pcm_s16le")
            await src.send(json.dumps({"type": "end"}))
            got = await read_messages(listener, lambda m: m["type"] == "source" and m["state"] == "disconnected", timeout=30)
            await drain
    moods = [m for m in got if m["type"] == "mood"]
    music = [m for m in moods if m.get("state") == "music"]
    silent = [m for m in moods if m.get("state") == "silent"]
    assert music and len(silent) >= 15  # ~9 s of windows entirely inside the silence, hop 0.5 s
    held = music[-1]
    for m in silent:
        assert (m["mood"], m["probabilities"], m["valence"], m["arousal"]) == (held["mood"], held["probabilities"], held["valence"], held["arousal"])
        assert set(m["instant"]["probabilities"].values()) == {0.25}
    assert silent[-1]["effects"]["reverb_mix"] == 0.0 and silent[-1]["effects"]["tint"] == "#ffffff"  # rest


# access tokens at the handshake ---------------------------------------------------------------------------------------

SECRET = "chaos-secret-" + "z" * 32


async def test_signed_tokens_are_room_and_role_scoped(tiny_model_path):
    from sendreturn_mood.server.auth import Authenticator

    async with running_server(tiny_model_path, server__auth__secret=SECRET) as server:
        auth = Authenticator.from_config(server.config)
        source_a = auth.mint("a", ["source"], 60)
        async with client(server, "a", role="source", token=source_a):
            for path in ("/v1/rooms/b?role=source", "/v1/rooms/b", "/v1/rooms/a"):
                status, body = await refusal(server, f"{path}{'&' if '?' in path else '?'}token={source_a}")
                assert status == 401 and source_a not in json.dumps(body)
        expired = auth.mint("a", ["listener"], 60, now=1_000_000_000)
        status, body = await refusal(server, f"/v1/rooms/a?token={expired}")
        assert (status, body["error"]["message"]) == (401, "access token expired")
        async with client(server, "a", headers={"Authorization": f"Bearer {auth.mint('*', ['listener'], 60)}"}):
            pass


async def test_a_reserved_source_slot_survives_a_reconnect(tiny_model_path):
    from sendreturn_mood.server.auth import Authenticator

    async with running_server(tiny_model_path, server__auth__secret=SECRET, server__auth__reserve_seconds=30) as server:
        auth = Authenticator.from_config(server.config)
        dj = auth.mint("stage", ["source"], 600, subject="dj", reserve=True)
        intruder = auth.mint("*", ["source", "listener"], 600, subject="intruder")
        async with client(server, "stage", role="source", token=dj):
            pass  # the DJ's connection drops
        status, body = await refusal(server, f"/v1/rooms/stage?role=source&token={intruder}")
        assert status == 409 and "reserved" in body["error"]["message"]
        async with client(server, "stage", token=intruder):
            pass  # listening is fine
        async with client(server, "stage", role="source", token=dj) as (old, _):
            # the DJ reconnects while its old connection is still registered (half-dead): the new one takes over
            async with client(server, "stage", role="source", token=dj) as (new, welcome):
                assert welcome["role"] == "source"
                with pytest.raises(ConnectionClosed) as e:
                    while True:
                        await asyncio.wait_for(old.recv(), TIMEOUT)
                assert e.value.rcvd.code == 1008

"""Every handshake refusal (HTTP status + JSON body) and every error code, against a real server."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from sendreturn_mood.audio.pcm import encode
from tests.server_support import client, read_messages, read_until_closed, recv_json, refusal, running_server, send_audio, tone


@pytest.mark.parametrize(
    "path,needle",
    [
        ("/", "path must be /v1/rooms/"),
        ("/v1/rooms/", "room name"),
        ("/v1/rooms/bad%20name", "room name"),
        ("/v1/rooms/" + "x" * 65, "room name"),
        ("/v1/rooms/a/b", "room name"),
        ("/v1/rooms/ok?role=dj", "role"),
        ("/v1/rooms/ok?role=source&encoding=mp3", "encoding"),
        ("/v1/rooms/ok?role=source&sample_rate=7999", "sample_rate"),
        ("/v1/rooms/ok?role=source&sample_rate=192001", "sample_rate"),
        ("/v1/rooms/ok?role=source&sample_rate=fast", "sample_rate"),
        ("/v1/rooms/ok?role=source&channels=0", "channels"),
        ("/v1/rooms/ok?role=source&channels=9", "channels"),
        ("/v1/rooms/ok?role=source&preset=nope", "unknown preset"),
        ("/v1/rooms/ok?role=source&role=listener", "more than once"),
    ],
)
async def test_bad_request(tiny_model_path, path, needle):
    async with running_server(tiny_model_path) as server:
        status, body = await refusal(server, path)
        assert status == 400
        assert body["error"]["code"] == "bad_request"
        assert needle in body["error"]["message"]
        assert server.metrics.refusals.get(code="bad_request") == 1


async def test_unauthorized_and_tokens(tiny_model_path):
    async with running_server(tiny_model_path, server__auth_tokens=["s3cret"]) as server:
        status, body = await refusal(server, "/v1/rooms/a")
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, body = await refusal(server, "/v1/rooms/a?token=wrong")
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, body = await refusal(server, "/v1/rooms/a", headers={"Authorization": "Bearer nope"})
        assert status == 401
        async with client(server, "a", token="s3cret") as (_, welcome):
            assert welcome["role"] == "listener"
        async with client(server, "a", headers={"Authorization": "Bearer s3cret"}, role="source") as (_, welcome):
            assert welcome["role"] == "source"


async def test_source_taken(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        async with client(server, "busy", role="source"):
            status, body = await refusal(server, "/v1/rooms/busy?role=source")
            assert (status, body["error"]["code"]) == (409, "source_taken")
            async with client(server, "busy") as (_, welcome):  # listeners are still welcome
                assert welcome["role"] == "listener"
        async with client(server, "busy", role="source"):  # the slot is free again
            pass


async def test_server_full_connections(tiny_model_path):
    async with running_server(tiny_model_path, server__max_connections=2) as server:
        async with client(server, "a"), client(server, "b"):
            status, body = await refusal(server, "/v1/rooms/c")
            assert (status, body["error"]["code"]) == (503, "server_full")
            assert "connections" in body["error"]["message"]


async def test_server_full_rooms(tiny_model_path):
    async with running_server(tiny_model_path, server__max_rooms=1) as server:
        async with client(server, "one"):
            status, body = await refusal(server, "/v1/rooms/two")
            assert (status, body["error"]["code"]) == (503, "server_full")
            async with client(server, "one"):  # joining the existing room is fine
                pass


@pytest.mark.parametrize(
    "text,needle",
    [
        ("not json", "JSON"),
        ("[1, 2]", "JSON objects"),
        ('{"type": "dance"}', "unknown message type"),
        ('{"no": "type"}', "unknown message type"),
        ('{"type": "track"}', "'id'"),
        ('{"type": "track", "id": 5}', "'id'"),
        ('{"type": "track", "id": "x", "title": ["a"]}', "'title'"),
        ('{"type": "preset"}', "'name'"),
        ('{"type": "preset", "name": "no-such-preset"}', "unknown preset"),
    ],
)
async def test_bad_message_is_not_fatal(tiny_model_path, text, needle):
    async with running_server(tiny_model_path) as server:
        async with client(server, "bm", role="source", sample_rate=16000) as (src, _):
            await src.send(text)
            err = await recv_json(src)
            assert err["type"] == "error" and err["code"] == "bad_message" and err["fatal"] is False
            assert needle in err["message"]
            # the connection still works
            await send_audio(src, tone(1.0, 16000), 16000, 1, "pcm_s16le")
            msgs = await read_messages(src, lambda m: m["type"] == "mood")
            assert msgs[-1]["seq"] == 1
        assert server.metrics.errors.get(code="bad_message") == 1


async def test_bad_audio(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        async with client(server, "ba", role="source", sample_rate=16000, channels=2, encoding="pcm_f32le") as (src, _):
            await src.send(b"\x00" * 12)  # 12 bytes: not a whole number of 8-byte stereo f32 frames
            err = await recv_json(src)
            assert (err["code"], err["fatal"]) == ("bad_audio", False)
            assert "whole number" in err["message"]
            await src.send(np.array([0.1, np.nan, 0.2, 0.3], dtype="<f4").tobytes())
            err = await recv_json(src)
            assert err["code"] == "bad_audio" and "NaN" in err["message"]
            await send_audio(src, tone(1.0, 16000, 2), 16000, 2, "pcm_f32le")  # still alive
            assert (await read_messages(src, lambda m: m["type"] == "mood"))[-1]["seq"] == 1


async def test_not_allowed_for_listeners(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        async with client(server, "na") as (lis, _):
            await lis.send(encode(tone(0.1, 48000), "pcm_s16le"))
            err = await recv_json(lis)
            assert (err["code"], err["fatal"]) == ("not_allowed", False)
            for msg in ({"type": "track", "id": "x"}, {"type": "preset", "name": "default"}, {"type": "end"}):
                await lis.send(json.dumps(msg))
                err = await recv_json(lis)
                assert err["code"] == "not_allowed", msg
            await lis.send(json.dumps({"type": "keepalive"}))  # allowed for anyone
            await lis.ping()
        assert server.metrics.errors.get(code="not_allowed") == 4


async def test_rate_limited(tiny_model_path):
    async with running_server(tiny_model_path, server__rate_limit_factor=2.0, server__rate_limit_burst_seconds=1.0) as server:
        async with client(server, "rl", role="source", sample_rate=16000) as (src, _):
            await send_audio(src, tone(3.0, 16000), 16000, 1, "pcm_s16le")  # 3 s of audio at once: beyond 1 s burst
            msgs = await read_messages(src, lambda m: m["type"] == "error")
            err = msgs[-1]
            assert (err["code"], err["fatal"]) == ("rate_limited", False)
            assert "faster than" in err["message"]
        # the frames beyond the allowance were dropped, not analysed
        assert server.metrics.audio_seconds.get() < 2.0


async def test_too_big_is_fatal_1009(tiny_model_path):
    async with running_server(tiny_model_path, server__max_message_bytes=4000) as server:
        async with client(server, "big", role="source", sample_rate=16000) as (src, _):
            await src.send(b"\x00\x00" * 2001)
            msgs = await read_until_closed(src)
            assert msgs[-1]["type"] == "error" and msgs[-1]["code"] == "too_big" and msgs[-1]["fatal"] is True
            assert src.close_code == 1009


async def test_inference_failure_reaches_that_room_only(tiny_model_path):
    """A window that makes the model fail gives that room a server_error; another room in the same batch is fine."""
    async with running_server(tiny_model_path) as server:
        real = server.model.predict

        def fragile(batch):
            if np.any(batch.mean(axis=(1, 2)) > 0.5):  # only the loud room's windows (the other one is silent)
                raise RuntimeError("model failure")
            return real(batch)

        server.worker.model.predict = fragile  # type: ignore[method-assign]
        async with client(server, "loud", role="source", sample_rate=16000) as (loud, _), client(
            server, "quiet", role="source", sample_rate=16000
        ) as (quiet, _):
            loud_audio, quiet_audio = tone(1.0, 16000, amp=0.9), np.zeros(16000, dtype=np.float32)
            await asyncio.gather(
                send_audio(loud, loud_audio, 16000, 1, "pcm_s16le"), send_audio(quiet, quiet_audio, 16000, 1, "pcm_s16le")
            )
            bad = await read_messages(loud, lambda m: m["type"] in ("error", "mood"))
            good = await read_messages(quiet, lambda m: m["type"] in ("error", "mood"))
        assert bad[-1]["type"] == "error" and bad[-1]["code"] == "server_error" and bad[-1]["fatal"] is False
        assert good[-1]["type"] == "mood"


async def test_second_source_race_is_closed_1008(tiny_model_path):
    """Two sources racing past the handshake check: the second one gets a fatal error and close 1008."""
    async with running_server(tiny_model_path) as server:
        async with client(server, "race", role="source"):
            server.rooms.check_join = lambda name, is_source: None  # type: ignore[method-assign]  # simulate the race:

            async def nobody(room: str) -> bool:  # both handshakes checked before either claimed the slot
                return False

            server.broker.source_present = nobody  # type: ignore[method-assign]
            from websockets.asyncio.client import connect

            async with connect(f"{server.url}/v1/rooms/race?role=source", proxy=None) as second:
                msgs = await read_until_closed(second)
                assert msgs[-1]["type"] == "error" and msgs[-1]["fatal"] is True
                assert second.close_code == 1008


async def test_far_too_big_is_closed_1009_by_the_websocket_layer(tiny_model_path):
    """Beyond WS_SIZE_SLACK x max_message_bytes the websocket layer refuses the frame before the server sees it:
    close 1009 without an error message (the server never buffers such a frame)."""
    from sendreturn_mood.server.app import WS_SIZE_SLACK

    async with running_server(tiny_model_path, server__max_message_bytes=4000) as server:
        async with client(server, "huge", role="source", sample_rate=16000) as (src, _):
            await src.send(b"\x00\x00" * (4000 * WS_SIZE_SLACK))
            await read_until_closed(src)
            assert src.close_code == 1009

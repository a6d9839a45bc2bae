"""Protocol v1 against a real server on 127.0.0.1 with real websocket clients: messages, audio formats, rooms."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from sendreturn_mood.audio.pcm import encode
from tests.server_support import (
    client,
    read_messages,
    read_until_closed,
    recv_json,
    running_server,
    send_audio,
    tone,
)

HOP = 0.5
WINDOW = 1.0


def moods(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["type"] == "mood"]


async def test_welcome_for_source_and_listener(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        async with client(server, "lobby") as (lis, welcome):
            assert welcome == {
                "type": "welcome",
                "protocol": 1,
                "room": "lobby",
                "role": "listener",
                "model": {
                    "name": "tiny-test-model",
                    "version": "0.0.1",
                    "moods": ["happy", "angry", "sad", "calm"],
                    "genres": ["classical", "electronic", "pop", "rock"],
                    "coordinates": {
                        "happy": {"valence": 0.7, "arousal": 0.5},
                        "angry": {"valence": -0.6, "arousal": 0.7},
                        "sad": {"valence": -0.6, "arousal": -0.5},
                        "calm": {"valence": 0.5, "arousal": -0.6},
                    },
                },
                "analysis": {"window_seconds": 0.992, "hop_seconds": 0.496, "sample_rate": 16000},  # whole frames of 16 ms
                "preset": "default",
            }
            async with client(
                server, "lobby", own_source_state=True, role="source", encoding="pcm_f32le", sample_rate=44100, channels=2
            ) as (src, sw):
                assert sw["role"] == "source"
                assert sw["audio"] == {"encoding": "pcm_f32le", "sample_rate": 44100, "channels": 2}
                assert "audio" not in welcome
                # Everyone in the room hears that the source came, the source included.
                assert await recv_json(lis) == {"type": "source", "state": "connected"}
                assert await recv_json(src) == {"type": "source", "state": "connected"}
            assert await recv_json(lis) == {"type": "source", "state": "disconnected"}


@pytest.mark.parametrize(
    "encoding,rate,channels",
    [
        ("pcm_s16le", 16000, 1),
        ("pcm_s16le", 48000, 2),
        ("pcm_f32le", 44100, 2),
        ("pcm_f32le", 8000, 1),
        ("pcm_s16le", 22050, 6),
        ("pcm_f32le", 192000, 8),
    ],
)
async def test_stream_updates_end_and_listener_sequence(tiny_model_path, encoding, rate, channels):
    seconds = 3.2
    async with running_server(tiny_model_path) as server:
        async with client(server, "r1") as (lis, _), client(
            server, "r1", role="source", encoding=encoding, sample_rate=rate, channels=channels
        ) as (src, _):
            await send_audio(src, tone(seconds, rate, channels), rate, channels, encoding)
            await src.send(json.dumps({"type": "end"}))
            from_source = await read_until_closed(src)
            assert src.close_code == 1000
            from_listener = await read_messages(lis, lambda m: m == {"type": "source", "state": "disconnected"})
    src_moods, lis_moods = moods(from_source), moods(from_listener)
    # windows end at 0.992 + k * 0.496 s up to 3.2 s; `end` adds the tail (0.224 s new < min 0.25 s: none)
    times = [m["stream_time"] for m in src_moods]
    assert times == pytest.approx([0.992, 1.488, 1.984, 2.48, 2.976], abs=1e-3)
    assert [m["seq"] for m in src_moods] == [1, 2, 3, 4, 5]
    assert lis_moods == src_moods  # the same sequence, same seq numbers, same content
    for m in src_moods:
        assert m["room"] == "r1" and "track" not in m
        assert set(m["probabilities"]) == {"happy", "angry", "sad", "calm"}
        assert sum(m["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert m["mood"] in m["probabilities"] and 0 <= m["confidence"] <= 1
        assert -1 <= m["valence"] <= 1 and -1 <= m["arousal"] <= 1
        assert set(m["instant"]) == {"probabilities", "valence", "arousal"}
        assert m["genre"]["label"] in ("classical", "electronic", "pop", "rock")
        assert isinstance(m["effects"], dict) and m["effects"]
        assert m["preset"] == "default"
        assert 0 <= m["latency_ms"] < 5000


async def test_end_analyses_the_tail(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        async with client(server, "tail", role="source", sample_rate=16000) as (src, _):
            await send_audio(src, tone(1.8, 16000), 16000, 1, "pcm_s16le")
            await src.send(json.dumps({"type": "end"}))
            msgs = moods(await read_until_closed(src))
            assert src.close_code == 1000
    # windows at 0.992 and 1.488; the tail (1.8 s, 0.31 s new >= min_seconds 0.25) gives a final update
    assert [m["stream_time"] for m in msgs] == pytest.approx([0.992, 1.488, 1.808], abs=0.02)
    assert msgs[-1]["seq"] == 3


async def test_track_restarts_analysis_and_is_carried(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        async with client(server, "t", role="source", sample_rate=16000) as (src, _):
            await send_audio(src, tone(1.2, 16000), 16000, 1, "pcm_s16le")
            first = await read_messages(src, lambda m: m["type"] == "mood")
            assert "track" not in first[-1]
            await src.send(json.dumps({"type": "track", "id": "spotify:track:abc", "title": "Song", "artist": "Band"}))
            await send_audio(src, tone(1.2, 16000, freq=220), 16000, 1, "pcm_s16le")
            second = moods(await read_messages(src, lambda m: m["type"] == "mood"))[-1]
    assert second["track"] == {"id": "spotify:track:abc", "title": "Song", "artist": "Band"}
    assert second["stream_time"] == pytest.approx(0.992)  # stream time restarted with the track
    assert second["seq"] == first[-1]["seq"] + 1  # seq keeps counting for the room
    assert second["instant"]["probabilities"] == second["probabilities"]  # smoothing restarted


async def test_preset_parameter_and_message(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        names = server.presets.names
        other = next(n for n in names if n != "default")
        async with client(server, "p", role="source", sample_rate=16000, preset=other) as (src, welcome):
            assert welcome["preset"] == other
            async with client(server, "p") as (_, lw):
                assert lw["preset"] == other
            await send_audio(src, tone(1.0, 16000), 16000, 1, "pcm_s16le")
            m = moods(await read_messages(src, lambda m: m["type"] == "mood"))[-1]
            assert m["preset"] == other
            await src.send(json.dumps({"type": "preset", "name": "default"}))
            await send_audio(src, tone(0.5, 16000), 16000, 1, "pcm_s16le")
            m = moods(await read_messages(src, lambda m: m["type"] == "mood"))[-1]
            assert m["preset"] == "default"


async def test_several_rooms_at_once(tiny_model_path):
    rooms = ["alpha", "beta", "gamma", "delta"]
    async with running_server(tiny_model_path) as server:

        async def one(i: int, room: str) -> list[dict]:
            rate = (16000, 44100, 48000, 22050)[i]
            async with client(server, room, role="source", sample_rate=rate, encoding="pcm_f32le") as (src, _):
                await send_audio(src, tone(2.2, rate, freq=200 * (i + 1), seed=i), rate, 1, "pcm_f32le")
                await src.send(json.dumps({"type": "end"}))
                return moods(await read_until_closed(src))

        results = await asyncio.gather(*(one(i, r) for i, r in enumerate(rooms)))
        assert server.metrics.batches.count() >= 1
    for room, msgs in zip(rooms, results):
        assert [m["room"] for m in msgs] == [room] * len(msgs)
        assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
        assert len(msgs) == 3  # 0.992, 1.488, 1.984 (the 0.216 s tail is shorter than min_seconds)


async def test_keepalive_gets_no_answer(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        async with client(server, "k") as (lis, _):
            await lis.send(json.dumps({"type": "keepalive"}))
            await lis.send("not json")  # the next thing the server says is the answer to this one
            msg = await recv_json(lis)
            assert msg["type"] == "error" and msg["code"] == "bad_message"


async def test_source_can_reconnect_and_room_survives(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        async with client(server, "re") as (lis, _):
            for _ in range(2):
                async with client(server, "re", role="source", sample_rate=16000) as (src, _):
                    await send_audio(src, tone(1.0, 16000), 16000, 1, "pcm_s16le")
                    await read_messages(src, lambda m: m["type"] == "mood")
            got = await read_messages(lis, lambda m: m["type"] == "source" and m["state"] == "disconnected")
            got += await read_messages(lis, lambda m: m["type"] == "source" and m["state"] == "disconnected")
            assert [m["seq"] for m in moods(got)] == [1, 2]
            assert [m["stream_time"] for m in moods(got)] == [0.992, 0.992]  # a new source starts a new stream


async def test_listener_sees_same_float32_audio_as_s16(tiny_model_path):
    """Both encodings of the same audio give (nearly) the same analysis."""
    y = tone(1.0, 16000)
    out = {}
    async with running_server(tiny_model_path) as server:
        for enc in ("pcm_s16le", "pcm_f32le"):
            async with client(server, f"enc-{enc}", role="source", sample_rate=16000, encoding=enc) as (src, _):
                await src.send(encode(y, enc))
                out[enc] = moods(await read_messages(src, lambda m: m["type"] == "mood"))[-1]
    a, b = out["pcm_s16le"]["instant"]["probabilities"], out["pcm_f32le"]["instant"]["probabilities"]
    assert np.allclose(list(a.values()), list(b.values()), atol=2e-3)


async def test_end_without_audio_and_short_stream(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        async with client(server, "empty", role="source") as (src, _):
            await src.send(json.dumps({"type": "end"}))
            assert await read_until_closed(src) == []
            assert src.close_code == 1000
        # 0.5 s: shorter than the 0.992 s window but longer than min_seconds: one (shorter) window at `end`
        async with client(server, "short", role="source", sample_rate=16000) as (src, _):
            await send_audio(src, tone(0.5, 16000), 16000, 1, "pcm_s16le")
            await src.send(json.dumps({"type": "end"}))
            msgs = moods(await read_until_closed(src))
            assert src.close_code == 1000
    assert len(msgs) == 1 and msgs[0]["stream_time"] == pytest.approx(0.5, abs=0.02)

"""Tracks known ahead, end to end: a real server, real websocket clients, audio the test makes (and a real song when
../shared/data is there). A track is prepared for a room, the source plays it and reports its position, and the
room's listeners get the timeline once and `analyze`'s own updates at their positions, with `seq` continuing."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time

import numpy as np
import pytest
import soundfile as sf

from sendreturn_mood import protocol
from sendreturn_mood.config import load_config
from sendreturn_mood.model.contract import MoodModel
from sendreturn_mood.room.offline import analyze_file
from tests.server_support import TEST_SETTINGS, TIMEOUT, checked_body, client, read_messages, recv_json, running_server, send_audio, tone

ROOM = "stage"


def wav_bytes(seconds: float = 8.0, rate: int = 16000) -> bytes:
    """Made audio as a WAV file: a tone, then noise."""
    half = int(seconds * rate / 2)
    audio = np.concatenate([tone(seconds / 2, rate, freq=330.0), np.random.default_rng(3).normal(0, 0.2, half).astype(np.float32)])
    out = io.BytesIO()
    sf.write(out, audio, rate, format="WAV")
    return out.getvalue()


def http(server, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """A plain HTTP/1.1 request on the server's port (blocking; call via asyncio.to_thread)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        if body:
            head += f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n"
        s.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head_text, _, payload = data.partition(b"\r\n\r\n")
    return int(head_text.split()[1]), payload


async def until_type(ws, kind: str):
    return (await read_messages(ws, lambda m: m["type"] == kind))[-1]


def test_a_room_follows_a_prepared_track_in_step_with_its_player(tiny_model_path, tmp_path):
    audio = wav_bytes()
    (tmp_path / "track.wav").write_bytes(audio)
    expected = analyze_file(tmp_path / "track.wav", MoodModel(tiny_model_path), load_config(None, TEST_SETTINGS))

    async def run() -> None:
        async with running_server(tiny_model_path) as server:
            status, body = await asyncio.to_thread(http, server, "PUT", f"/v1/rooms/{ROOM}/tracks/song-1?title=Song&artist=Artist", audio)
            assert status == 200, body
            assert json.loads(body)["updates"] == len(expected["timeline"])
            status, body = await asyncio.to_thread(http, server, "GET", f"/v1/rooms/{ROOM}/tracks/song-1")
            assert status == 200 and json.loads(body)["track"] == {"id": "song-1", "title": "Song", "artist": "Artist"}
            async with client(server, ROOM, role="source", sample_rate=16000) as (src, _):
                # live first: seq counts the live updates
                await send_audio(src, tone(2.0, 16000), 16000, 1, "pcm_s16le")
                live = await until_type(src, "mood")
                async with client(server, ROOM) as (lis, _):
                    start = time.perf_counter()
                    await src.send(json.dumps({"type": "play", "track": "song-1", "position": 0}))
                    timeline = await until_type(lis, "timeline")
                    assert timeline["track"]["id"] == "song-1" and len(timeline["updates"]) == len(expected["timeline"])
                    moods = []
                    while len(moods) < 4:
                        m = await recv_json(lis)
                        if m["type"] == "mood" and m.get("prepared"):
                            moods.append((time.perf_counter() - start, m))
                    for (at, m), row in zip(moods, expected["timeline"]):
                        assert {k: v for k, v in m.items() if k in row} == row  # analyze's update, at its position
                        assert at >= row["stream_time"] - 0.05 and m["latency_ms"] < 100
                    seqs = [m["seq"] for _, m in moods]
                    assert seqs[0] > live["seq"] and seqs == list(range(seqs[0], seqs[0] + 4))
                    # a seek: the update for the new position comes at once
                    target = expected["timeline"][-2]["stream_time"] + 0.1
                    await src.send(json.dumps({"type": "position", "position": target}))
                    m = await until_type(lis, "mood")
                    while m["stream_time"] < expected["timeline"][-2]["stream_time"]:
                        m = await until_type(lis, "mood")
                    assert m["stream_time"] == expected["timeline"][-2]["stream_time"]
                    # a listener joining now gets the timeline after its welcome
                    async with client(server, ROOM) as (late, _):
                        assert (await recv_json(late))["type"] == "timeline"
                    # stop, then live audio again
                    await src.send(json.dumps({"type": "stop"}))
                    await send_audio(src, tone(2.0, 16000), 16000, 1, "pcm_s16le")
                    m = await until_type(lis, "mood")
                    while m.get("prepared"):
                        m = await until_type(lis, "mood")
                    assert m["seq"] > seqs[-1]

    asyncio.run(run())


def test_lead_seconds_sends_updates_early(tiny_model_path):
    async def run() -> None:
        async with running_server(tiny_model_path) as server:
            prepared = await server.tracks.prepare(ROOM, "song-1", wav_bytes())
            first = prepared.analysis.cues[0].position
            async with client(server, ROOM, role="source") as (src, _), client(server, ROOM) as (lis, _):
                start = time.perf_counter()
                await src.send(json.dumps({"type": "play", "track": "song-1", "lead_seconds": 0.5}))
                timeline = await until_type(src, "timeline")  # the source gets the timeline, its listeners each update
                assert timeline["lead_seconds"] == 0.5
                m = await until_type(lis, "mood")
                at = time.perf_counter() - start
                assert m["stream_time"] == first and first - 0.5 - 0.02 <= at < first - 0.3

    asyncio.run(run())


def test_bad_playback_input_and_bad_puts(tiny_model_path):
    async def run() -> None:
        async with running_server(tiny_model_path, prepared__max_tracks_per_room=1) as server:
            prepared = await server.tracks.prepare(ROOM, "song-1", wav_bytes())
            async with client(server, ROOM, role="source") as (src, _), client(server, ROOM) as (lis, _):
                await src.send(json.dumps({"type": "play", "track": "nope"}))
                err = await until_type(src, "error")
                assert err["code"] == protocol.UNKNOWN_TRACK and not err["fatal"]
                await lis.send(json.dumps({"type": "play", "track": "song-1"}))
                assert (await until_type(lis, "error"))["code"] == protocol.NOT_ALLOWED
                await src.send(json.dumps({"type": "play", "track": "song-1", "position": 500}))
                assert "past the end" in (await until_type(src, "error"))["message"]
                await src.send(json.dumps({"type": "play", "track": "song-1", "position": -1}))
                assert (await until_type(src, "error"))["code"] == protocol.BAD_MESSAGE
                await src.send(json.dumps({"type": "play", "track": "song-1"}))
                await until_type(src, "timeline")
                for _ in range(12):
                    await src.send(json.dumps({"type": "position", "position": 0.5}))
                assert (await until_type(src, "error"))["code"] == protocol.RATE_LIMITED
                # the connection is still fine
                await src.send(json.dumps({"type": "pause"}))
                await src.send(json.dumps({"type": "keepalive"}))
            # a second track for a room at its limit: 507, saying which limit
            status, body = await asyncio.to_thread(http, server, "PUT", f"/v1/rooms/{ROOM}/tracks/song-2?analysis={prepared.analysis.id}")
            err = checked_body("http-error", body)["error"]
            assert status == 507 and err["code"] == protocol.STORE_FULL and "max_tracks_per_room" in err["message"]
            # by reference into another room: no upload, no analysis
            status, body = await asyncio.to_thread(http, server, "PUT", f"/v1/rooms/other/tracks/song-9?analysis={prepared.analysis.id}")
            assert status == 200 and json.loads(body)["analysis"] == prepared.analysis.id
            status, body = await asyncio.to_thread(http, server, "PUT", f"/v1/rooms/other/tracks/x?analysis={'0' * 32}")
            assert status == 404
            status, _ = await asyncio.to_thread(http, server, "DELETE", f"/v1/rooms/other/tracks/song-9")
            assert status == 204
            status, _ = await asyncio.to_thread(http, server, "GET", f"/v1/rooms/other/tracks/song-9")
            assert status == 404

    asyncio.run(run())


def test_non_audio_and_too_long_uploads_are_refused(tiny_model_path):
    from sendreturn_mood.server.prepared import PrepareError

    async def run() -> None:
        async with running_server(tiny_model_path, prepared__max_track_seconds=5) as server:
            for body, status, code in ((b"<html>not audio</html>" * 100, 415, "unsupported_media_type"),
                                       (wav_bytes(8.0), 413, "too_big"), (wav_bytes(8.0)[:3000] + b"\0" * 50, 422, "bad_audio")):
                got, answer = await asyncio.to_thread(http, server, "PUT", f"/v1/rooms/{ROOM}/tracks/x", body)
                err = checked_body("http-error", answer)["error"]
                assert (got, err["code"]) == (status, code), answer
            with pytest.raises(PrepareError) as e:
                await server.tracks.prepare(ROOM, "x", b"<html>not audio</html>" * 100)
            assert e.value.status == 422
            with pytest.raises(PrepareError) as e:
                await server.tracks.prepare(ROOM, "x", wav_bytes(8.0))
            assert e.value.status == 413 and "max_track_seconds" in e.value.message

    asyncio.run(run())


def test_the_python_client_prepares_plays_and_follows_a_player_clock(tiny_model_path):
    from sendreturn_mood.client import Listener, Mood, Source, Timeline

    async def run() -> None:
        async with running_server(tiny_model_path) as server:
            first = await server.tracks.prepare("elsewhere", "t", wav_bytes())
            got: list = []
            async with Source(server.url, ROOM, keepalive=None) as src:
                described = await src.prepare(b"", "song-1", "Song", analysis=first.analysis.id)
                assert described["analysis"] == first.analysis.id and described["track"]["title"] == "Song"
                await src.connect(16000)
                async with Listener(server.url, ROOM) as room:
                    started = time.perf_counter()
                    await src.play("song-1", 0.0)
                    reporter = asyncio.create_task(src.follow_player(lambda: time.perf_counter() - started, every=0.5))
                    async for event in room:
                        if isinstance(event, (Timeline, Mood)):
                            got.append(event)
                        if sum(isinstance(e, Mood) for e in got) >= 3:
                            break
                    reporter.cancel()
            assert isinstance(got[0], Timeline) and got[0].track["id"] == "song-1"
            moods = [e for e in got if isinstance(e, Mood)]
            assert all(m.prepared for m in moods) and [m.stream_time for m in moods] == [c.position for c in first.analysis.cues[:3]]

    asyncio.run(run())


def test_a_finished_analysis_becomes_a_prepared_track_by_reference(tiny_model_path):
    """POST /v1/analyze answers with an `analysis` id; a PUT with ?analysis=ID makes it a room's prepared track with
    no second upload, and the room plays exactly what the analysis said."""

    async def run() -> None:
        async with running_server(tiny_model_path) as server:
            status, body = await asyncio.to_thread(http, server, "POST", "/v1/analyze", wav_bytes())
            assert status == 200, body
            analysed = checked_body("analysis", body)
            status, body = await asyncio.to_thread(http, server, "PUT", f"/v1/rooms/{ROOM}/tracks/song?analysis={analysed['analysis']}")
            assert status == 200 and json.loads(body)["updates"] == len(analysed["timeline"]), body
            async with client(server, ROOM, role="source") as (src, _), client(server, ROOM) as (lis, _):
                await src.send(json.dumps({"type": "play", "track": "song", "position": 0}))
                timeline = await until_type(lis, "timeline")
                m = await until_type(lis, "mood")
                assert [u["position"] for u in timeline["updates"]] == [r["stream_time"] for r in analysed["timeline"]]
                assert {k: v for k, v in m.items() if k in analysed["timeline"][0]} == analysed["timeline"][0]

    asyncio.run(run())


def test_a_timeline_that_would_not_fit_a_clients_queue_is_refused(tiny_model_path):
    from sendreturn_mood.server.prepared import PrepareError

    async def run() -> None:
        async with running_server(tiny_model_path, server__send_queue_bytes=12000) as server:
            with pytest.raises(PrepareError) as e:
                await server.tracks.prepare(ROOM, "x", wav_bytes(8.0))
            assert e.value.status == 413 and "server.send_queue_bytes" in e.value.message

    asyncio.run(run())


def test_tracks_need_a_token_for_their_room_and_role(tiny_model_path):
    """With signed tokens: PUT and DELETE need a source token for the room, GET any token for it; a token for
    another room, or a listener's for a PUT, is 401 (and nothing is stored)."""
    secret = "prepared-test-secret-" + "x" * 32

    async def run() -> None:
        async with running_server(tiny_model_path, server__auth__secret=secret) as server:
            mint = server.auth.mint
            source, listener, other = mint(ROOM, ["source"], 60), mint(ROOM, ["listener"], 60), mint("elsewhere", ["source"], 60)
            path = f"/v1/rooms/{ROOM}/tracks/song"
            for token in (None, listener, other):
                query = f"?token={token}" if token else ""
                status, body = await asyncio.to_thread(http, server, "PUT", path + query, wav_bytes(4.0))
                assert status == 401 and checked_body("http-error", body)["error"]["code"] == "unauthorized", token
            status, _ = await asyncio.to_thread(http, server, "PUT", f"{path}?token={source}", wav_bytes(4.0))
            assert status == 200
            assert (await asyncio.to_thread(http, server, "GET", f"{path}?token={listener}"))[0] == 200
            assert (await asyncio.to_thread(http, server, "GET", f"{path}?token={other}"))[0] == 401
            assert (await asyncio.to_thread(http, server, "DELETE", f"{path}?token={listener}"))[0] == 401
            assert (await asyncio.to_thread(http, server, "DELETE", f"{path}?token={source}"))[0] == 204

    asyncio.run(run())

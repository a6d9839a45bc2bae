"""Protocol v1 as pure functions (no network): handshake parsing, client messages, server messages, the outbox's
conflation, the rate limiter and the Prometheus text format."""

from __future__ import annotations

import asyncio
import json

import pytest

from sendreturn_mood import protocol
from sendreturn_mood.metrics import ServerMetrics
from sendreturn_mood.protocol import ConnectParams, MessageError, Refusal
from sendreturn_mood.room.rooms import CONTROL, MOOD, Outbox
from sendreturn_mood.room.session import TokenBucket


def test_defaults():
    p = protocol.parse_connect("/v1/rooms/lobby")
    assert p == ConnectParams(room="lobby", role="listener", encoding="pcm_s16le", sample_rate=48000, channels=1)
    assert not p.is_source


def test_full_source_handshake():
    p = protocol.parse_connect(
        "/v1/rooms/My_Room-1.a?role=source&encoding=pcm_f32le&sample_rate=44100&channels=8&preset=subtle&token=t&future=1",
        presets=["default", "subtle"],
    )
    assert (p.room, p.role, p.encoding, p.sample_rate, p.channels, p.preset, p.token) == (
        "My_Room-1.a", "source", "pcm_f32le", 44100, 8, "subtle", "t")


@pytest.mark.parametrize("room", ["a", "A" * 64, "x.y-z_0", "%41b"])
def test_room_names_ok(room):
    assert protocol.room_from_path(f"/v1/rooms/{room}?x=1") in (room, "Ab")


@pytest.mark.parametrize("room", ["", "A" * 65, "a b", "a/b", "é", "a%2Fb", "a;b"])
def test_room_names_refused(room):
    with pytest.raises(Refusal) as e:
        protocol.room_from_path(f"/v1/rooms/{room}")
    assert e.value.status == 400 and e.value.code == "bad_request"


def test_other_paths_are_not_rooms():
    assert protocol.room_from_path("/healthz") is None
    with pytest.raises(Refusal, match="path must be"):
        protocol.parse_connect("/v2/rooms/a")


@pytest.mark.parametrize(
    "query",
    ["sample_rate=7999", "sample_rate=192001", "sample_rate=4.4e4", "channels=0", "channels=9", "encoding=pcm_u8",
     "role=admin", "preset=loud", "channels=1&channels=2"],
)
def test_bad_parameters(query):
    with pytest.raises(Refusal) as e:
        protocol.parse_connect(f"/v1/rooms/a?{query}", presets=["default"])
    assert e.value.status == 400
    body = json.loads(e.value.body())
    assert body["error"]["code"] == "bad_request" and body["error"]["message"]


@pytest.mark.parametrize("rate", [8000, 192000])
def test_rate_limits_inclusive(rate):
    assert protocol.parse_connect(f"/v1/rooms/a?sample_rate={rate}").sample_rate == rate


def test_the_token_comes_from_the_query_or_a_bearer_header():
    assert protocol.parse_connect("/v1/rooms/a").token is None
    assert protocol.parse_connect("/v1/rooms/a?token=k").token == "k"
    assert protocol.parse_connect("/v1/rooms/a", authorization="Bearer k").token == "k"
    assert protocol.parse_connect("/v1/rooms/a", authorization="bearer   k ").token == "k"
    assert protocol.parse_connect("/v1/rooms/a", authorization="Basic k").token is None


def test_refusal_statuses():
    assert {c: Refusal(c, "m").status for c in ("bad_request", "unauthorized", "source_taken", "server_full")} == {
        "bad_request": 400, "unauthorized": 401, "source_taken": 409, "server_full": 503}


def test_client_messages():
    assert protocol.parse_client_message('{"type": "track", "id": "s:1", "title": "T", "artist": "A", "extra": 1}') == protocol.Track("s:1", "T", "A")
    assert protocol.Track("s:1").to_dict() == {"id": "s:1"}
    assert protocol.parse_client_message('{"type": "preset", "name": "subtle"}') == protocol.PresetChange("subtle")
    assert protocol.parse_client_message('{"type": "end"}') == protocol.End()
    assert protocol.parse_client_message('{"type": "keepalive"}') == protocol.Keepalive()


@pytest.mark.parametrize(
    "text", ["", "nope", "3", "null", '"track"', '{"type": 1}', '{"type": "TRACK", "id": "x"}', '{"type": "track", "id": ""}',
             '{"type": "track", "id": "' + "x" * 600 + '"}', '{"type": "preset", "name": null}', "[" * 100000]
)
def test_bad_client_messages(text):
    with pytest.raises(MessageError) as e:
        protocol.parse_client_message(text)
    assert e.value.code == "bad_message"


def test_server_messages():
    p = ConnectParams("r", "source", "pcm_f32le", 44100, 2)
    w = protocol.welcome(p, {"name": "m", "version": "1", "moods": ["a", "b"], "genres": []}, 2.992, 1.504, "default")
    assert list(w) == ["type", "protocol", "room", "role", "audio", "model", "analysis", "preset"]
    assert w["audio"] == {"encoding": "pcm_f32le", "sample_rate": 44100, "channels": 2}
    assert "audio" not in protocol.welcome(ConnectParams("r"), {}, 3, 1.5, "default")
    analysis = {"stream_time": 3.0, "mood": "a", "confidence": 0.6, "probabilities": {"a": 0.6, "b": 0.4}}
    m = protocol.mood("r", 7, analysis, {"id": "t"}, 4.23456)
    assert list(m)[:5] == ["type", "room", "seq", "stream_time", "track"]
    assert m["latency_ms"] == 4.235 and m["seq"] == 7 and m["mood"] == "a"
    assert "track" not in protocol.mood("r", 1, analysis, None, 1.0)
    assert protocol.source_state(True) == {"type": "source", "state": "connected"}
    assert protocol.source_state(False) == {"type": "source", "state": "disconnected"}
    assert protocol.error("bad_audio", "x") == {"type": "error", "code": "bad_audio", "message": "x", "fatal": False}
    assert set(protocol.ERROR_CODES) == {"bad_message", "bad_audio", "rate_limited", "not_allowed", "too_big", "unauthorized", "server_error", "unknown_track", "clock_mismatch"}
    with pytest.raises(ValueError):
        protocol.encode({"x": float("nan")})  # never NaN on the wire


async def test_outbox_conflates_moods_only():
    metrics = ServerMetrics()
    box = Outbox(2, metrics)
    box.deliver("w", CONTROL)
    for i in range(5):
        box.deliver(f"m{i}", MOOD)
    box.deliver("e", CONTROL)
    assert [await box.next() for _ in range(len(box))] == [(CONTROL, "w"), (MOOD, "m3"), (MOOD, "m4"), (CONTROL, "e")]
    assert box.dropped == 3 and metrics.dropped.get() == 3
    box.close(1000, "bye")
    box.deliver("late", MOOD)  # ignored after close
    assert await asyncio.wait_for(box.next(), 1) is None and box.closing == (1000, "bye")


def test_token_bucket():
    b = TokenBucket(rate=2.0, burst=1.0, now=100.0)
    assert b.take(0.6, 100.0) and not b.take(0.6, 100.0)  # burst spent
    assert b.take(0.6, 100.25) and not b.take(0.6, 100.25)  # refills 0.5 s of audio in 0.25 s: 0.9 available
    assert b.take(1.0, 200.0) and not b.take(0.01, 200.0)  # capped at the burst


def test_metrics_read_back_and_refuse_wrong_labels():
    m = ServerMetrics()
    m.errors.inc(code="a")
    m.errors.inc(2, code='q"b')
    assert m.errors.get(code="a") == 1 and m.errors.get(code='q"b') == 2 and m.errors.get(code="never") == 0
    for v in (0.0005, 0.5, 5):
        m.latency.observe(v)
    assert m.latency.count() == 3
    m.connections.inc(role="source")
    m.connections.dec(role="source")
    assert m.connections.get(role="source") == 0
    with pytest.raises(ValueError):
        m.errors.inc(kind="x")
    other = ServerMetrics()  # every server has its own registry: nothing shared, no duplicate-name clash
    assert other.errors.get(code="a") == 0
    text = m.render()
    assert text.endswith("\n") and "# TYPE sendreturn_update_latency_seconds histogram" in text
    assert 'sendreturn_errors_total{code="q\\"b"} 2.0' in text


async def test_outbox_is_bounded_even_for_control_messages():
    from sendreturn_mood.room.rooms import CONTROL_SLACK

    box = Outbox(2)
    for i in range(1000):
        box.deliver(f"e{i}", CONTROL)
    assert len(box) == 2 + CONTROL_SLACK and box.dropped == 1000 - len(box)

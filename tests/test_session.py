"""The sans-I/O core: a connection's session and a room's analysis state, driven by plain calls (no socket, no loop).

What a real server does with these actions is tested end to end in test_server_*.py; here every protocol rule
that needs no network is checked directly, including the ones that are awkward to provoke over a socket (clock
edges of the rate limit, stale windows, seq continuing across sources)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sendreturn_mood import protocol
from sendreturn_mood.config import load_config
from sendreturn_mood.room.effects import load_presets
from sendreturn_mood.model.contract import MoodModel, Prediction
from sendreturn_mood.audio.pcm import decode, encode
from sendreturn_mood.audio.pipeline import AnalysisStream, window_plan
from sendreturn_mood.room.rooms import Room, RoomError, RoomRegistry
from sendreturn_mood.room.session import Broadcast, Close, Drain, Reply, RoomChanged, Session, SessionSettings, Submit
from sendreturn_mood.room.tracker import tracker_from_config
from tests.server_support import TEST_SETTINGS, tone


@pytest.fixture(scope="module")
def world(tiny_model_path):
    config = load_config(None, dict(TEST_SETTINGS, **{"server.rate_limit_factor": 2.0, "server.rate_limit_burst_seconds": 1.0}))
    info = MoodModel(tiny_model_path).info
    presets = load_presets(None, "default")
    plan = window_plan(info, config)
    settings = SessionSettings(
        max_message_bytes=100000,
        rate_limit_factor=2.0,
        rate_limit_burst_seconds=10.0,
        plan=plan,
        frontend=info.frontend,
        window_seconds=info.frontend.frames_to_seconds(plan.window_frames),
        hop_seconds=info.frontend.frames_to_seconds(plan.hop_frames),
        model_public={"name": info.name, "version": info.version, "moods": info.mood_labels, "genres": list(info.genres)},
        presets=tuple(presets.names),
    )
    return info, settings, lambda preset=None: tracker_from_config(info, config, presets, preset)


def session(world, role="source", room=None, burst=None, **params):
    info, settings, make_tracker = world
    if burst is not None:
        settings = dataclasses.replace(settings, rate_limit_burst_seconds=burst)
    room = room or Room("lobby", make_tracker())
    p = protocol.ConnectParams("lobby", role, params.get("encoding", "pcm_s16le"), params.get("sample_rate", 16000), params.get("channels", 1))
    return Session(p, room, settings, now=0.0), room


def codes(actions) -> list[str]:
    return [a.message["code"] for a in actions if isinstance(a, Reply) and a.message["type"] == "error"]


def test_open_welcomes_and_a_source_announces_itself(world):
    src, room = session(world)
    actions = src.open()
    assert isinstance(actions[0], Reply) and actions[0].message["type"] == "welcome"
    assert actions[0].message["audio"] == {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1}
    assert RoomChanged() in actions and Broadcast(protocol.source_state(True)) in actions
    lis, _ = session(world, "listener", room)
    (welcome,) = lis.open()
    assert welcome.message["role"] == "listener" and "audio" not in welcome.message


def test_audio_becomes_windows_every_hop(world):
    src, room = session(world)
    subs = []
    for i in range(20):  # 2 s of audio in 100 ms frames
        frame = encode(tone(0.1, 16000, seed=i), "pcm_s16le")
        subs += src.receive(frame, now=i * 0.1)
    assert all(isinstance(a, Submit) for a in subs)
    assert [round(a.window.stream_time, 3) for a in subs] == [0.992, 1.488, 1.984]
    assert {a.generation for a in subs} == {room.generation}
    assert room.audio_seconds == pytest.approx(2.0)


def test_integer_pcm_waits_undecoded_and_gives_the_windows_of_eager_decoding(world):
    """s16 frames are held as bytes until the stream would run its DSP: each Submit still comes with the frame that
    completes its window, the windows equal those of decoding and pushing every frame at once, `end` analyses what
    was held, and a `track` message drops it with the old track's audio."""
    info, settings, _ = world
    frames = [encode(tone(0.1, 48000, channels=2, seed=i), "pcm_s16le") for i in range(80)]

    def stream(count: int) -> tuple[int, list, list]:
        src, _ = session(world, sample_rate=48000, channels=2)
        eager = AnalysisStream(settings.frontend, 48000, settings.plan)
        most_held = 0
        for i, frame in enumerate(frames[:count]):
            got = [a.window for a in src.receive(frame, 0.1 * i) if isinstance(a, Submit)]
            most_held = max(most_held, len(src._held))
            expected = eager.push(decode(frame, "pcm_s16le", 2))
            assert [w.stream_time for w in got] == [w.stream_time for w in expected], f"frame {i}"
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a.logmel, b.logmel)
        held_at_end = len(src._held)
        tail = [a.window for a in src.receive(json.dumps({"type": "end"}), 0.1 * count) if isinstance(a, Submit)]
        return most_held + 100 * held_at_end, tail, eager.finish()

    checked = 0
    for count in range(61, 80):
        held, tail, expected_tail = stream(count)
        assert held % 100 >= 2  # frames did wait undecoded
        assert [w.stream_time for w in tail] == [w.stream_time for w in expected_tail]
        for a, b in zip(tail, expected_tail):
            np.testing.assert_array_equal(a.logmel, b.logmel)
        checked += held >= 100 and bool(expected_tail)  # a final window made partly of audio held at `end`
    assert checked

    src, _ = session(world, sample_rate=48000, channels=2)
    for i, frame in enumerate(frames[:5]):
        src.receive(frame, 0.1 * i)
    assert src.receive(json.dumps({"type": "track", "id": "next"}), 0.5) == [RoomChanged()]
    assert not src._held and src.stream.seconds_received == 0.0


def test_listeners_may_not_send_audio_or_source_messages(world):
    lis, _ = session(world, "listener")
    assert codes(lis.receive(b"\x00\x00", 0.0)) == ["not_allowed"]
    assert codes(lis.receive(json.dumps({"type": "track", "id": "x"}), 0.0)) == ["not_allowed"]
    assert lis.receive(json.dumps({"type": "keepalive"}), 0.0) == []


def test_bad_audio_and_bad_messages_are_not_fatal(world):
    src, _ = session(world, channels=2)
    assert codes(src.receive(b"\x00\x00", 0.0)) == ["bad_audio"]
    assert codes(src.receive("not json", 0.0)) == ["bad_message"]
    assert codes(src.receive(json.dumps({"type": "preset", "name": "nope"}), 0.0)) == ["bad_message"]
    assert not src.ended


def test_rate_limit_drops_frames_with_one_error_per_second(world):
    src, room = session(world, burst=1.0)
    half = encode(np.zeros(8000, dtype=np.float32), "pcm_s16le")
    too_long = encode(np.zeros(24000, dtype=np.float32), "pcm_s16le")  # 1.5 s: more than the 1 s burst holds
    assert codes(src.receive(half, 0.0) + src.receive(half, 0.0)) == []  # the burst
    assert codes(src.receive(half, 0.1)) == ["rate_limited"]  # 0.2 s refilled at 2x: not enough
    assert src.receive(too_long, 0.5) == []  # dropped quietly: one error per second at most
    assert codes(src.receive(too_long, 1.1)) == ["rate_limited"]
    assert codes(src.receive(half, 1.1)) == []  # refilled meanwhile: accepted again
    assert room.audio_seconds == pytest.approx(1.5)


def test_too_big_is_fatal_with_close_1009(world):
    src, _ = session(world)
    actions = src.receive(b"\x00" * 100002, 0.0)
    assert codes(actions) == ["too_big"] and actions[0].message["fatal"] is True
    assert actions[-1] == Close(protocol.CLOSE_TOO_BIG, "message too big")
    assert src.receive(b"\x00\x00", 0.0) == []  # nothing after a fatal error


def test_track_restarts_the_analysis_and_preset_changes(world):
    src, room = session(world)
    src.receive(encode(tone(0.8, 16000), "pcm_s16le"), 0.0)
    generation = room.generation
    assert src.receive(json.dumps({"type": "track", "id": "t1", "title": "One"}), 0.0) == [RoomChanged()]
    assert room.track == {"id": "t1", "title": "One"} and room.generation == generation + 1
    # The stream restarted: the first window comes after a whole window of the new track's audio.
    assert src.receive(encode(tone(0.8, 16000), "pcm_s16le"), 0.0) == []
    assert src.receive(json.dumps({"type": "preset", "name": "subtle"}), 0.0) == [RoomChanged()]
    assert room.preset == "subtle"


def test_end_submits_the_tail_then_drains(world):
    src, room = session(world)
    subs = src.receive(encode(tone(1.4, 16000), "pcm_s16le"), 0.0)
    assert len(subs) == 1
    actions = src.receive(json.dumps({"type": "end"}), 1.0)
    assert [type(a) for a in actions] == [Submit, Drain]
    assert actions[0].window.final and actions[-1] == Drain(protocol.CLOSE_NORMAL, "end of stream")
    assert src.receive(b"\x00\x00", 1.0) == [] and src.ended


def test_room_results_become_numbered_updates_and_stale_ones_are_dropped(world):
    _, _, make_tracker = world
    room = Room("lobby", make_tracker())
    room.start_source(None)
    moods = np.array([0.7, 0.1, 0.1, 0.1], dtype=np.float32)
    moods = Prediction(moods)
    (first,) = (u.to_message() for u in room.on_window(room.generation, moods, 1.0, 3.0))
    assert first["type"] == "mood" and first["seq"] == 1 and first["mood"] == "happy" and first["latency_ms"] == 3.0
    old = room.generation
    room.new_track({"id": "t2"})
    assert room.on_window(old, moods, 1.5, 3.0) == []  # a window of the previous track
    (second,) = (u.to_message() for u in room.on_window(room.generation, moods, 1.0, 3.0))
    assert second["seq"] == 2 and second["track"] == {"id": "t2"}
    # A new source (e.g. after a move to another process) continues above the highest seq the room published.
    room.start_source("dramatic", last_seq=41)
    assert room.on_window(room.generation, moods, 1.0, 3.0)[0].seq == 42 and room.preset == "dramatic"
    room.closed = True
    assert room.on_window(room.generation, moods, 1.0, 3.0) == []


def test_registry_one_source_per_room_and_max_rooms(world):
    _, _, make_tracker = world

    class Member:
        def __init__(self, role: str) -> None:
            self.role, self.got = role, []

        def deliver(self, text: str, kind: str) -> None:
            self.got.append(text)

    reg = RoomRegistry(make_tracker, max_rooms=1)
    src, lis = Member("source"), Member("listener")
    room = reg.join("a", src, True)
    reg.join("a", lis, False)
    with pytest.raises(RoomError) as e:
        reg.join("a", Member("source"), True)
    assert e.value.code == "source_taken"
    with pytest.raises(RoomError) as e:
        reg.join("b", Member("listener"), False)
    assert e.value.code == "server_full"
    reg.publish(room, {"type": "source", "state": "connected"})
    assert src.got == lis.got == ['{"type":"source","state":"connected"}']  # encoded once, same bytes
    assert reg.leave(room, src) is True and not room.closed
    assert reg.leave(room, lis) is False and room.closed and len(reg) == 0

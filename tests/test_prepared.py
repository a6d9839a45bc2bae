"""Tracks known ahead, sans I/O: a real analysis (`analyze`'s own path over audio the test makes) followed by a
room in step with a playback clock the test drives; the session's play / position / pause / stop and their bad
input; the bounded store. What a real server does with these is tested in test_prepared_server.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math

import numpy as np
import pytest
import soundfile as sf

from sendreturn_mood import protocol
from sendreturn_mood.broker.tracks import StoreFull, TrackStore
from sendreturn_mood.config import load_config
from sendreturn_mood.model.contract import MoodModel
from sendreturn_mood.room.offline import analyze_file
from sendreturn_mood.room.prepared import JUMP_SECONDS, MOOD, TRACK_CHANGE, TrackAnalysis, Follower, PreparedTrack
from sendreturn_mood.room.rooms import Room
from sendreturn_mood.room.session import Broadcast, Fetch, Follow, Reply, Session
from tests.server_support import TEST_SETTINGS, tone
from tests.test_session import codes, world  # noqa: F401  (the fixture)


@pytest.fixture(scope="module")
def analysed(tiny_model_path, tmp_path_factory):
    """(TrackAnalysis, analyze's result) of 12 s of made audio: a tone, then noise (two different sounds)."""
    rate = 16000
    audio = np.concatenate([tone(6.0, rate, freq=330.0), np.random.default_rng(1).normal(0, 0.2, 6 * rate).astype(np.float32)])
    path = tmp_path_factory.mktemp("audio") / "two_parts.wav"
    sf.write(path, audio, rate)
    config = load_config(None, TEST_SETTINGS)
    result = analyze_file(path, MoodModel(tiny_model_path), config)
    return TrackAnalysis.from_result("a" * 32, result), result


def track(analysed, id="song-1") -> PreparedTrack:
    return PreparedTrack(id, analysed[0], "Song", "Artist")


def positions(cues) -> list[float]:
    return [c.position for c, _ in cues]


# ------------------------------------------------------------------------------------------------ the follower


def test_cues_come_at_their_positions_as_the_clock_runs(analysed):
    analysis, result = analysed
    f = Follower(track(analysed), 0.0, now=100.0)
    first = result["timeline"][0]["stream_time"]
    assert f.due(100.0) == [] and f.next_time() == pytest.approx(100.0 + first)
    sent = []
    t = 100.0
    while not f.finished:  # a clock ticking in 10 ms steps: every cue exactly once, in order, never early
        t += 0.01
        for cue, late in f.due(t):
            assert t - 0.01 - 1e-9 <= 100.0 + cue.position <= t + 1e-9 and 0 <= late <= 0.01 + 1e-9
            sent.append(cue)
    assert [c.position for c in sent if c.kind == MOOD] == [u["stream_time"] for u in result["timeline"]]
    assert [json.loads("{" + c.body + "}") for c in sent if c.kind == MOOD] == [
        {k: v for k, v in u.items() if k != "stream_time"} for u in result["timeline"]
    ]
    assert f.next_time() is None


def test_waking_at_next_time_always_finds_the_cue_due(analysed):
    """A caller that sleeps until `next_time` and wakes exactly then gets the cue (float rounding of a clock far from
    zero must not leave it a hair short, which made the server's timer fire again and again without progress)."""
    for start in (0.0, 0.3, 1234.5678, 98765.4321):
        for at in (0.0, 0.1, 0.7):
            f = Follower(track(analysed), at, now=start, lead=0.25)
            f.due(start)
            while not f.finished:
                t = f.next_time()
                assert f.due(t), (start, at, t)


def test_lead_sends_each_cue_that_much_early(analysed):
    first = analysed[1]["timeline"][0]["stream_time"]
    f = Follower(track(analysed), 0.0, now=0.0, lead=0.75)
    assert f.next_time() == pytest.approx(first - 0.75)
    assert f.due(first - 0.76) == [] and positions(f.due(first - 0.75)) == [first]


def test_a_jump_realigns_at_once_and_drift_does_not(analysed):
    updates = [u["stream_time"] for u in analysed[1]["timeline"]]
    f = Follower(track(analysed), 0.0, now=0.0)
    f.due(updates[2])  # three updates sent
    # drift: the player says it is 0.3 s behind the clock: nothing is sent again, the next cue waits for it
    assert not f.report(updates[2] - 0.3, now=updates[2])
    assert f.due(updates[2] + 0.1) == [] and positions(f.due(updates[3] + 0.31)) == [updates[3]]
    # a seek forward: the update for the new position goes out now, what lies between is skipped
    target = updates[-3] + 0.01
    assert f.report(target, now=20.0)
    (cue, late), = f.due(20.0)
    assert cue.position == updates[-3] and late == 0.0
    # a seek back: the same
    assert f.report(updates[1] + 0.2, now=21.0)
    assert positions(f.due(21.0)) == [updates[1]]
    assert JUMP_SECONDS <= 1.5


def test_pause_holds_and_play_resumes(analysed):
    updates = [u["stream_time"] for u in analysed[1]["timeline"]]
    f = Follower(track(analysed), 0.0, now=0.0)
    f.due(updates[1])
    f.pause(now=updates[1])
    assert f.next_time() is None and f.due(1000.0) == []
    f.seek(updates[1], now=1000.0)  # play again where it paused: the update there is re-sent (a re-alignment)
    assert positions(f.due(1000.0)) == [updates[1]]
    assert positions(f.due(1000.001 + updates[2] - updates[1])) == [updates[2]]


def test_the_analysis_round_trips_through_its_stored_form(analysed):
    analysis, result = analysed
    again = TrackAnalysis.from_blob(analysis.blob)
    assert again.cues == analysis.cues and again.timeline_updates == analysis.timeline_updates
    assert again.duration == result["duration"] and again.updates == len(result["timeline"])
    assert len(analysis.blob) < len(json.dumps(result["timeline"])) / 3


# ------------------------------------------------------------------------------------------------ the room


def test_the_room_sends_the_analysis_as_mood_messages_and_seq_continues(analysed, world):  # noqa: F811
    info, settings, make_tracker = world
    room = Room("lobby", make_tracker())
    room.seq = 41  # live updates came before
    t = track(analysed)
    assert room.play_prepared(t, 0.0, now=0.0, lead=0.0)
    texts = [(out.text, out.kind, out.seq, late) for out, late in room.follow(1000.0)]
    moods = [json.loads(text) for text, kind, _, _ in texts if kind == "mood"]
    assert [m["seq"] for m in moods] == list(range(42, 42 + len(analysed[1]["timeline"])))
    for m, u in zip(moods, analysed[1]["timeline"]):
        assert m["prepared"] is True and m["track"] == {"id": "song-1", "title": "Song", "artist": "Artist"}
        expected = protocol.mood("lobby", m["seq"], u, m["track"], m["latency_ms"], prepared=True)
        assert protocol.encode(expected) == [x[0] for x in texts if json.loads(x[0]).get("seq") == m["seq"]][0]
    changes = [json.loads(text) for text, kind, _, _ in texts if json.loads(text)["type"] == "track_change"]
    assert [{k: v for k, v in c.items() if k not in ("type", "room", "prepared")} for c in changes] == analysed[1]["track_changes"]
    # the same track again only seeks (no new timeline); another restarts the room
    assert not room.play_prepared(t, 1.0, now=2000.0, lead=0.0)
    assert room.play_prepared(track(analysed, "song-2"), 0.0, now=2000.0, lead=0.0)


def test_typed_analysis_reads_back_what_analyze_printed(analysed):
    for cue in analysed[0].cues:
        if cue.kind == MOOD:
            row = json.loads("{" + cue.body + "}")
            assert cue.analysis.to_dict() == {"stream_time": cue.position, **row}


def test_the_timeline_message_holds_the_whole_track_compactly(analysed, world):  # noqa: F811
    info, settings, make_tracker = world
    room = Room("lobby", make_tracker())
    room.play_prepared(track(analysed), 0.0, now=0.0, lead=0.5)
    msg = json.loads(room.timeline(settings.hop_seconds).text)
    assert msg["type"] == "timeline" and msg["lead_seconds"] == 0.5 and msg["track"]["id"] == "song-1"
    assert [u["position"] for u in msg["updates"]] == [u["stream_time"] for u in analysed[1]["timeline"]]
    assert msg["updates"][0]["mood"] == analysed[1]["timeline"][0]["mood"]
    assert msg["duration"] == analysed[1]["duration"] and msg["track_changes"] == analysed[1]["track_changes"]


# ------------------------------------------------------------------------------------------------ the session


def source(world, room=None):  # noqa: F811
    info, settings, make_tracker = world
    room = room or Room("lobby", make_tracker())
    params = protocol.ConnectParams("lobby", "source", "pcm_s16le", 16000, 1)
    return Session(params, room, settings, now=0.0), room


def play(msg: dict) -> str:
    return json.dumps({"type": "play", **msg})


def test_play_fetches_then_follows_with_the_timeline_first(analysed, world):  # noqa: F811
    src, room = source(world)
    (fetch,) = src.receive(play({"track": "song-1", "position": 2.5, "lead_seconds": 0.5}), now=1.0)
    assert isinstance(fetch, Fetch) and fetch.play == protocol.Play("song-1", 2.5, 0.5)
    actions = src.play(track(analysed), fetch.play, now=1.0)
    assert isinstance(actions[0], Broadcast) and json.loads(actions[0].message.text)["type"] == "timeline"
    assert actions[-1] == Follow() and room.prepared is not None and room.lead_seconds == 0.5
    assert room.prepared.position(3.0) == pytest.approx(4.5)
    # a listener joining now gets the timeline after its welcome
    lis = Session(protocol.ConnectParams("lobby", "listener"), room, src.settings, now=3.0)
    welcome, timeline = lis.open()
    assert json.loads(timeline.message)["type"] == "timeline"
    # stop: live again
    assert src.receive('{"type": "stop"}', now=4.0) == [Follow()] and room.prepared is None


def test_bad_playback_input_gets_clear_non_fatal_errors(analysed, world):  # noqa: F811
    src, room = source(world)
    (fetch,) = src.receive(play({"track": "nope"}), now=0.0)
    (err,) = src.play(None, fetch.play, now=0.0)
    assert err.message["code"] == protocol.UNKNOWN_TRACK and not err.message["fatal"] and "PUT" in err.message["message"]
    for bad in ({"position": -1}, {"position": "3"}, {"position": True}, {"lead_seconds": 11}, {}):
        assert codes(src.receive(play({"track": "song-1", **bad}) if bad else play({}), now=0.0)) == [protocol.BAD_MESSAGE]
    assert codes(src.receive('{"type": "play", "track": "x", "position": NaN}', now=0.0)) == [protocol.BAD_MESSAGE]
    assert codes(src.receive('{"type": "position", "position": 1}', now=0.0)) == [protocol.BAD_MESSAGE]  # nothing plays
    (err,) = src.play(track(analysed), protocol.Play("song-1", 1000.0), now=0.0)
    assert err.message["code"] == protocol.BAD_MESSAGE and "past the end" in err.message["message"]
    src.play(track(analysed), protocol.Play("song-1", 0.0), now=0.0)
    assert codes(src.receive('{"type": "position", "position": 999}', now=1.0)) == [protocol.BAD_MESSAGE]
    # faster than a few reports per second: dropped, one rate_limited per second
    got = [codes(src.receive('{"type": "position", "position": 1.5}', now=2.0 + i * 0.01)) for i in range(20)]
    assert got.count([protocol.RATE_LIMITED]) == 1 and got.count([]) >= 10
    # audio while a prepared track plays is dropped (send stop first)
    assert codes(src.receive(b"\0\0" * 1600, now=5.0)) == [protocol.NOT_ALLOWED]
    # a listener may not drive playback
    lis = Session(protocol.ConnectParams("lobby", "listener"), room, src.settings, now=0.0)
    for kind in ("play", "position", "pause", "stop"):
        assert codes(lis.receive(json.dumps({"type": kind, "track": "x", "position": 1}), now=0.0)) == [protocol.NOT_ALLOWED]


# ------------------------------------------------------------------------------------------------ the store


def test_the_store_is_bounded_and_says_which_limit(analysed):
    clock = [0.0]
    store = TrackStore(max_tracks=3, max_tracks_per_room=2, ttl_seconds=60, clock=lambda: clock[0])
    a = analysed[0]

    async def run() -> None:
        await store.put("r1", "t1", a)
        await store.put("r1", "t1", a, "again")  # the same id replaces: never counted twice
        await store.put("r1", "t2", a)
        with pytest.raises(StoreFull, match="max_tracks_per_room"):
            await store.put("r1", "t3", a)
        await store.put("r2", "t1", a)
        with pytest.raises(StoreFull, match=r"maximum of 3 tracks \(prepared.max_tracks\)") as e:
            await store.put("r3", "t1", a)
        assert e.value.code == protocol.STORE_FULL and protocol.REFUSAL_STATUS[e.value.code] == 507
        got = await store.get("r1", "t1")
        assert got is not None and got.title == "again" and got.analysis is a
        assert await store.get("r1", "nope") is None and await store.get("r9", "t1") is None
        assert await store.analysis(a.id) is a
        clock[0] = 61.0  # expired: room for new ones, and the analysis goes with its last track
        assert await store.count() == 0 and await store.get("r1", "t1") is None and await store.analysis(a.id) is None
        await store.put("r3", "t1", a)

    asyncio.run(run())


def test_live_audio_takes_over_once_the_prepared_track_has_played_to_its_end(analysed, world):  # noqa: F811
    src, room = source(world)
    src.play(track(analysed), protocol.Play("song-1", 0.0), now=0.0)
    assert codes(src.receive(b"\0\0" * 1600, now=1.0)) == [protocol.NOT_ALLOWED]
    room.follow(1000.0)  # every cue sent, the player is past the end
    assert codes(src.receive(b"\0\0" * 1600, now=1000.0)) == [] and room.prepared is None

"""Track changes heard from the audio, end to end: a real server with the shipped model, a source streaming two real
songs back to back with no `track` message, and a listener that must hear about the change (and only that one).
Also: the per-room off switch (handshake parameter and message), and an explicit `track` message winning."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from sendreturn_mood.room.offline import analyze_file, read_blocks
from sendreturn_mood.client import TrackChange, parse_message
from sendreturn_mood.model.contract import MoodModel, default_model_path
from tests.conftest import shared_data_or_skip
from tests.server_support import (
    checked, client, http_get, metric_value, read_until_closed, running_server, send_audio, server_config,
)

# What `serve` uses with the shipped model (the test settings shorten windows and hops; detection is evaluated
# with the model's own window and the default hop).
REAL = {"analysis__window_seconds": 2.992, "analysis__hop_seconds": 1.5, "smoothing__time_constant_seconds": 4.0}
ENVELOPE = ("type", "room", "seq", "track", "latency_ms")
TOLERANCE = 3.0  # seconds, as in the evaluation


def songs() -> tuple[np.ndarray, np.ndarray]:
    """Two real songs that sound different (an angry 4Q clip, an Emotify classical piece), 16 kHz mono."""
    a = shared_data_or_skip("moods-4q") / "Q2" / "MT0000133200.mp3"
    b = shared_data_or_skip("emotify") / "classical" / "12.mp3"
    if not a.is_file() or not b.is_file():
        pytest.skip(f"{a} or {b} is missing from the shared data")
    out = []
    for path in (a, b):
        rate, blocks = read_blocks(path)
        assert rate == 16000
        out.append(np.concatenate(list(blocks)))
    return out[0], out[1]


@pytest.fixture(scope="module")
def two_songs(tmp_path_factory) -> tuple[np.ndarray, np.ndarray, Path]:
    import soundfile as sf

    a, b = songs()
    path = tmp_path_factory.mktemp("trackchange") / "a_then_b.wav"
    sf.write(str(path), np.concatenate([a, b]), 16000, subtype="FLOAT")
    return a, b, path


async def stream_and_listen(audio: list, room: str, **source_params) -> tuple[dict, list[dict], list[dict]]:
    """A listener joins, a source streams `audio` (arrays are PCM, dicts are JSON messages) then `end`. Returns the
    source's welcome, the listener's messages and the source's; the server's /metrics must count the changes."""
    async with running_server(default_model_path(), **REAL) as server:
        async with client(server, room) as (listener, _):
            async with client(server, room, role="source", sample_rate=16000, encoding="pcm_f32le", **source_params) as (src, welcome):

                async def send() -> None:
                    for part in audio:
                        if isinstance(part, dict):
                            await src.send(json.dumps(part))
                        else:
                            await send_audio(src, part, 16000, 1, "pcm_f32le", chunk_seconds=0.25)
                    await src.send(json.dumps({"type": "end"}))

                _, from_source = await asyncio.gather(send(), read_until_closed(src, timeout=120))

            async def until_source_left() -> list[dict]:
                out = []
                while True:
                    msg = checked(json.loads(await asyncio.wait_for(listener.recv(), 30)))  # against schema/v1
                    out.append(msg)
                    if msg == {"type": "source", "state": "disconnected"}:
                        return out

            heard = await until_source_left()
        _, _, body = await asyncio.to_thread(http_get, server, "/metrics")
        counted = metric_value(body.decode(), "sendreturn_track_changes_detected_total")
        assert counted == sum(m["type"] == "track_change" for m in heard)
    return welcome, heard, from_source


async def test_listener_hears_the_change_between_two_songs(two_songs):
    a, b, path = two_songs
    boundary = len(a) / 16000
    reference = analyze_file(path, MoodModel(default_model_path()), server_config(**REAL))
    assert len(reference["track_changes"]) == 1  # analyze hears one change ...
    welcome, heard, from_source = await stream_and_listen([a, b], "tc")
    assert welcome["track_detection"] == {"enabled": True}
    changes = [m for m in heard if m["type"] == "track_change"]
    assert len(changes) == 1, changes  # ... and so does the room: none within either song
    change = changes[0]
    assert change["room"] == "tc" and change["source"] == "detected"
    typed = parse_message(json.dumps(change))  # the Python client knows the message and all its fields
    assert isinstance(typed, TrackChange) and typed.extra == {} and typed.stream_time == change["stream_time"]
    assert abs(change["stream_time"] - boundary) <= TOLERANCE
    assert boundary < change["detected_at"] <= boundary + 6.0
    # the server and analyze agree exactly: the same change, and the same updates (smoothing restarted there)
    assert {k: v for k, v in change.items() if k not in ("type", "room")} == reference["track_changes"][0]
    moods = [{k: v for k, v in m.items() if k not in ENVELOPE} for m in heard if m["type"] == "mood"]
    assert moods == reference["timeline"]
    after = next(m for m in heard if m["type"] == "mood" and m["stream_time"] == change["detected_at"])
    assert after["probabilities"] == after["instant"]["probabilities"]
    assert heard.index(change) == heard.index(after) - 1  # announced before the first update of the new track
    assert [m["type"] for m in from_source].count("track_change") == 1  # the source hears it too


async def test_detection_can_be_switched_off_per_room(two_songs):
    a, b, _ = two_songs
    welcome, heard, _ = await stream_and_listen([a, b], "off", track_detection="off")
    assert welcome["track_detection"] == {"enabled": False}
    assert not [m for m in heard if m["type"] == "track_change"]
    assert sum(m["type"] == "mood" for m in heard) > 30
    _, heard, _ = await stream_and_listen([{"type": "track_detection", "enabled": False}, a, b], "off-msg")
    assert not [m for m in heard if m["type"] == "track_change"]


@pytest.mark.parametrize("late_seconds", [0.0, 2.0])
async def test_an_explicit_track_message_wins(two_songs, late_seconds):
    """The source says when B starts (on time, or 2 s late): the room restarts there and no detected change is
    announced (the detector restarts with the track)."""
    a, b, path = two_songs
    reference = analyze_file(path, MoodModel(default_model_path()), server_config(**REAL))["track_changes"][0]
    boundary = len(a) / 16000
    assert reference["detected_at"] - boundary > late_seconds  # detection would come after the message
    late = int(late_seconds * 16000)
    _, heard, _ = await stream_and_listen([a, b[:late], {"type": "track", "id": "b"}, b[late:]], f"explicit{late}")
    assert not [m for m in heard if m["type"] == "track_change"]
    moods = [m for m in heard if m["type"] == "mood"]
    assert moods[-1]["track"] == {"id": "b"} and moods[-1]["stream_time"] == pytest.approx((len(b) - late) / 16000, abs=0.1)


def test_analyze_shows_the_change_in_its_timeline(two_songs, capsys):
    from sendreturn_mood.cli.analyze import main

    _, _, path = two_songs
    assert main([str(path)]) == 0
    text = capsys.readouterr().out
    assert text.count("track change heard") == 1
    assert main([str(path), "--json", "--track-detection", "off"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["track_detection"] is False and result["track_changes"] == []

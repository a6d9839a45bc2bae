"""sendreturn_mood.client against a real in-process server: typed updates, pacing, track/preset/end, refusals,
fatal errors, keepalive; every text message the client sends is validated against schema/v1/client-message.json
and every message it parses against the server schema, and the dataclasses cover exactly the schema's fields.
(Reconnect-and-resume across a server restart is tested through examples/ in tests/test_examples.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sendreturn_mood import client as sr
from sendreturn_mood import contract
from tests.server_support import checked, running_server, tone

RATE = 16000


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every text message the client builds, after validating it against the client schema (strict)."""
    out: list[dict] = []
    build = sr.client_message

    def checked_build(kind: str, **fields: object) -> str:
        text = build(kind, **fields)
        out.append(checked(json.loads(text), contract.CLIENT_MESSAGE))
        return text

    monkeypatch.setattr(sr, "client_message", checked_build)
    return out


def test_dataclasses_cover_exactly_the_schema_fields():
    classes = ((sr.Welcome, "welcome"), (sr.Mood, "mood"), (sr.SourceState, "source"), (sr.ServerError, "error"),
               (sr.TrackChange, "track_change"), (sr.Timeline, "timeline"), (sr.Resync, "resync"))
    assert sorted(name for _, name in classes) == sorted(contract.message_types(contract.SERVER_MESSAGE))
    for cls, name in classes:
        mine = {f.name for f in dataclasses.fields(cls)} - {"raw", "extra"}
        assert mine == set(contract.load(name)["properties"]) - {"type"}, name


def test_parse_message_keeps_unknown_fields_and_types():
    msg = sr.parse_message('{"type": "source", "state": "connected", "since": 3}')
    assert isinstance(msg, sr.SourceState) and msg.connected and msg.extra == {"since": 3}
    gap = sr.parse_message('{"type": "resync", "room": "r", "from_seq": 57, "to_seq": 63}')
    assert isinstance(gap, sr.Resync) and (gap.room, gap.from_seq, gap.to_seq) == ("r", 57, 63)
    other = sr.parse_message('{"type": "news", "text": "hi"}')
    assert isinstance(other, sr.Unknown) and other.type == "news" and json.loads(other.raw)["text"] == "hi"


async def test_source_and_listener_see_typed_updates(tiny_model_path, sent):
    async with running_server(tiny_model_path) as server:
        heard: list[sr.Event] = []

        async def listen() -> None:
            async with sr.Listener(server.url, "typed", retries=0) as room:
                async for event in room:
                    heard.append(event)
                    if isinstance(event, sr.SourceState) and not event.connected:
                        return

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.2)
        events: list[sr.Event] = []
        async with sr.Source(server.url, "typed", preset="subtle", on_event=events.append, model_format=False) as src:
            audio = tone(3.0, RATE, channels=2)
            await src.connect(RATE, 2)
            await src.track("spotify:track:1", title="One", artist="Someone")
            await src.preset("dramatic")
            await src.track_detection(False)
            frames = await src.send_array(audio.reshape(-1, 2), RATE, speed=0)
            result = await src.end()
        await asyncio.wait_for(listener, 10)

    assert frames == 3 * RATE
    assert [m["type"] for m in sent] == ["track", "preset", "track_detection", "end"]
    assert result.close_code == 1000 and result.updates >= 4 and isinstance(result.last, sr.Mood)
    welcome = events[0]
    assert isinstance(welcome, sr.Welcome) and welcome.audio == {"encoding": "pcm_s16le", "sample_rate": RATE, "channels": 2}
    moods = [e for e in events if isinstance(e, sr.Mood)]
    assert moods[-1] == result.last and moods[-1].track == {"id": "spotify:track:1", "title": "One", "artist": "Someone"}
    assert moods[-1].preset == "dramatic" and moods[-1].mood in welcome.model["moods"]
    assert isinstance(events[-1], sr.Disconnected) and events[-1].code == 1000
    for e in events + heard:
        if isinstance(e, sr.Mood | sr.Welcome | sr.SourceState | sr.ServerError):
            checked(json.loads(e.raw))
            assert e.extra == {}, e  # the dataclasses know every field the server sends
    assert isinstance(heard[0], sr.Welcome) and heard[0].role == "listener"
    assert [e.state for e in heard if isinstance(e, sr.SourceState)] == ["connected", "disconnected"]
    assert [e.seq for e in heard if isinstance(e, sr.Mood)] == [e.seq for e in moods]


async def test_send_file_paces_resamples_and_names_the_track(tiny_model_path, tmp_path: Path, sent):
    path = tmp_path / "tagged.flac"
    with sf.SoundFile(path, "w", 22050, 2) as f:
        f.title, f.artist = "A Title", "An Artist"
        f.write(tone(2.0, 22050, channels=2).reshape(-1, 2))
    async with running_server(tiny_model_path) as server:
        events: list[sr.Event] = []
        async with sr.Source(server.url, "file", on_event=events.append, encoding="pcm_f32le") as src:
            t0 = time.monotonic()
            positions: list[int] = []
            frames = await src.send_file(path, speed=4, sample_rate=RATE, channels=1, progress=positions.append)
            took = time.monotonic() - t0
            result = await src.end()
    assert frames == positions[-1] == 2 * 22050
    assert took >= 0.45, took  # paced: 2 s of audio at 4x real time takes at least 0.5 s
    assert sent[0] == {"type": "track", "id": "file:tagged.flac", "title": "A Title", "artist": "An Artist"}
    assert events[0].audio == {"encoding": "pcm_f32le", "sample_rate": RATE, "channels": 1}
    assert result.last is not None and result.last.track["title"] == "A Title"
    assert result.last.stream_time == pytest.approx(2.0, abs=0.1)  # all of it arrived, at the announced rate


async def test_sources_send_mono_at_the_model_rate_by_default(tiny_model_path, tmp_path: Path, sent):
    """A 44.1 kHz stereo file and a 48 kHz stereo array reach the server as the model hears them (mono at the rate
    the welcome announces), with the music's frequency intact; model_format=False sends them as they are."""
    path = tmp_path / "stereo.wav"
    sf.write(path, tone(2.0, 44100, channels=2).reshape(-1, 2), 44100)
    async with running_server(tiny_model_path) as server:
        events: list[sr.Event] = []
        async with sr.Source(server.url, "mono", on_event=events.append) as src:
            frames = await src.send_file(path, speed=0)
            assert src.format == (RATE, 1) and src.model_rate == RATE
            await src.send_array(tone(2.0, 48000, channels=2).reshape(-1, 2), 48000, speed=0)
            result = await src.end()
        welcomes = [e for e in events if isinstance(e, sr.Welcome)]
        assert {json.dumps(w.audio) for w in welcomes} == {json.dumps({"encoding": "pcm_s16le", "sample_rate": RATE, "channels": 1})}
        assert welcomes[0].analysis["sample_rate"] == RATE
        assert frames == 2 * 44100 and result.last is not None
        assert result.last.stream_time == pytest.approx(4.0, abs=0.1)  # both pieces arrived, at the announced rate
        as_is: list[sr.Event] = []
        async with sr.Source(server.url, "as-is", on_event=as_is.append, model_format=False) as src:
            await src.send_file(path, speed=0)
            await src.end()
        assert as_is[0].audio == {"encoding": "pcm_s16le", "sample_rate": 44100, "channels": 2}


def test_resampled_blocks_keep_the_frequency_and_length():
    """The client's conversion (downmix + soxr stream over blocks) is one continuous signal: same length, same tone."""
    rate_in, rate_out = 44100, 16000
    t = np.arange(3 * rate_in) / rate_in
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32)
    blocks = list(sr._converted(sr._chunks(stereo, 0, 4410), rate_in, rate_out, 1))
    out = np.concatenate([b for _, b in blocks])[:, 0]
    assert sum(n for n, _ in blocks) == len(stereo)
    assert abs(len(out) - 3 * rate_out) <= 2
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert np.argmax(spectrum) * rate_out / len(out) == pytest.approx(440, abs=1)


async def test_refusals_and_giving_up(tiny_model_path):
    async with running_server(tiny_model_path) as server:
        with pytest.raises(sr.Refused) as refused:
            async for _ in sr.Listener(server.url, "no spaces"):
                pass
        assert refused.value.status == 400 and refused.value.code == "bad_request"
        checked_http = json.loads(refused.value.body)
        contract.validate("http-error", checked_http, strict=True)
        async with sr.Source(server.url, "busy") as first:
            await first.connect(RATE)
            events: list[sr.Event] = []
            second = sr.Source(server.url, "busy", retries=1, backoff=sr.Backoff(0.05), on_event=events.append)
            with pytest.raises(sr.GaveUp, match="source_taken"):
                await second.connect(RATE)
            assert [type(e) for e in events] == [sr.Reconnecting] and "HTTP 409" in events[0].reason
        port = server.port
    with pytest.raises(sr.GaveUp):  # nobody listens there any more
        async for event in sr.Listener(f"ws://127.0.0.1:{port}", "gone", retries=1, backoff=sr.Backoff(0.05)):
            assert isinstance(event, sr.Reconnecting)


async def test_fatal_error_stops_the_source(tiny_model_path):
    async with running_server(tiny_model_path, server__max_message_bytes=4096) as server:
        async with sr.Source(server.url, "fatal", retries=0) as src:
            await src.connect(RATE)
            with pytest.raises(sr.FatalServerError) as err:
                for _ in range(20):
                    await src.send_frames(b"\x00\x00" * 4096)
                    await asyncio.sleep(0.05)
    assert err.value.error.code == "too_big" and err.value.error.fatal


async def test_keepalive_is_sent_when_idle(tiny_model_path, sent):
    async with running_server(tiny_model_path) as server:
        async with sr.Source(server.url, "idle", keepalive=0.1) as src:
            await src.connect(RATE)
            await asyncio.sleep(0.45)
            await src.send_frames(np.zeros(160, "<i2").tobytes())
            result = await src.end()
    assert sum(m["type"] == "keepalive" for m in sent) >= 2 and sent[-1]["type"] == "end"
    assert result.close_code == 1000

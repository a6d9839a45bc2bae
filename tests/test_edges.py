"""The edges of the server a real client meets (a real server, real websocket clients, raw sockets where a library
would refuse to send what is tested): a source whose audio clock disagrees with the wall clock."""

from __future__ import annotations

import asyncio
import json
import re
import time

import numpy as np

from sendreturn_mood.audio.pcm import encode
from tests.server_support import client, read_until_closed, running_server, tone

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

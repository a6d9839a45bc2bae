"""Prepared tracks across processes: three real server processes and a real `redis-server`. The store is Redis, so a
track prepared through one process is played through another; a process killed mid-track loses the room, the source
reconnects elsewhere and `play`s at its position, and the room continues with `seq` increasing."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from sendreturn_mood.broker.redis_tracks import RedisTrackStore
from sendreturn_mood.config import load_config
from sendreturn_mood.model.contract import MoodModel
from sendreturn_mood.room.offline import analyze_file
from sendreturn_mood.room.prepared import TrackAnalysis
from tests.server_support import TEST_SETTINGS, tone
from tests.test_cluster import LEASE, cluster, is_source_state, join, redis_server, texts_until, url  # noqa: F401

pytestmark = pytest.mark.slow


def put(server, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def is_prepared_mood(m) -> bool:
    return m["type"] == "mood" and m.get("prepared") is True


async def test_a_prepared_track_survives_its_process(cluster, redis_server, tiny_model_path, tmp_path):  # noqa: F811
    a, b, c = cluster
    path = tmp_path / "song.wav"
    sf.write(path, np.concatenate([tone(10.0, 16000, freq=330.0), tone(10.0, 16000, freq=880.0, seed=2)]), 16000)
    result = analyze_file(path, MoodModel(tiny_model_path), load_config(None, TEST_SETTINGS))
    analysis = TrackAnalysis.from_result("c" * 32, result)
    store = RedisTrackStore(redis_server.url, "sendreturn:", 100, 10, 3600)
    await store.start()
    try:
        await store.put("elsewhere", "t", analysis)  # an analysis in the cluster's store ...
    finally:
        await store.close()
    status, body = await asyncio.to_thread(put, c, f"/v1/rooms/crash/tracks/song?analysis={analysis.id}")  # ... used via C
    assert status == 200 and body["updates"] == len(result["timeline"])

    async with join(b, "crash") as lb:
        ws = await connect(url(a, "crash", role="source", sample_rate=16000), proxy=None, compression=None)
        try:
            await asyncio.wait_for(ws.recv(), 10)
            started = time.monotonic()
            await ws.send(json.dumps({"type": "play", "track": "song", "position": 0}))  # played through A
            before = [json.loads(t) for t in await texts_until(lb, lambda m: is_prepared_mood(m) and m["seq"] >= 3)]
            assert any(m["type"] == "timeline" for m in before)
            last_seq = max(m["seq"] for m in before if m["type"] == "mood")
            async with join(c, "crash") as late:  # a listener joining on a third process gets the timeline too
                assert json.loads(await asyncio.wait_for(late.recv(), 10))["type"] == "timeline"
            a.kill()
            await texts_until(lb, is_source_state("disconnected"), timeout=LEASE * 4)
        finally:
            await ws.close()
        # The player kept playing: the source reconnects to C and plays at its position.
        async with join(c, "crash", role="source", sample_rate=16000) as src:
            position = time.monotonic() - started
            await src.send(json.dumps({"type": "play", "track": "song", "position": position}))
            after = [json.loads(t) for t in await texts_until(lb, is_prepared_mood)]
    mood = after[-1]
    assert mood["seq"] > last_seq  # seq continues upward across the processes
    rows = {r["stream_time"]: r for r in result["timeline"]}
    assert mood["stream_time"] in rows and abs(mood["stream_time"] - position) <= 1.0  # where the player was
    assert {k: v for k, v in mood.items() if k in rows[mood["stream_time"]]} == rows[mood["stream_time"]]

"""The prepared-track store in a real `redis-server`: the same bounds as in memory for every process that shares it
(507 naming the limit), replacing an id never counts twice, tracks expire, an analysis put once is served to every
room that refers to it, and two stores (two processes) see the same tracks."""

from __future__ import annotations

import asyncio

import pytest

from sendreturn_mood.broker.redis_tracks import RedisTrackStore
from sendreturn_mood.broker.tracks import StoreFull
from tests.cluster_support import RedisServer
from tests.test_prepared import analysed  # noqa: F401  (the fixture)


@pytest.fixture
def redis_url():
    server = RedisServer().start()
    yield server.url
    server.stop()


def test_the_redis_store_is_bounded_shared_and_expires(redis_url, analysed):  # noqa: F811
    analysis = analysed[0]

    async def run() -> None:
        a = RedisTrackStore(redis_url, "t:", max_tracks=3, max_tracks_per_room=2, ttl_seconds=2)
        b = RedisTrackStore(redis_url, "t:", max_tracks=3, max_tracks_per_room=2, ttl_seconds=2)
        await a.start()
        await b.start()
        try:
            await a.put("r1", "t1", analysis, "One")
            await a.put("r1", "t1", analysis, "One again")  # replaces: not counted twice
            await b.put("r1", "t2", analysis)
            with pytest.raises(StoreFull, match="max_tracks_per_room"):
                await b.put("r1", "t3", analysis)
            await a.put("r2", "t1", analysis)
            with pytest.raises(StoreFull, match=r"maximum of 3 tracks \(prepared.max_tracks\)"):
                await b.put("r3", "t1", analysis)
            got = await b.get("r1", "t1")  # put through one store, read through the other
            assert got is not None and got.title == "One again" and got.analysis.cues == analysis.cues
            assert (await b.analysis(analysis.id)).id == analysis.id
            assert await a.count() == 3 and await b.get("r1", "nope") is None
            assert await b.delete("r1", "t2") and not await b.delete("r1", "t2")
            await b.put("r3", "t1", analysis)  # room again after a delete
            await asyncio.sleep(2.2)  # expired: every track and the analysis with them
            assert await a.count() == 0 and await a.get("r1", "t1") is None
            fresh = RedisTrackStore(redis_url, "t:", 3, 2, 2)  # a process that never parsed it
            await fresh.start()
            assert await fresh.analysis(analysis.id) is None
            await fresh.close()
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())

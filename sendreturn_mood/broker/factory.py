"""The broker and the prepared-track store a config names. Apart from base.py and tracks.py so that an interface
never imports an implementation (the Redis broker and store build on them, and the in-memory ones need no Redis
client)."""

from __future__ import annotations

from typing import Any

from ..config import Settings
from .base import Broker, BrokerError
from .tracks import TrackStore


def make_broker(config: Settings, metrics: Any = None) -> Broker:
    """The broker the config names: `broker.url` null or "memory" -> in process; redis://... -> Redis."""
    url = config.broker.url
    if url is None or config.broker.in_memory:
        return Broker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_broker import RedisBroker  # imported only when used: the redis client is not needed otherwise

        return RedisBroker(config, metrics)
    raise BrokerError(f"broker.url must be null, 'memory' or redis://HOST:PORT[/DB], got {url!r}")


def make_store(config: Settings) -> TrackStore:
    """The store the config asks for: in Redis when a broker URL is configured (any process can serve a room),
    else in this process."""
    p = config.prepared
    args = (p.max_tracks, p.max_tracks_per_room, p.ttl_seconds)
    if config.broker.url is None or config.broker.in_memory:
        return TrackStore(*args)
    from .redis_tracks import RedisTrackStore

    return RedisTrackStore(config.broker.url, config.broker.prefix, *args)

"""The broker a config names. Apart from base.py so that the interface never imports an implementation (the Redis
broker builds on base.py, and the in-memory broker needs no Redis client)."""

from __future__ import annotations

from typing import Any

from ..config import Settings
from .base import Broker, BrokerError


def make_broker(config: Settings, metrics: Any = None) -> Broker:
    """The broker the config names: `broker.url` null or "memory" -> in process; redis://... -> Redis."""
    url = config.broker.url
    if url is None or config.broker.in_memory:
        return Broker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_broker import RedisBroker  # imported only when used: the redis client is not needed otherwise

        return RedisBroker(config, metrics)
    raise BrokerError(f"broker.url must be null, 'memory' or redis://HOST:PORT[/DB], got {url!r}")

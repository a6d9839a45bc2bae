"""A listener that stops answering pings is closed with the code the protocol documents for it, not 1011.

websockets pings every `server.ping_interval_seconds` and, when no pong arrives within `server.ping_timeout_seconds`,
fails the connection with 1011, which protocol v1 defines as a server error: a client (or its log) would blame the
server for its own stalled network or frozen game thread. `KeepaliveConnection` is websockets' server connection with
that one step changed: the close code is `protocol.CLOSE_PING_TIMEOUT` (4408), with the reason saying which setting.
Clients reconnect after it as after any dropped connection.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.server import ServerConnection

from .. import protocol

log = logging.getLogger(__name__)


class KeepaliveConnection(ServerConnection):
    async def keepalive(self) -> None:
        """Ping every ping_interval; no pong within ping_timeout: close with CLOSE_PING_TIMEOUT. (websockets' own
        loop, which closes with 1011; the connection cancels this task when it is lost.)"""
        assert self.ping_interval is not None
        latency = 0.0
        try:
            while True:
                await asyncio.sleep(self.ping_interval - latency)  # pings right after pongs when latency is long
                pong = await self.ping()
                if self.ping_timeout is None:
                    continue
                try:
                    async with asyncio.timeout(self.ping_timeout):
                        latency = await pong
                except TimeoutError:
                    async with self.send_context():
                        self.protocol.fail(
                            protocol.CLOSE_PING_TIMEOUT, f"no pong within {self.ping_timeout:g} s (server.ping_timeout_seconds)"
                        )
                    return
        except Exception:
            log.error("keepalive ping failed", exc_info=True)

"""A TCP proxy on loopback that a fault test controls: it forwards to a target (Redis) until told to stall (keep
every connection open, forward nothing: a network that silently loses packets), drop (close every connection: a
reset), or refuse (close new connections at once: the target is down). asyncio streams, in the caller's loop."""

from __future__ import annotations

import asyncio
import contextlib

CHUNK = 65536


class FaultProxy:
    """`await FaultProxy(target_port).start()`; then `port` is where clients connect instead of the target."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.refusing = False
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0  # accepted since start, for the figures

    async def start(self) -> "FaultProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def stall(self) -> None:
        """Forward nothing (connections stay open; bytes wait in the proxy) until `resume`."""
        self._flowing.clear()

    def resume(self) -> None:
        self.refusing = False
        self._flowing.set()

    def drop(self) -> None:
        """Close every proxied connection now (both sides): clients see their connection reset."""
        for client, upstream in list(self._pairs):
            for w in (client, upstream):
                with contextlib.suppress(Exception):
                    w.transport.abort()
        self._pairs.clear()

    def refuse(self) -> None:
        """Drop every connection and close new ones at once until `resume` (the target looks down)."""
        self.refusing = True
        self.drop()

    async def close(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer)), asyncio.ensure_future(self._pump(up_reader, writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pumps:
                p.cancel()
            self._tasks.difference_update(pumps)
            self._pairs.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()

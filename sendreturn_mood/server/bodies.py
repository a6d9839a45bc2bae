"""HTTP requests with a body (POST, PUT, PATCH: uploads) on the websocket port, beside websockets' GETs.

websockets answers only body-less GETs (its request parser refuses any Content-Length but 0, and any
Transfer-Encoding). One port and one process stay one port and one process: every connection's first bytes are
looked at (`FrontDoor`, the protocol websockets' `serve(create_connection=...)` gets). A request line starting with a
body method is served here, with h11 (the sans-I/O HTTP/1.1 library); anything else goes to websockets untouched
(`websockets.asyncio.server.ServerConnection`, as if this module did not exist). A body request is one request per
connection (`Connection: close`), routed through the server's own routing table (`routing.Router`): handlers get a
websockets `Request` whose `body` reads the body on demand, so a handler refuses (401, 415, 429) before a byte of a
large body is read.

Bounded: the request head must arrive within HEAD_TIMEOUT_SECONDS and fit MAX_HEAD_BYTES (else 408 / 431); the body
is read only when a handler asks, up to the handler's limit (`BodyReader.read`: 413 from Content-Length before
reading, or as soon as a chunked body passes it), within its time limit (408), with TCP back-pressure in between
(reading pauses after every chunk until the handler takes it). An early answer (a refusal before the body was
read) is followed by a bounded lingering close, so the client reads the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import h11
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .. import protocol
from ..protocol import Refusal
from .requestline import connection_factory
from .routing import error_response

log = logging.getLogger(__name__)

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
METHOD_SNIFF_BYTES = 8  # "PATCH " is the longest body method plus its space
HEAD_TIMEOUT_SECONDS = 10.0  # the request line and headers must arrive within this (websockets' own open_timeout)
MAX_HEAD_BYTES = 16 * 1024  # request line + headers; beyond: 431
LINGER_SECONDS = 2.0  # after an early answer, unread body is drained for at most this long before closing
LINGER_BYTES = 8 * 1024 * 1024  # ... and at most this much

BodyHandler = Callable[["BodyExchange", Request], Awaitable[Response]]


class BodyReader:
    """A request's body, read when (and if) the handler asks: `await request.body.read(limit, timeout)`."""

    def __init__(self, exchange: "BodyExchange") -> None:
        self._exchange = exchange
        self.consumed = False

    @property
    def declared_length(self) -> int | None:
        """Content-Length, or None for a chunked body."""
        return self._exchange.content_length

    @property
    def present(self) -> bool:
        """Whether the request has a body at all (a Content-Length above 0, or a chunked one)."""
        return self._exchange.chunked or (self._exchange.content_length or 0) > 0

    async def read(self, limit: int, timeout: float, what: str = "body") -> bytes:
        """The whole body. Refusal bad_request (400) when it is empty; too_big (413) when it is longer than
        `limit` bytes, said by Content-Length before anything is read, else as soon as the chunks pass it;
        request_timeout (408) when it does not arrive within `timeout` seconds; bad_request for a malformed one."""
        declared = self.declared_length
        if declared == 0:
            raise Refusal(protocol.BAD_REQUEST, f"the {what} is empty")
        if declared is not None and declared > limit:
            raise Refusal(protocol.TOO_BIG, f"the {what} is {declared} bytes; the limit is {limit} bytes")
        self.consumed = True
        try:
            async with asyncio.timeout(timeout):
                data = await self._exchange.read_body(limit, what)
        except TimeoutError:
            raise Refusal(protocol.REQUEST_TIMEOUT, f"the {what} did not arrive within {timeout:g} s") from None
        except h11.RemoteProtocolError as e:
            raise Refusal(protocol.BAD_REQUEST, f"malformed {what}: {e}") from None
        if not data:
            raise Refusal(protocol.BAD_REQUEST, f"the {what} is empty")
        return data


@dataclass(eq=False)
class BodyRequest(Request):
    """websockets' Request (path, headers, method) plus the body reader."""

    body: Any = None


class BodyExchange:
    """One request with a body on one connection, served with h11: read the head, route it, send the answer,
    close. Exposes `remote_address` like a websockets connection (routing.address reads it)."""

    def __init__(self, transport: asyncio.Transport, handler: BodyHandler, tasks: set[asyncio.Task[None]]) -> None:
        self.transport = transport
        self.remote_address = transport.get_extra_info("peername")
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._handler = handler
        self._wake = asyncio.Event()
        self._closed = False
        self.content_length: int | None = None
        self.chunked = False
        self.task = asyncio.get_running_loop().create_task(self._serve())
        tasks.add(self.task)
        self.task.add_done_callback(tasks.discard)

    # ---------------------------------------------------------------------------------------- from the transport

    def data_received(self, data: bytes) -> None:
        try:
            self._h11.receive_data(data)
        except RuntimeError:  # bytes after the client's own end of stream: nothing will read them
            return
        self.transport.pause_reading()  # back-pressure: the next chunk when this one has been taken
        self._wake.set()

    def eof_received(self) -> bool:
        self._h11.receive_data(b"")
        self._wake.set()
        return True  # keep the write side open: the answer may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake.set()

    # ---------------------------------------------------------------------------------------- the exchange

    async def _next_event(self) -> Any:
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._closed:
                raise ConnectionResetError("the client closed the connection")
            self._wake.clear()
            self.transport.resume_reading()
            await self._wake.wait()

    async def read_body(self, limit: int, what: str) -> bytes:
        if self._h11.client_is_waiting_for_100_continue:
            self._write(self._h11.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))
        chunks: list[bytes] = []
        total = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                total += len(event.data)
                if total > limit:
                    raise Refusal(protocol.TOO_BIG, f"the {what} is more than {limit} bytes (the limit)")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)

    async def _serve(self) -> None:
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT_SECONDS):
                    head = await self._next_event()
            except TimeoutError:
                message = f"no complete request head within {HEAD_TIMEOUT_SECONDS:g} s"
                answer = error_response(408, protocol.REQUEST_TIMEOUT, message)
            except h11.RemoteProtocolError as e:  # h11 still lets the server answer a malformed request
                status = e.error_status_hint if e.error_status_hint in (400, 413, 431) else 400
                answer = error_response(status, protocol.BAD_REQUEST, f"malformed request: {e}")
            else:
                answer = await self._answer(head)
            await self._finish(answer)
        except (ConnectionError, h11.RemoteProtocolError):  # the client went away half-way: nobody to answer
            pass
        except Exception:
            log.exception("a request with a body failed")
        finally:
            self.transport.close()

    async def _answer(self, head: Any) -> Response:
        if not isinstance(head, h11.Request):  # h11 raised for a malformed head before this; a ConnectionClosed
            raise ConnectionResetError("no request")
        try:
            self.content_length = _content_length(head.headers)
            self.chunked = any(name == b"transfer-encoding" for name, _ in head.headers)
            headers = Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers.raw_items()])
            request = BodyRequest(head.target.decode("ascii"), headers, head.method.decode("ascii"))
            request.body = BodyReader(self)
            return await self._handler(self, request)
        except Refusal as r:
            return error_response(r.status, r.code, r.message, r.headers)

    async def _finish(self, answer: Response) -> None:
        """Send the answer; if the body was not read to its end, drain (bounded) what the client still sends, so
        it reads the answer rather than a reset."""
        try:
            headers = [(k, v) for k, v in answer.headers.raw_items() if k.lower() != "connection"]
            head = h11.Response(
                status_code=answer.status_code, reason=answer.reason_phrase, headers=[*headers, ("Connection", "close")]
            )
            self._write(self._h11.send(head))
            self._write(self._h11.send(h11.Data(data=answer.body or b"")))
            self._write(self._h11.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # the client's side broke the exchange (h11 will not answer): just close
            return
        if self._h11.their_state is h11.DONE or self._closed:
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        drained = 0
        deadline = asyncio.get_running_loop().time() + LINGER_SECONDS
        try:
            async with asyncio.timeout_at(deadline):
                while drained < LINGER_BYTES:
                    event = await self._next_event()
                    if isinstance(event, h11.Data):
                        drained += len(event.data)
                    elif event is h11.PAUSED or isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        return
        except (TimeoutError, ConnectionError, h11.RemoteProtocolError):
            return

    def _write(self, data: bytes | None) -> None:
        if data and not self._closed:
            self.transport.write(data)


def _content_length(headers: Any) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return None


class FrontDoor(asyncio.Protocol):
    """The protocol of every connection on the port: waits for the first bytes, then either hands the connection
    (and the bytes) to its websockets `ServerConnection`, or serves a body request (`BodyExchange`)."""

    def __init__(self, inner: ServerConnection, handler: BodyHandler, tasks: set[asyncio.Task[None]]) -> None:
        self.inner = inner
        self.protocol = inner.protocol  # websockets' select_subprotocol closure looks for it here
        self._handler = handler
        self._tasks = tasks
        self._buffer = bytearray()
        self._exchange: BodyExchange | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_SECONDS, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._exchange is not None:
            self._exchange.data_received(data)
            return
        self._buffer += data
        method, space, _ = bytes(self._buffer[:METHOD_SNIFF_BYTES]).partition(b" ")
        if not space and len(self._buffer) < METHOD_SNIFF_BYTES:
            return  # not enough to tell yet
        if self._timer is not None:
            self._timer.cancel()
        if space and method.decode("latin-1") in BODY_METHODS:
            self._exchange = BodyExchange(self.transport, self._handler, self._tasks)
            self.data_received(bytes(self._buffer))
        else:  # websockets' own connection from here on, as if it had been there from the start
            self.inner.connection_made(self.transport)
            self.transport.set_protocol(self.inner)
            self.inner.data_received(bytes(self._buffer))
        self._buffer.clear()

    def eof_received(self) -> bool | None:
        if self._exchange is not None:
            return self._exchange.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._exchange is not None:
            self._exchange.connection_lost(exc)

    def pause_writing(self) -> None:  # body answers are small; websockets' connection has its own once handed over
        pass

    def resume_writing(self) -> None:
        pass


def front_door(
    handler: BodyHandler, tasks: set[asyncio.Task[None]], make: Callable[..., ServerConnection] = ServerConnection
) -> Callable[..., Any]:
    """`create_connection` for websockets' `serve()`: each connection gets a FrontDoor around the
    connection websockets would have used (`make`, with requestline's strict parser: malformed GETs get a 400). `tasks` collects the body exchanges (the server cancels them on
    close)."""

    websocket = connection_factory(make)

    def create(*args: Any, **kwargs: Any) -> FrontDoor:
        return FrontDoor(websocket(*args, **kwargs), handler, tasks)

    return create

"""Malformed HTTP requests get an answer: a JSON 400 (or 414/431), not a silently closed connection.

websockets parses the request head itself and, for anything it cannot parse (a raw space or raw UTF-8 byte in the
request target, a protocol it does not know, a GET with a body), closes the connection without a word. A client then
sees a reset and cannot tell a bad request from a dead server. `strict_requests` gives a connection's sans-I/O
`ServerProtocol` a parser that answers those with protocol v1's error body, the status saying what was wrong, and
closes. Well-formed requests are parsed exactly as websockets does (its own `Request.parse`).

Used by `connection_factory` (serve(create_connection=...)); a factory of its own (e.g. one that serves bodies
first) applies `strict_requests` to the protocol it hands to websockets' ServerConnection.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import HeaderLineTooLong, InvalidMessage, RequestLineTooLong, TooManyHeaders
from websockets.http11 import Request, Response
from websockets.protocol import CONNECTING, Protocol
from websockets.server import ServerProtocol

from .. import protocol
from .routing import error_response


def malformed_answer(exc: BaseException) -> Response | None:
    """The answer to a request head websockets could not parse (None: the client went away, nobody to answer)."""
    if isinstance(exc, EOFError):
        return None
    if isinstance(exc, RequestLineTooLong):
        return error_response(414, protocol.BAD_REQUEST, "the request line is too long")
    if isinstance(exc, (HeaderLineTooLong, TooManyHeaders)):
        return error_response(431, protocol.BAD_REQUEST, "the request headers are too large")
    if isinstance(exc, UnicodeDecodeError):
        message = "the request line must be ASCII: percent-encode anything else in the target (UTF-8, then %XX)"
    elif isinstance(exc, NotImplementedError):
        message = "Transfer-Encoding is not supported here"
    elif "request body" in str(exc):
        message = "this request may not have a body"
    else:
        message = "malformed request line: METHOD TARGET HTTP/1.1, the target without raw spaces (percent-encode them)"
    return error_response(400, protocol.BAD_REQUEST, message)


class StrictServerProtocol(ServerProtocol):
    """websockets' server protocol whose request parser answers a malformed head instead of dropping it."""

    def parse(self) -> Generator[None]:
        if self.state is CONNECTING:
            try:
                request = yield from Request.parse(self.reader.read_line)
            except Exception as exc:
                answer = malformed_answer(exc)
                self.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
                self.handshake_exc.__cause__ = exc
                if answer is None:
                    self.send_eof()
                    self.parser = self.discard()
                    next(self.parser)
                else:
                    self.send_response(answer)  # then EOF; this parser is replaced by a discarding one
                yield
                return
            self.events.append(request)
        yield from Protocol.parse(self)


def strict_requests(sans_io: ServerProtocol) -> ServerProtocol:
    """Give a fresh connection's protocol the strict parser (before any byte arrived)."""
    sans_io.__class__ = StrictServerProtocol
    sans_io.parser = sans_io.parse()
    next(sans_io.parser)
    return sans_io


def connection_factory(make: Callable[..., Any] = ServerConnection) -> Callable[..., Any]:
    """`create_connection` for websockets' `serve()`: `make(protocol, ...)` with the strict parser installed."""

    def create(sans_io: ServerProtocol, *args: Any, **kwargs: Any) -> Any:
        return make(strict_requests(sans_io), *args, **kwargs)

    return create

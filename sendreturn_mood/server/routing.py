"""Plain HTTP on the websocket port: a small routing table and the response helpers every route uses.

A route is a regular expression over the whole path, the methods it answers and an async handler
`(connection, request, match) -> Response`; the first route whose pattern matches and which answers the method wins.
A path some route matches but not with this method gets 405 with `Allow` (TRACE, OPTIONS, ... included); a path no
route matches gets 404. Every error
body is protocol v1's `{"error": {"code", "message"}}`; handlers signal refusals by raising
`protocol.Refusal`, which the server turns into that body with the refusal's status.
"""

from __future__ import annotations

import email.utils
import http
import json
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers, MultipleValuesError
from websockets.http11 import Request, Response

from .. import protocol
from ..protocol import Refusal

Handler = Callable[[ServerConnection, Request, "re.Match[str]"], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """One entry of a routing table: `pattern` must match the whole path (named groups reach the handler)."""

    pattern: re.Pattern[str]
    handler: Handler
    methods: tuple[str, ...] = ("GET",)


def route(pattern: str, handler: Handler, methods: Iterable[str] = ("GET",)) -> Route:
    return Route(re.compile(pattern), handler, tuple(methods))


class Router:
    """The first route matching the path and answering the method handles the request; else 404."""

    def __init__(self, routes: Iterable[Route], not_found: str = "nothing at {path}") -> None:
        self.routes = tuple(routes)
        self.not_found = not_found

    async def dispatch(self, connection: ServerConnection, request: Request, method: str = "GET") -> Response:
        path = urlsplit(request.path).path
        for r in self.routes:
            match = r.pattern.fullmatch(path)
            if match is not None and method in r.methods:
                return await r.handler(connection, request, match)
        allowed = self.allowed(path)
        if allowed:
            message = f"{protocol.shown(method, 20)} is not allowed here (allowed: {', '.join(allowed)})"
            return error_response(405, protocol.METHOD_NOT_ALLOWED, message, (("Allow", ", ".join(allowed)),))
        return error_response(404, protocol.NOT_FOUND, self.not_found.format(path=repr(path[:100])))

    def allowed(self, path: str) -> list[str]:
        """The methods some route answers for `path` (empty: no route knows it)."""
        out: list[str] = []
        for r in self.routes:
            if r.pattern.fullmatch(path):
                out.extend(m for m in r.methods if m not in out)
        return out


def header(request: Request, name: str, default: str | None = "") -> Any:
    """A header that must appear at most once: a duplicated Authorization, Upgrade, Origin or Host is a 400, not
    a guess (which of two Authorization values would count?) and not a 500 (MultipleValuesError)."""
    try:
        return request.headers.get(name, default)
    except MultipleValuesError:
        raise Refusal(protocol.BAD_REQUEST, f"the {name} header may appear only once") from None


def address(connection: ServerConnection) -> str:
    """The client's address (the TCP peer: behind a proxy, the proxy's)."""
    try:
        peer = connection.remote_address
        return str(peer[0]) if peer else "?"
    except Exception:  # a transport already gone
        return "?"


def response(
    status: int, body: bytes, content_type: str, cache: bool = False, extra: Iterable[tuple[str, str]] = ()
) -> Response:
    st = http.HTTPStatus(status)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            *extra,
        ]
    )
    if not cache:
        headers["Cache-Control"] = "no-store"
    return Response(st.value, st.phrase, headers, body)


def json_response(status: int, obj: Any, extra: Iterable[tuple[str, str]] = ()) -> Response:
    return response(status, json.dumps(obj).encode(), "application/json", extra=extra)


def error_response(status: int, code: str, message: str, extra: Iterable[tuple[str, str]] = ()) -> Response:
    return json_response(status, {"error": {"code": code, "message": message}}, extra)

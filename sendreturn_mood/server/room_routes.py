"""The HTTP routes under /v1/rooms/{room}: a room's state (GET), and its prepared tracks (GET, PUT, DELETE
/v1/rooms/{room}/tracks/{id}). Rate-limited per address; when tokens are required, a room's state needs a token for
that room and its tracks one for the role the method needs (PUT and DELETE: source), so room names, tracks and titles
cannot be probed.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from .. import protocol
from ..audio.files import SNIFF_BYTES, sniff_format
from ..broker.base import Broker
from ..broker.tracks import StoreFull
from ..config import AnalyzeSettings
from ..protocol import Refusal
from .auth import Authenticator
from ..room.prepared import PreparedTrack
from .prepared import PrepareError, TrackPreparer
from .routing import address, error_response, header, json_response, response
from .shared_limits import SharedRateLimiter

ROOM_STATE_PATH = re.escape(protocol.ROOM_PATH_PREFIX) + r".*"
TRACK_PATH = re.escape(protocol.ROOM_PATH_PREFIX) + r"(?P<room>[^/]+)/tracks/(?P<track>[^/]+)"


class RoomRoutes:
    """The handlers of ROOM_STATE_PATH (`room_state`) and TRACK_PATH (`track`) for the server's routing table."""

    def __init__(
        self,
        auth: Authenticator,
        broker: Broker,
        tracks: TrackPreparer,
        http_requests: SharedRateLimiter,
        presets: tuple[str, ...],
        uploads: AnalyzeSettings,
    ) -> None:
        self.auth = auth
        self.broker = broker
        self.tracks = tracks
        self.http_requests = http_requests
        self.presets = presets
        self.uploads = uploads  # a PUT's body is read with POST /v1/analyze's limits

    async def room_state(self, connection: ServerConnection, request: Request, match: re.Match[str]) -> Response:
        """GET /v1/rooms/{room}: rate-limited per address, and when auth is on it needs a token for that room (any
        role), so room names, tracks and titles cannot be probed. Refusal for everything refused."""
        if not await self.http_requests.allow(address(connection)):
            raise Refusal(protocol.RATE_LIMITED, "too many requests from this address (server.http_requests_per_second)")
        name = protocol.room_from_path(request.path) or ""
        if self.auth.enabled:
            query_token = protocol.parse_query(urlsplit(request.path).query).get("token")
            grant = self.auth.verify(protocol.request_token(query_token, header(request, "Authorization", None)))
            if not grant.covers(name):
                raise Refusal(protocol.UNAUTHORIZED, f"this access token is not valid for room {protocol.shown(name)}")
        info = await self.broker.snapshot(name)
        if info is None:
            raise Refusal(protocol.NOT_FOUND, f"no room {protocol.shown(name)} (nobody is connected to it)")
        return json_response(200, info)

    async def track(self, connection: ServerConnection, request: Request, match: re.Match[str]) -> Response:
        """A room's prepared track: PUT (the audio as the body, or `?analysis=ID` of an analysis already stored, no
        body) needs a source token for the room when tokens are required; GET describes it, DELETE removes it."""
        method = getattr(request, "method", "GET")
        if not await self.http_requests.allow(address(connection)):
            raise Refusal(protocol.RATE_LIMITED, "too many requests from this address (server.http_requests_per_second)")
        room = protocol.room_from_path(f"{protocol.ROOM_PATH_PREFIX}{match['room']}") or ""
        track = protocol.track_id_from_path(match["track"])
        query = protocol.parse_query(urlsplit(request.path).query, protocol.TRACK_QUERY_KEYS)
        self._check_track_grant(request, query, room, "listener" if method == "GET" else "source")
        if method == "GET":
            found = await self.tracks.get(room, track)
            if found is None:
                raise Refusal(protocol.NOT_FOUND, f"no prepared track {protocol.shown(track)} in room {protocol.shown(room)}")
            return json_response(200, found.describe())
        if method == "DELETE":
            if not await self.tracks.store.delete(room, track):
                raise Refusal(protocol.NOT_FOUND, f"no prepared track {protocol.shown(track)} in room {protocol.shown(room)}")
            return response(204, b"", "application/json")
        title, artist = query.get("title"), query.get("artist")
        reader = getattr(request, "body", None)
        try:
            if reader is not None and reader.present:  # a PUT with a body (bodies.py): read only now, after the checks
                prepared = await self._prepare_upload(reader, room, track, query, title, artist)
            elif "analysis" in query:
                found = await self.tracks.refer(room, track, query["analysis"], title, artist)
                if found is None:
                    raise Refusal(protocol.NOT_FOUND, f"no stored analysis {protocol.shown(query['analysis'])} (it expired, or was never made)")
                prepared = found
            else:
                raise Refusal(protocol.BAD_REQUEST, "PUT a track with its audio as the body, or ?analysis=ID of a stored analysis")
        except StoreFull as e:
            return error_response(507, e.code, e.message)
        except PrepareError as e:
            return error_response(e.status, e.code, e.message)
        return json_response(200, prepared.describe())

    async def _prepare_upload(
        self, reader: Any, room: str, track: str, query: dict[str, str], title: str | None, artist: str | None,
    ) -> PreparedTrack:
        """An uploaded track, with POST /v1/analyze's limits: at most analyze.max_concurrent at once (429 with
        Retry-After beyond: each holds its body in memory), the body bounded in bytes and time, audio recognised
        by its content (415)."""
        uploads = self.uploads
        preset = query.get("preset")
        if preset is not None and preset not in self.presets:
            raise Refusal(protocol.BAD_REQUEST, f"unknown preset {protocol.shown(preset)}; known: {', '.join(self.presets)}")
        if self.tracks.in_flight >= uploads.max_concurrent:
            raise Refusal(
                protocol.RATE_LIMITED,
                f"{self.tracks.in_flight} tracks are being prepared, the most this server takes at once "
                "(analyze.max_concurrent); retry after 2 s",
                (("Retry-After", "2"),),
            )
        self.tracks.in_flight += 1
        try:
            body = await reader.read(uploads.max_bytes, uploads.upload_timeout_seconds, "audio file")
            if sniff_format(body[:SNIFF_BYTES]) is None:  # recognised by its content, as POST /v1/analyze does
                raise Refusal(
                    protocol.UNSUPPORTED_MEDIA,
                    f"the body is not audio this server reads: wav, mp3, flac and ogg are recognised by their content "
                    f"(it starts with {body[:SNIFF_BYTES]!r})",
                )
            return await self.tracks.prepare(room, track, body, title, artist, preset)  # off the loop
        finally:
            self.tracks.in_flight -= 1

    def _check_track_grant(self, request: Request, query: dict[str, str], room: str, role: str) -> None:
        if not self.auth.enabled:
            return
        grant = self.auth.verify(protocol.request_token(query.get("token"), header(request, "Authorization", None)))
        if not grant.allows(room, role) and not (role == "listener" and grant.covers(room)):
            raise Refusal(protocol.UNAUTHORIZED, f"this access token does not let a {role} use room {protocol.shown(room)}'s tracks")

"""Wire protocol v1 as pure functions: handshake parsing and refusals, client message parsing, server messages.

Everything here is free of I/O so the protocol can be tested (and reused by a future broker-based fan-out)
without a network. The server (`server.py`) only moves bytes and calls these functions; clients and independent
tests are written against `PROTOCOL.md`, so any change here is a protocol change.

Fatal vs non-fatal errors (what the server does with each error code, documented in the project README):
  bad_message, bad_audio, not_allowed, rate_limited, server_error (inference)  -> non-fatal, the frame is dropped
  too_big                                                                      -> fatal, close 1009
  server_error (an unexpected failure of the connection handler)               -> fatal, close 1011
  unauthorized                                                                 -> only at the handshake (HTTP 401)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from . import PROTOCOL_VERSION
from .pcm import ENCODINGS, MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

ROOM_PATH_PREFIX = "/v1/rooms/"
ROOM_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ROLES = ("source", "listener")
DEFAULT_ROLE = "listener"
DEFAULT_ENCODING = "pcm_s16le"
DEFAULT_SAMPLE_RATE = 48000
DEFAULT_CHANNELS = 1
QUERY_KEYS = ("role", "encoding", "sample_rate", "channels", "preset", "token", "track_detection")
SWITCH_VALUES = {"on": True, "off": False}  # the values of the `track_detection` query parameter
MAX_TEXT_FIELD = 512  # longest track id/title/artist or preset name accepted in a client message

# Error codes (in `error` messages and in refusal bodies).
BAD_REQUEST = "bad_request"
UNAUTHORIZED = "unauthorized"
SOURCE_TAKEN = "source_taken"
SERVER_FULL = "server_full"
BAD_MESSAGE = "bad_message"
BAD_AUDIO = "bad_audio"
RATE_LIMITED = "rate_limited"
NOT_ALLOWED = "not_allowed"
TOO_BIG = "too_big"
SERVER_ERROR = "server_error"
ERROR_CODES = (BAD_MESSAGE, BAD_AUDIO, RATE_LIMITED, NOT_ALLOWED, TOO_BIG, UNAUTHORIZED, SERVER_ERROR)
REFUSAL_STATUS = {BAD_REQUEST: 400, UNAUTHORIZED: 401, SOURCE_TAKEN: 409, SERVER_FULL: 503}

# Close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011

CLIENT_MESSAGE_TYPES = ("track", "preset", "end", "keepalive", "track_detection")
SOURCE_ONLY_MESSAGES = ("track", "preset", "end", "track_detection")


class ProtocolError(Exception):
    """Something the protocol answers with an error `code` (one of the codes above) and a human `message`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Refusal(ProtocolError):
    """A handshake the server refuses: HTTP `status` with body {"error": {"code", "message"}}."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = REFUSAL_STATUS[code]

    def body(self) -> bytes:
        return refusal_body(self.code, self.message)


class MessageError(ProtocolError):
    """A client message the server rejects (non-fatal `error` message with `code`)."""


@dataclass(frozen=True)
class ConnectParams:
    """A validated handshake: who connects to which room with which audio format."""

    room: str
    role: str = DEFAULT_ROLE
    encoding: str = DEFAULT_ENCODING
    sample_rate: int = DEFAULT_SAMPLE_RATE
    channels: int = DEFAULT_CHANNELS
    preset: str | None = None
    token: str | None = None
    track_detection: bool | None = None  # source only: switch the room's track-change detection (None: the default)

    @property
    def is_source(self) -> bool:
        return self.role == "source"


# ---------------------------------------------------------------------------------------------------- handshake


def room_from_path(path: str) -> str | None:
    """The room name if `path` (with or without a query) is /v1/rooms/{room}; None for other paths.

    Raises Refusal(bad_request) for a /v1/rooms/ path whose room name breaks the rules, so a client gets a clear
    message rather than a 404."""
    target = urlsplit(path).path
    if not target.startswith(ROOM_PATH_PREFIX):
        return None
    room = unquote(target[len(ROOM_PATH_PREFIX) :])
    if not ROOM_NAME_RE.match(room):
        raise Refusal(BAD_REQUEST, f"room name {room[:80]!r} must be 1 to 64 characters of A-Z a-z 0-9 _ . -")
    return room


def _int_param(query: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Refusal(BAD_REQUEST, f"{key} must be an integer, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise Refusal(BAD_REQUEST, f"{key} must be in {lo}..{hi}, got {value}")
    return value


def parse_connect(path: str, authorization: str | None = None, presets: Iterable[str] | None = None) -> ConnectParams:
    """Request target (+ Authorization header) -> ConnectParams, or Refusal(bad_request).

    Unknown query parameters are ignored (later protocol versions may add some); repeated ones are refused because
    their meaning would be ambiguous. `presets`, when given, is the set of known preset names."""
    room = room_from_path(path)
    if room is None:
        raise Refusal(BAD_REQUEST, f"path must be {ROOM_PATH_PREFIX}{{room}}, got {urlsplit(path).path[:80]!r}")
    multi = parse_qs(urlsplit(path).query, keep_blank_values=True)
    for key in QUERY_KEYS:
        if len(multi.get(key, [])) > 1:
            raise Refusal(BAD_REQUEST, f"query parameter {key} given more than once")
    query = {k: v[0] for k, v in multi.items()}
    role = query.get("role", DEFAULT_ROLE)
    if role not in ROLES:
        raise Refusal(BAD_REQUEST, f"role must be one of {', '.join(ROLES)}, got {role[:40]!r}")
    encoding = query.get("encoding", DEFAULT_ENCODING)
    if encoding not in ENCODINGS:
        raise Refusal(BAD_REQUEST, f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding[:40]!r}")
    sample_rate = _int_param(query, "sample_rate", DEFAULT_SAMPLE_RATE, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    channels = _int_param(query, "channels", DEFAULT_CHANNELS, 1, MAX_CHANNELS)
    preset = query.get("preset")
    if preset is not None and presets is not None and preset not in set(presets):
        raise Refusal(BAD_REQUEST, f"unknown preset {preset[:40]!r}; known: {', '.join(sorted(presets))}")
    detection = query.get("track_detection")
    if detection is not None and detection not in SWITCH_VALUES:
        raise Refusal(BAD_REQUEST, f"track_detection must be on or off, got {detection[:40]!r}")
    token = query.get("token")
    if token is None and authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    return ConnectParams(
        room, role, encoding, sample_rate, channels, preset, token, None if detection is None else SWITCH_VALUES[detection]
    )


def check_token(params: ConnectParams, tokens: Iterable[str]) -> None:
    """Raise Refusal(unauthorized) when the server requires a token and the client has no valid one."""
    allowed = set(tokens)
    if not allowed:
        return
    if params.token is None:
        raise Refusal(UNAUTHORIZED, "this server needs an access token (?token= or Authorization: Bearer)")
    if params.token not in allowed:
        raise Refusal(UNAUTHORIZED, "invalid access token")


def refusal_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


# ---------------------------------------------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class Track:
    id: str
    title: str | None = None
    artist: str | None = None

    def to_dict(self) -> dict[str, str]:
        """The `track` field of later mood messages."""
        d = {"id": self.id}
        if self.title is not None:
            d["title"] = self.title
        if self.artist is not None:
            d["artist"] = self.artist
        return d


@dataclass(frozen=True)
class PresetChange:
    name: str


@dataclass(frozen=True)
class End:
    pass


@dataclass(frozen=True)
class TrackDetection:
    """Switch the room's track-change detection on or off (an extension of v1: docs/PROTOCOL.md)."""

    enabled: bool


@dataclass(frozen=True)
class Keepalive:
    pass


ClientMessage = Track | PresetChange | End | Keepalive | TrackDetection


def _text_field(msg: dict[str, Any], key: str, required: bool) -> str | None:
    value = msg.get(key)
    if value is None:
        if required:
            raise MessageError(BAD_MESSAGE, f"'{msg['type']}' needs a string field '{key}'")
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_FIELD:
        raise MessageError(BAD_MESSAGE, f"'{key}' must be a non-empty string of at most {MAX_TEXT_FIELD} characters")
    return value


def parse_client_message(text: str) -> ClientMessage:
    """A client's text frame -> a message object, or MessageError(bad_message). Unknown extra fields are ignored
    (forward compatibility); missing or mistyped known fields are refused."""
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise MessageError(BAD_MESSAGE, "text messages must be JSON objects") from None
    if not isinstance(msg, dict):
        raise MessageError(BAD_MESSAGE, "text messages must be JSON objects")
    kind = msg.get("type")
    if kind not in CLIENT_MESSAGE_TYPES:
        shown = kind[:40] if isinstance(kind, str) else kind
        raise MessageError(BAD_MESSAGE, f"unknown message type {shown!r}; known: {', '.join(CLIENT_MESSAGE_TYPES)}")
    if kind == "track":
        return Track(_text_field(msg, "id", True), _text_field(msg, "title", False), _text_field(msg, "artist", False))  # type: ignore[arg-type]
    if kind == "preset":
        return PresetChange(_text_field(msg, "name", True))  # type: ignore[arg-type]
    if kind == "end":
        return End()
    if kind == "track_detection":
        enabled = msg.get("enabled")
        if not isinstance(enabled, bool):
            raise MessageError(BAD_MESSAGE, "'track_detection' needs a boolean field 'enabled'")
        return TrackDetection(enabled)
    return Keepalive()


# ---------------------------------------------------------------------------------------------------- server -> client


def welcome(params: ConnectParams, model: Mapping[str, Any], window_seconds: float, hop_seconds: float, preset: str) -> dict[str, Any]:
    """The first message on every connection. `model` = {name, version, moods, genres}."""
    msg: dict[str, Any] = {"type": "welcome", "protocol": PROTOCOL_VERSION, "room": params.room, "role": params.role}
    if params.is_source:
        msg["audio"] = {"encoding": params.encoding, "sample_rate": params.sample_rate, "channels": params.channels}
    msg["model"] = dict(model)
    msg["analysis"] = {"window_seconds": round(window_seconds, 4), "hop_seconds": round(hop_seconds, 4)}
    msg["preset"] = preset
    return msg


def mood(room: str, seq: int, analysis: Mapping[str, Any], track: Mapping[str, Any] | None, latency_ms: float) -> dict[str, Any]:
    """A `mood` update: the tracker's analysis fields plus the room's envelope, in the protocol's field order."""
    msg: dict[str, Any] = {"type": "mood", "room": room, "seq": seq, "stream_time": analysis["stream_time"]}
    if track is not None:
        msg["track"] = dict(track)
    for key, value in analysis.items():
        if key != "stream_time":
            msg[key] = value
    msg["latency_ms"] = round(latency_ms, 3)
    return msg


def track_change(room: str, change: Mapping[str, Any]) -> dict[str, Any]:
    """A track change heard in the audio (an extension of v1): `change` = TrackChange.to_dict()."""
    return {"type": "track_change", "room": room, **change}


def source_state(connected: bool) -> dict[str, Any]:
    return {"type": "source", "state": "connected" if connected else "disconnected"}


def error(code: str, message: str, fatal: bool = False) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, "fatal": fatal}


def encode(msg: Mapping[str, Any]) -> str:
    """Server messages are compact JSON text frames."""
    return json.dumps(msg, separators=(",", ":"), allow_nan=False)

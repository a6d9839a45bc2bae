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
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from . import PROTOCOL_VERSION
from .errors import SendReturnError

ROOM_PATH_PREFIX = "/v1/rooms/"
ROOM_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # always fullmatch: `$` would accept a trailing newline
# The raw path segment: the room's own characters, or percent-escapes (RFC 3986 says %41 and A are the same URI,
# so escapes of the allowed characters are decoded; any other escape, %0A or %2F, leaves a character the rules refuse)
ROOM_SEGMENT_RE = re.compile(r"(?:[A-Za-z0-9_.\-]|%[0-9A-Fa-f]{2}){1,192}")
REQUEST_TARGET_RE = re.compile(r"[\x21-\x7e]{1,4096}")  # visible ASCII only: urlsplit silently drops TAB/CR/LF
INT_PARAM_RE = re.compile(r"[0-9]{1,9}")  # int() would also take " 48000\n", "4_8000", "+48000" and non-ASCII digits
TOKEN_RE = re.compile(r"[\x21-\x7e]{1,4096}")  # a token is visible ASCII (JWTs are base64url and dots)
MAX_QUERY_FIELDS = 32  # parameters in one handshake query; more is refused (parsing stays bounded)
ROLES = ("source", "listener")
ANALYZE_ROLE = "analyze"  # a token role for POST /v1/analyze only (no room: it joins none)
TOKEN_ROLES = ROLES + (ANALYZE_ROLE,)  # the roles an access token may grant
DEFAULT_ROLE = "listener"
# The wire's audio formats (audio/pcm.py decodes them): encoding -> numpy dtype string, and the stream's limits
ENCODINGS = {"pcm_s16le": "<i2", "pcm_f32le": "<f4"}
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MAX_CHANNELS = 8
DEFAULT_ENCODING = "pcm_s16le"
DEFAULT_SAMPLE_RATE = 48000
DEFAULT_CHANNELS = 1
QUERY_KEYS = ("role", "encoding", "sample_rate", "channels", "preset", "token", "track_detection")
SWITCH_VALUES = {"on": True, "off": False}  # the values of the `track_detection` query parameter
MAX_TEXT_FIELD = 512  # longest track id/title/artist or preset name accepted in a client message
MAX_TEXT_MESSAGE = 8192  # bytes: the longest valid client text message is ~1.6 KB; longer is bad_message, unparsed
MAX_NUMBER_CHARS = 32  # a JSON number literal longer than this is bad_message (Python's int() refuses > 4300 digits
# with ValueError, and long literals cost quadratic time)
MAX_ECHO = 40  # characters of a client's value quoted back in an error message (see `shown`)
MAX_ERROR_MESSAGE = 300  # characters of any error message (the whole message, after quoting)

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
UNKNOWN_TRACK = "unknown_track"  # additive: `play` of a track not prepared for the room (or not finished yet)
CLOCK_MISMATCH = "clock_mismatch"  # additive, non-fatal: a source's audio runs much faster/slower than the wall clock
ERROR_CODES = (
    BAD_MESSAGE, BAD_AUDIO, RATE_LIMITED, NOT_ALLOWED, TOO_BIG, UNAUTHORIZED, SERVER_ERROR, UNKNOWN_TRACK, CLOCK_MISMATCH,
)
STORE_FULL = "store_full"  # additive: PUT of a prepared track when the store holds its maximum (HTTP 507)
FORBIDDEN_ORIGIN = "forbidden_origin"  # additive: a web page whose Origin is not allowed (HTTP 403)
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"  # additive: plain HTTP with a method the path does not answer (HTTP 405)
UNSUPPORTED_MEDIA = "unsupported_media_type"  # additive (HTTP uploads): a body that is not audio the server reads
TIMEOUT = "timeout"  # additive (HTTP uploads): the work asked for took longer than its limit (504)
REQUEST_TIMEOUT = "request_timeout"  # additive (HTTP uploads): the request itself did not arrive in time (408)
# With a broker: a source for a room this process does not hold, while the cluster (Redis) cannot decide who holds
# it, is refused with 503 and a Retry-After header rather than risk two sources for one room.
CLUSTER_UNAVAILABLE = "cluster_unavailable"
# additive refusals: 403 forbidden_origin, 404 not_found (HTTP room state), 429 rate_limited (per-address limits),
# 503 cluster_unavailable
REFUSAL_STATUS = {BAD_REQUEST: 400, UNAUTHORIZED: 401, FORBIDDEN_ORIGIN: 403, NOT_FOUND: 404, SOURCE_TAKEN: 409,
                  METHOD_NOT_ALLOWED: 405, RATE_LIMITED: 429, SERVER_FULL: 503, STORE_FULL: 507, TOO_BIG: 413,
                  UNSUPPORTED_MEDIA: 415, BAD_AUDIO: 422, TIMEOUT: 504, REQUEST_TIMEOUT: 408,
                  CLUSTER_UNAVAILABLE: 503}

# The websocket subprotocol a client may offer (Sec-WebSocket-Protocol); offering none works the same.
SUBPROTOCOL = "sendreturn.v1"

# Close codes.
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
CLOSE_PING_TIMEOUT = 4408  # additive: no pong within server.ping_timeout_seconds (the client's network, not a server error)
CLOSE_TRY_AGAIN_LATER = 1013  # a source that joined as the cluster's broker went away (cluster_unavailable)

CLIENT_MESSAGE_TYPES = ("track", "preset", "end", "keepalive", "track_detection", "play", "position", "pause", "stop")
MAX_LEAD_SECONDS = 10.0  # `lead_seconds` of a room following a prepared track: 0 (on time) to this


class ProtocolError(SendReturnError):
    """Something the protocol answers with an error `code` (one of the codes above) and a human `message`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Refusal(ProtocolError):
    """A handshake the server refuses: HTTP `status` with body {"error": {"code", "message"}}."""

    def __init__(self, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(code, message)
        self.status = REFUSAL_STATUS[code]
        self.headers = headers  # extra response headers (Retry-After on a 429, Allow on a 405)

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


def shown(value: Any, limit: int = MAX_ECHO) -> str:
    """A client's value as it may be quoted in an error message or a log line: its repr, cut to `limit` characters.

    Every message that echoes input goes through this, whatever the value's type: an echoed 1 MiB list of "é" was
    3 MB of escaped JSON per reply. repr() of a huge container is itself costly, so strings and short
    containers are cut before repr."""
    if isinstance(value, str):
        text = repr(value[: limit + 1])
    elif isinstance(value, (list, tuple, dict)):
        text = f"<{type(value).__name__} of {len(value)}>"
    elif isinstance(value, (bool, type(None), float)):
        text = repr(value)
    elif isinstance(value, int):
        text = repr(value) if abs(value) < 10**limit else "<int too long>"
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_target(path: str) -> None:
    """Refuse a request target holding anything but visible ASCII (Refusal bad_request).

    urlsplit silently removes TAB, CR and LF, so "lob\tby" would become room "lobby"; the protocol's characters never
    need them, so a target holding them (or spaces, or non-ASCII) is refused before any parsing."""
    if not REQUEST_TARGET_RE.fullmatch(path):
        raise Refusal(BAD_REQUEST, "the request target must be 1 to 4096 visible ASCII characters (percent-encode the rest)")


def room_from_path(path: str) -> str | None:
    """The room name if `path` (with or without a query) is /v1/rooms/{room}; None for other paths.

    Raises Refusal(bad_request) for a /v1/rooms/ path whose room name breaks the rules, so a client gets a clear
    message rather than a 404. Percent-escapes of the room's own characters are decoded (RFC 3986 equivalence);
    any other escape (lobby%0A, a%2Fb) and any raw character outside the rules is refused, never dropped."""
    check_target(path)
    target = urlsplit(path).path
    if not target.startswith(ROOM_PATH_PREFIX):
        return None
    raw = target[len(ROOM_PATH_PREFIX) :]
    room = unquote(raw) if ROOM_SEGMENT_RE.fullmatch(raw) else None
    if room is None or not ROOM_NAME_RE.fullmatch(room):
        raise Refusal(BAD_REQUEST, f"room name {shown(raw)} must be 1 to 64 characters of A-Z a-z 0-9 _ . -")
    return room


def _int_param(query: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(key)
    if raw is None:
        return default
    if not INT_PARAM_RE.fullmatch(raw):
        raise Refusal(BAD_REQUEST, f"{key} must be an integer written in ASCII digits, got {shown(raw)}")
    value = int(raw)
    if not lo <= value <= hi:
        raise Refusal(BAD_REQUEST, f"{key} must be in {lo}..{hi}, got {value}")
    return value


def parse_connect(path: str, authorization: str | None = None, presets: Iterable[str] | None = None) -> ConnectParams:
    """Request target (+ Authorization header) -> ConnectParams, or Refusal(bad_request).

    Unknown query parameters are ignored (later protocol versions may add some); repeated ones are refused because
    their meaning would be ambiguous. `presets`, when given, is the set of known preset names."""
    room = room_from_path(path)
    if room is None:
        raise Refusal(BAD_REQUEST, f"path must be {ROOM_PATH_PREFIX}{{room}}, got {shown(urlsplit(path).path)}")
    query = parse_query(urlsplit(path).query)
    role = query.get("role", DEFAULT_ROLE)
    if role not in ROLES:
        raise Refusal(BAD_REQUEST, f"role must be one of {', '.join(ROLES)}, got {shown(role)}")
    encoding = query.get("encoding", DEFAULT_ENCODING)
    if encoding not in ENCODINGS:
        raise Refusal(BAD_REQUEST, f"encoding must be one of {', '.join(ENCODINGS)}, got {shown(encoding)}")
    sample_rate = _int_param(query, "sample_rate", DEFAULT_SAMPLE_RATE, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    channels = _int_param(query, "channels", DEFAULT_CHANNELS, 1, MAX_CHANNELS)
    preset = query.get("preset")
    if preset is not None and presets is not None and preset not in set(presets):
        raise Refusal(BAD_REQUEST, f"unknown preset {shown(preset)}; known: {', '.join(sorted(presets))}")
    detection = query.get("track_detection")
    if detection is not None and detection not in SWITCH_VALUES:
        raise Refusal(BAD_REQUEST, f"track_detection must be on or off, got {shown(detection)}")
    token = request_token(query.get("token"), authorization)
    # the token's shape is the authenticator's business: on a server without tokens any value (empty, blank) is
    # ignored alike, on one with tokens a malformed value is refused there (server/auth.py)
    return ConnectParams(
        room, role, encoding, sample_rate, channels, preset, token, None if detection is None else SWITCH_VALUES[detection]
    )


TRACK_QUERY_KEYS = ("token", "title", "artist", "preset", "analysis")  # PUT /v1/rooms/{room}/tracks/{id}
FREE_TEXT_KEYS = ("title", "artist")  # query values that may hold spaces and any printable character


def track_id_from_path(raw: str) -> str:
    """A prepared track's id from its path segment (percent-decoded): 1 to MAX_TEXT_FIELD characters, no control
    characters (Refusal bad_request)."""
    try:
        track = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise Refusal(BAD_REQUEST, "a track id in the path is percent-encoded UTF-8") from None
    if not 0 < len(track) <= MAX_TEXT_FIELD or not track.isprintable():
        raise Refusal(BAD_REQUEST, f"a track id is 1 to {MAX_TEXT_FIELD} characters without control characters, got {shown(track)}")
    return track


def parse_query(query: str, keys: tuple[str, ...] = QUERY_KEYS) -> dict[str, str]:
    """A handshake's query string -> {key: value}, refusing what would be ambiguous or unbounded (bad_request).

    Unknown parameters are ignored (later protocol versions may add some), but at most MAX_QUERY_FIELDS of them;
    a known one given twice is refused; values must decode to visible ASCII (an escaped control character such as
    role=source%0A is refused here rather than compared and refused later with a confusing message)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS, errors="strict")
    except ValueError:
        raise Refusal(BAD_REQUEST, f"the query must be at most {MAX_QUERY_FIELDS} key=value pairs of UTF-8") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in keys:
            continue
        if key in out:
            raise Refusal(BAD_REQUEST, f"query parameter {key} given more than once")
        if key in FREE_TEXT_KEYS:
            if not 0 < len(value) <= MAX_TEXT_FIELD or not value.isprintable():
                raise Refusal(BAD_REQUEST, f"{key} must be 1 to {MAX_TEXT_FIELD} printable characters, got {shown(value)}")
        elif key != "token" and not REQUEST_TARGET_RE.fullmatch(value):
            raise Refusal(BAD_REQUEST, f"query parameter {key} must be visible ASCII, got {shown(value)}")
        out[key] = value
    return out


def request_token(query_token: str | None, authorization: str | None) -> str | None:
    """The access token a request carries: `?token=`, else an `Authorization: Bearer` header's (None: neither)."""
    if query_token is None and authorization is not None:
        return bearer_token(authorization)
    return query_token


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value; None for other schemes or an empty value."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def refusal_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": bounded_message(message)}}).encode()


def bounded_message(message: str) -> str:
    """An error message cut to MAX_ERROR_MESSAGE characters: the last bound on anything a client can make us say."""
    return message if len(message) <= MAX_ERROR_MESSAGE else message[: MAX_ERROR_MESSAGE - 3] + "..."


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


@dataclass(frozen=True)
class Play:
    """Follow the room's prepared track `track` from `position` seconds (an extension of v1: docs/PROTOCOL.md);
    `lead_seconds`, when given, becomes the room's lead."""

    track: str
    position: float = 0.0
    lead_seconds: float | None = None


@dataclass(frozen=True)
class Position:
    """Where the source's player is in the prepared track now (seconds)."""

    position: float


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Stop:
    pass


ClientMessage = Track | PresetChange | End | Keepalive | TrackDetection | Play | Position | Pause | Stop


def _text_field(msg: dict[str, Any], key: str, required: bool) -> str | None:
    value = msg.get(key)
    if value is None:
        if required:
            raise MessageError(BAD_MESSAGE, f"'{msg['type']}' needs a string field '{key}'")
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_FIELD:
        raise MessageError(BAD_MESSAGE, f"'{key}' must be a non-empty string of at most {MAX_TEXT_FIELD} characters")
    return value


def _seconds_field(msg: dict[str, Any], key: str, required: bool, default: float | None = None, hi: float = math.inf) -> float | None:
    """A number of seconds in 0..`hi` (a bool is not a number here); absent or null: `default`, or bad_message when
    `required`. NaN and infinities never get here (strict JSON refuses them)."""
    value = msg.get(key)
    if value is None:
        if required:
            raise MessageError(BAD_MESSAGE, f"'{msg['type']}' needs a number field '{key}' (seconds)")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi:
        bound = f"0 to {hi:g}" if math.isfinite(hi) else ">= 0"
        raise MessageError(BAD_MESSAGE, f"'{msg['type']}' field '{key}' must be a number of seconds, {bound}; got {shown(value)}")
    return float(value)


def _refuse_constant(name: str) -> Any:
    raise MessageError(BAD_MESSAGE, f"{name} is not a JSON number (text messages are strict JSON)")


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise MessageError(BAD_MESSAGE, f"numbers in text messages have at most {MAX_NUMBER_CHARS} characters")
    return int(text)


def _bounded_float(text: str) -> float:
    value = float(text) if len(text) <= MAX_NUMBER_CHARS else math.inf
    if not math.isfinite(value):
        raise MessageError(BAD_MESSAGE, f"numbers in text messages are finite and have at most {MAX_NUMBER_CHARS} characters")
    return value


def loads_strict(text: str) -> Any:
    """Strict JSON: no NaN/Infinity, number literals of at most MAX_NUMBER_CHARS characters. MessageError(bad_message)
    for anything else, never another exception (a 4,301-digit integer made json.loads raise ValueError, which the
    server reported as server_error and closed with 1011)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int, parse_float=_bounded_float)
    except MessageError:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise MessageError(BAD_MESSAGE, "text messages must be JSON objects") from None


def parse_client_message(text: str) -> ClientMessage:
    """A client's text frame -> a message object, or MessageError(bad_message). Unknown extra fields are ignored
    (forward compatibility); missing or mistyped known fields are refused. Frames over MAX_TEXT_MESSAGE bytes are
    refused without being parsed."""
    if len(text) > MAX_TEXT_MESSAGE or len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_MESSAGE:
        raise MessageError(BAD_MESSAGE, f"text messages are at most {MAX_TEXT_MESSAGE} bytes")
    msg = loads_strict(text)
    if not isinstance(msg, dict):
        raise MessageError(BAD_MESSAGE, "text messages must be JSON objects")
    kind = msg.get("type")
    if kind not in CLIENT_MESSAGE_TYPES:
        raise MessageError(BAD_MESSAGE, f"unknown message type {shown(kind)}; known: {', '.join(CLIENT_MESSAGE_TYPES)}")
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
    if kind == "play":
        return Play(
            _text_field(msg, "track", True),  # type: ignore[arg-type]
            _seconds_field(msg, "position", False, 0.0),  # type: ignore[arg-type]
            _seconds_field(msg, "lead_seconds", False, None, MAX_LEAD_SECONDS),
        )
    if kind == "position":
        return Position(_seconds_field(msg, "position", True))  # type: ignore[arg-type]
    if kind == "pause":
        return Pause()
    if kind == "stop":
        return Stop()
    return Keepalive()


# ---------------------------------------------------------------------------------------------------- server -> client


def welcome(
    params: ConnectParams, model: Mapping[str, Any], window_seconds: float, hop_seconds: float, preset: str,
    sample_rate: int | None = None,
) -> dict[str, Any]:
    """The first message on every connection. `model` = {name, version, moods, genres}; `sample_rate` the rate the
    model hears (its front end's), so a source can send mono at that rate and spare the upload and the resampling."""
    msg: dict[str, Any] = {"type": "welcome", "protocol": PROTOCOL_VERSION, "room": params.room, "role": params.role}
    if params.is_source:
        msg["audio"] = {"encoding": params.encoding, "sample_rate": params.sample_rate, "channels": params.channels}
    msg["model"] = dict(model)
    msg["analysis"] = {"window_seconds": round(window_seconds, 4), "hop_seconds": round(hop_seconds, 4)}
    if sample_rate is not None:
        msg["analysis"]["sample_rate"] = int(sample_rate)
    msg["preset"] = preset
    return msg


def mood(
    room: str, seq: int, analysis: Mapping[str, Any], track: Mapping[str, Any] | None, latency_ms: float,
    prepared: bool = False,
) -> dict[str, Any]:
    """A `mood` update: the tracker's analysis fields plus the room's envelope, in the protocol's field order.
    `prepared`: it comes from a prepared track's analysis (an extension: docs/PROTOCOL.md), not live audio."""
    msg: dict[str, Any] = {"type": "mood", "room": room, "seq": seq, "stream_time": analysis["stream_time"]}
    if track is not None:
        msg["track"] = dict(track)
    for key, value in analysis.items():
        if key != "stream_time":
            msg[key] = value
    if prepared:
        msg["prepared"] = True
    msg["latency_ms"] = round(latency_ms, 3)
    return msg


def track_change(room: str, change: Mapping[str, Any], prepared: bool = False) -> dict[str, Any]:
    """A track change heard in the audio (an extension of v1): `change` = TrackChange.to_dict(). `prepared`: heard
    in a prepared track's analysis and sent at its position."""
    msg = {"type": "track_change", "room": room, **change}
    if prepared:
        msg["prepared"] = True
    return msg


def mood_envelope(room: str, track: Mapping[str, Any] | None) -> tuple[str, str]:
    """The parts of a prepared `mood` message's text that stay the same for a room while one track plays (its
    opening up to `seq`, and the `track` member), encoded once so each update only fills in its numbers."""
    head = f'{{"type":"mood","room":{json.dumps(room)},"seq":'
    return head, "" if track is None else f',"track":{json.dumps(dict(track), separators=(",", ":"))}'


def mood_text(room: str, seq: int, stream_time: float, track: Mapping[str, Any] | None, body: str, latency_ms: float) -> str:
    """encode(mood(..., prepared=True)) from a prepared update's pre-encoded analysis members (`body`: every
    analysis field but stream_time, prepared.Cue): the room wraps them without encoding them again."""
    return mood_text_in(mood_envelope(room, track), seq, stream_time, body, latency_ms)


def mood_text_in(envelope: tuple[str, str], seq: int, stream_time: float, body: str, latency_ms: float) -> str:
    """mood_text with the room's envelope (mood_envelope) already encoded: a float's repr is its JSON."""
    head, track = envelope
    return f'{head}{seq},"stream_time":{float(stream_time)!r}{track},{body},"prepared":true,"latency_ms":{round(float(latency_ms), 3)!r}}}'


def track_change_text(room: str, body: str) -> str:
    """encode(track_change(room, change, prepared=True)) from the change's pre-encoded members (`body`)."""
    return f'{{"type":"track_change","room":{json.dumps(room)},{body},"prepared":true}}'


def timeline_text(
    room: str, track: Mapping[str, Any], analysis: str, duration: float, lead_seconds: float, hop_seconds: float,
    updates: str, track_changes: list[Mapping[str, Any]],
) -> str:
    """A prepared track's whole timeline (an extension of v1), sent to the room once per `play` of a new track and
    to a listener joining while it plays, so engines can schedule locally. `updates` is the encoded list of compact
    updates (prepared.compact_timeline)."""
    head = encode({
        "type": "timeline", "room": room, "track": dict(track), "analysis": analysis, "duration": duration,
        "lead_seconds": lead_seconds, "hop_seconds": hop_seconds, "track_changes": [dict(c) for c in track_changes],
    })
    return f'{head[:-1]},"updates":{updates}}}'


def source_state(connected: bool) -> dict[str, Any]:
    return {"type": "source", "state": "connected" if connected else "disconnected"}


def resync(room: str, first: int, last: int) -> dict[str, Any]:
    """Updates `first`..`last` (seq, inclusive) of the room will not reach this connection (the cluster could not
    carry them, or another process's source took the room over): the next `mood` update is the current state."""
    return {"type": "resync", "room": room, "from_seq": first, "to_seq": last}


def error(code: str, message: str, fatal: bool = False) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": bounded_message(message), "fatal": fatal}


def encode(msg: Mapping[str, Any]) -> str:
    """Server messages are compact JSON text frames."""
    return json.dumps(msg, separators=(",", ":"), allow_nan=False)

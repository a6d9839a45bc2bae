"""The protocol fuzzer: Hypothesis generates whole client sessions (handshake target and headers, then text
messages, binary frames, pings, malformed frames, in any order) and runs each against a real server over a raw
socket; every reply is checked against what protocol v1 and the server's hardening promise, while a well-behaved room streams
beside the attack and must miss no update.

Invariants checked for every case (`violations`):
- the server answers every request: an HTTP status below 500, a bounded body, JSON errors with a known code and a
  message of at most protocol.MAX_ERROR_MESSAGE characters;
- after a 101, every text frame the server sends is a strict-JSON object (no NaN/Infinity) of a known type, error
  codes are protocol codes, messages bounded, mood numbers finite; the server never closes with 1011;
- the server process is still running.
And for the whole run: no traceback and no ERROR line in the server's log; the well-behaved room got every update.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .. import protocol
from .wire import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawClient, default_headers, frame, handshake_request

GOOD_ROOM = "good-room"
REPLY_TYPES = ("welcome", "mood", "source", "error", "track_change", "timeline")
ALLOWED_CLOSE = {1000, 1001, 1002, 1003, 1005, 1007, 1008, 1009}
MAX_FRAME_TEXT = 16384  # no server text frame is longer (a mood message is ~1 KB)
MAX_REFUSAL_BODY = 4096
FUZZ_SERVER_CONFIG: dict[str, Any] = {
    # per-address limits high enough that the cases reach the message handling instead of a 429 (the limits have
    # their own chaos tests); everything else as shipped, hop 0.5 s so the well-behaved room has more updates
    "server": {"room_creations_per_minute": 1_000_000, "http_requests_per_second": 100_000},
    "analysis": {"hop_seconds": 0.5},
    "logging": {"level": "warning"},
}


@dataclass
class Case:
    target: str
    headers: list[tuple[str, str]]
    actions: list[tuple[str, Any]]

    def describe(self) -> str:
        return f"target={self.target!r} headers={self.headers!r} actions={[(k, _short(v)) for k, v in self.actions]!r}"


def _short(v: Any) -> Any:
    if isinstance(v, (bytes, str)) and len(v) > 60:
        return f"{v[:40]!r}...({len(v)})"
    return v


# --------------------------------------------------------------------------------------------------- strategies


def strategies(good_room: str = GOOD_ROOM) -> Any:
    """The Hypothesis strategy of whole cases (imported lazily: hypothesis is a dev dependency)."""
    from hypothesis import strategies as st

    room_chars = "ABCXYZabcxyz0189_.-"
    rooms = st.one_of(
        st.sampled_from([good_room, "lobby", "a", "A" * 64, "x.y-z_0", "fuzz"]),
        st.text(alphabet=room_chars, min_size=1, max_size=70),
        st.sampled_from(["lobby%0A", "lobby%0a", "lob\tby", "lobby%00", "%41b", "a%2Fb", "", "..", "lobby ", "a/b",
                         "lobby%", "lobby%zz", "l%C3%A9", "%E2%80%AE", "lobby\x7f", "\u00e9", "lobby?", "lobby#x"]),
        st.text(max_size=20),
    )
    values = {
        "role": st.sampled_from(["source", "listener", "admin", "", "source%0A", "SOURCE", "source "]),
        "encoding": st.sampled_from(["pcm_s16le", "pcm_f32le", "mp3", "", "pcm_s16le%09"]),
        "sample_rate": st.one_of(st.sampled_from(["8000", "16000", "44100", "48000", "192000", "7999", "4_8000", "+48000",
                                                  "48000%0A", "%2048000", "1e5", "٤٨٠٠٠", "9" * 30]), st.integers(-10, 10**7).map(str)),
        "channels": st.one_of(st.integers(-1, 10).map(str), st.sampled_from(["", "1.0", "2%0A", "0x2"])),
        "preset": st.sampled_from(["default", "subtle", "dramatic", "none", "nope", "default%0A", ""]),
        "token": st.sampled_from(["x", "a.b.c", "eyJhbGciOiJub25lIn0.eyJyb29tIjoiKiJ9.", "%0A", ""]),
    }
    pair = st.one_of(
        st.sampled_from(list(values)).flatmap(lambda k: values[k].map(lambda v: (k, v))),
        st.tuples(st.text(alphabet="abcxyz_", min_size=1, max_size=8), st.text(max_size=8)),
    )
    query = st.lists(pair, max_size=6).map(lambda ps: "&".join(f"{k}={v}" for k, v in ps))
    valid_query = st.lists(st.sampled_from(["role=source", "role=listener", "encoding=pcm_f32le", "sample_rate=16000",
                                            "channels=2", "preset=subtle", "future=1"]), max_size=4, unique=True)
    well_formed = st.tuples(st.sampled_from([good_room, "lobby", "a", "fuzz", "x.y-z_0"]), valid_query).map(
        lambda t: f"/v1/rooms/{t[0]}" + (f"?{'&'.join(t[1])}" if t[1] else ""))
    target = st.one_of(
        well_formed,
        st.tuples(rooms, query, st.booleans()).map(lambda t: f"/v1/rooms/{t[0]}" + (f"?{t[1]}" if t[2] and t[1] else "")),
        st.sampled_from(["/", "/v1/rooms/", "/v2/rooms/a", "/healthz", "/v1/rooms/a/b", "*", "/v1/rooms/" + "a" * 5000]),
    )
    extra_header = st.one_of(
        st.sampled_from([("Authorization", "Bearer a"), ("Authorization", "Basic eA=="), ("Authorization", "Bearer"),
                         ("Upgrade", "websocket"), ("Upgrade", "h2c"), ("Origin", "https://evil.example"),
                         ("Origin", "http://localhost:3000"), ("Origin", "null"), ("Host", "evil.example"),
                         ("Sec-WebSocket-Version", "8"), ("Sec-WebSocket-Key", "short"), ("Content-Length", "5"),
                         ("Sec-WebSocket-Extensions", "permessage-deflate"), ("Connection", "close"),
                         ("Transfer-Encoding", "chunked"), ("X-Long", "x" * 6000)]),
        st.tuples(st.text(alphabet="ABCXabcx-", min_size=1, max_size=12), st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)),
    )
    drops = st.one_of(st.just(frozenset()), st.frozensets(st.integers(0, 4), max_size=2))
    extras = st.one_of(st.just([]), st.lists(extra_header, max_size=3))
    headers = st.tuples(extras, drops).map(_headers)

    json_values = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)),
        lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)),
        max_leaves=10,
    )
    message = st.one_of(
        st.sampled_from(['{"type": "keepalive"}', '{"type": "end"}', '{"type": "track", "id": "spotify:track:x", "title": "T"}',
                         '{"type": "preset", "name": "subtle"}', '{"type": "preset", "name": "nope"}', '{"type": "track"}',
                         '{"type": "keepalive", "n": NaN}', '{"type": "keepalive", "n": Infinity}', '{"type": "keepalive", "n": -Infinity}',
                         '{"type": "keepalive", "n": ' + "9" * 4301 + "}", '{"type": "keepalive", "n": 1e999}', "[" * 3000, "{",
                         '{"type": ["' + "\u00e9" * 3000 + '"]}', '"keepalive"', "null", "", "\ufeff{}",
                         '{"type": "play", "track": "x"}', '{"type": "play", "track": "x", "position": -1}',
                         '{"type": "play", "track": "x", "position": 1e308}', '{"type": "play", "track": "x", "lead_seconds": 99}',
                         '{"type": "position", "position": 3}', '{"type": "position", "position": NaN}', '{"type": "pause"}',
                         '{"type": "stop"}', '{"type": "play", "track": "' + "t" * 600 + '"}']),
        st.fixed_dictionaries({"type": st.one_of(st.sampled_from(protocol.CLIENT_MESSAGE_TYPES), json_values)},
                              optional={"id": json_values, "title": json_values, "artist": json_values, "name": json_values}).map(json.dumps),
        st.text(max_size=200),
        st.integers(1, 200_000).map(lambda n: '{"type": "keepalive", "pad": "' + "x" * n + '"}'),
    )
    pcm = st.one_of(
        st.binary(max_size=4000),
        st.integers(1, 9600).map(lambda n: struct.pack(f"<{n}h", *([1000, -1000] * n)[:n])),
        st.tuples(st.integers(1, 4800), st.sampled_from([0.0, 0.5, 1.0, 16.0, 17.0, 1e20, 1e30, -1e38, math.nan, math.inf])).map(
            lambda t: struct.pack(f"<{t[0]}f", *([0.1] * (t[0] - 1) + [t[1]]))),
        st.integers(1, 3).map(lambda k: bytes(k)),  # not a whole sample frame
    )
    action = st.one_of(
        message.map(lambda m: ("text", m)),
        pcm.map(lambda b: ("binary", b)),
        st.sampled_from([("ping", b"p"), ("pong", b""), ("read", None), ("sleep", 0.01), ("bad_utf8", None),
                         ("reserved_opcode", None), ("rsv_bits", None), ("unmasked", None), ("stray_continuation", None),
                         ("fragmented", None), ("close_bad_code", None), ("close", None), ("big_header", None)]),
    )
    actions = st.lists(action, max_size=8)
    clean = st.builds(Case, well_formed, st.just(default_headers("127.0.0.1")), actions)  # reaches the messages
    messy = st.builds(Case, target, headers, actions)
    # sampled_from picks uniformly (repeating a branch in one_of does not weight it): 3 in 5 cases are clean
    return st.sampled_from([0, 1, 2, 3, 4]).flatmap(lambda k: clean if k < 3 else messy)


def _headers(arg: tuple[list[tuple[str, str]], frozenset[int]]) -> list[tuple[str, str]]:
    extra, drop = arg
    base = [h for i, h in enumerate(default_headers("127.0.0.1")) if i not in drop]
    return base + extra


# --------------------------------------------------------------------------------------------------- running


def _frames_for(kind: str, value: Any) -> bytes:
    if kind == "text":
        return frame(OP_TEXT, value.encode("utf-8", "surrogatepass"))
    if kind == "binary":
        return frame(OP_BINARY, value)
    if kind == "ping":
        return frame(OP_PING, value)
    if kind == "pong":
        return frame(OP_PONG, value)
    if kind == "bad_utf8":
        return frame(OP_TEXT, b'{"type": "\xff\xfe"}')
    if kind == "reserved_opcode":
        return frame(0x3, b"x")
    if kind == "rsv_bits":
        return frame(OP_TEXT, b'{"type": "keepalive"}', rsv=0b100)
    if kind == "unmasked":
        return frame(OP_TEXT, b'{"type": "keepalive"}', masked=False)
    if kind == "stray_continuation":
        return frame(OP_CONT, b"x")
    if kind == "fragmented":
        return frame(OP_TEXT, b'{"type": ', fin=False) + frame(OP_PING, b"") + frame(OP_CONT, b'"keepalive"}')
    if kind == "close_bad_code":
        return frame(OP_CLOSE, struct.pack("!H", 999) + b"bye")
    if kind == "close":
        return frame(OP_CLOSE, struct.pack("!H", 1000))
    if kind == "big_header":  # a frame announcing 2^62 bytes
        return bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 62) + b"\x00\x00\x00\x00"
    raise ValueError(kind)


def run_case(host: str, port: int, case: Case, timeout: float = 5.0) -> tuple[list[str], Any]:
    """Run one case; returns (violations, the server's reply)."""
    try:
        c = RawClient(host, port, timeout)
    except OSError as e:
        return [f"cannot connect: {e}"], None
    problems: list[str] = []
    try:
        c.send(handshake_request(case.target, case.headers))
        try:
            reply = c.read_response(timeout)
        except (TimeoutError, ConnectionError) as e:
            # the websockets library drops connections whose request it cannot parse as HTTP (e.g. a header line
            # beyond its limits): a close without a response is acceptable, hanging is not
            return ([] if isinstance(e, ConnectionError) else [f"no HTTP response within {timeout} s"]), None
        problems += check_response(reply)
        if reply.status == 101:
            for kind, value in case.actions:
                if kind == "read":
                    c.read_frames(idle=0.01, total=0.2)
                elif kind == "sleep":
                    time.sleep(value)
                elif not c.send(_frames_for(kind, value)):
                    break
            c.send(frame(OP_CLOSE, struct.pack("!H", 1000)))
            c.read_frames(idle=timeout, total=timeout)
            problems += check_frames(reply)
    except OverflowError as e:
        problems.append(str(e))
    except ValueError as e:
        problems.append(f"bad frame from the server: {e}")
    finally:
        c.close()
    return problems, c.reply


def check_response(reply: Any) -> list[str]:
    out = []
    if reply.status >= 500 and reply.status != 503:
        out.append(f"HTTP {reply.status}: {reply.body[:200]!r}")
    if reply.status == 503:
        body = _json_or_none(reply.body)
        if not (body and body.get("error", {}).get("code") == "server_full"):
            out.append(f"HTTP 503 without server_full: {reply.body[:200]!r}")
    if len(reply.body) > MAX_REFUSAL_BODY and reply.status != 200:
        out.append(f"refusal body of {len(reply.body)} bytes")
    if reply.status != 101 and b"application/json" in reply.head.lower():
        body = _json_or_none(reply.body)
        if body is None:
            out.append(f"HTTP {reply.status} with a body that is not JSON: {reply.body[:100]!r}")
        elif "error" in body:
            err = body["error"]
            if not isinstance(err.get("message"), str) or len(err["message"]) > protocol.MAX_ERROR_MESSAGE:
                out.append(f"refusal message unbounded or missing: {str(err)[:200]}")
    return out


def check_frames(reply: Any) -> list[str]:
    out = []
    for opcode, payload in reply.frames:
        if opcode == OP_TEXT:
            if len(payload) > MAX_FRAME_TEXT:
                out.append(f"a text frame of {len(payload)} bytes")
                continue
            msg = _json_or_none(payload)
            if not isinstance(msg, dict):
                out.append(f"a text frame that is not a strict JSON object: {payload[:100]!r}")
                continue
            if msg.get("type") not in REPLY_TYPES:
                out.append(f"unknown message type {msg.get('type')!r}")
            if msg.get("type") == "error":
                if msg.get("code") not in protocol.ERROR_CODES:
                    out.append(f"unknown error code {msg.get('code')!r}")
                if len(msg.get("message", "")) > protocol.MAX_ERROR_MESSAGE:
                    out.append("an error message longer than the bound")
        elif opcode not in (OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            out.append(f"a frame with opcode {opcode}")
    if reply.close_code is not None and reply.close_code not in ALLOWED_CLOSE:
        out.append(f"closed with {reply.close_code}")
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass
class FuzzResult:
    cases: int = 0
    failures: int = 0
    failing_case: str | None = None
    violations: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


def fuzz(host: str, port: int, cases: int, seed: int | None = None, server_alive: Any = None,
         good_room: str = GOOD_ROOM, progress: int = 0) -> FuzzResult:
    """Run `cases` Hypothesis examples against host:port. Stops at the first violating case (shrunk by Hypothesis)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    result = FuzzResult()
    t0 = time.monotonic()

    @settings(max_examples=cases, deadline=None, database=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(strategies(good_room))
    def one(case: Case) -> None:
        result.cases += 1
        if progress and result.cases % progress == 0:
            print(f"{result.cases} cases, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        problems, reply = run_case(host, port, case)
        if reply is not None:
            result.statuses[reply.status] = result.statuses.get(reply.status, 0) + 1
        if server_alive is not None and not server_alive():
            problems.append("the server process died")
        if problems:
            result.failing_case = case.describe()[:2000]
            result.violations = problems
            raise AssertionError("; ".join(problems)[:2000])

    test = one if seed is None else hseed(seed)(one)
    try:
        test()
    except AssertionError:
        result.failures = 1
    except Exception as e:  # an error in the harness itself is a failure too, with its reason
        result.failures = 1
        result.violations.append(f"{type(e).__name__}: {e}")
    result.seconds = time.monotonic() - t0
    return result

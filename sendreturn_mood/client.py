"""An asyncio client for protocol v1 (docs/PROTOCOL.md): what a Python program uses to feed a room or follow one.

    from sendreturn_mood.client import Listener, Mood, Source

    async with Listener("ws://127.0.0.1:8765", "lobby") as room:      # reconnects with backoff on drops
        async for update in room:                                     # Welcome | Mood | SourceState | ServerError |
            if isinstance(update, Mood):                              # TrackChange | Timeline | Resync | Unknown |
                scene.apply(update.effects)                           # Disconnected | Reconnecting

    async with Source("ws://127.0.0.1:8765", "lobby", on_event=print) as src:
        await src.send_file("song.mp3")                               # track + paced PCM, resumes after a drop
        last = await src.end()                                        # the server's last update, then close 1000

Why these shapes: updates are typed dataclasses (every field of the schema in schema/v1/, plus `raw`, the exact
text the server sent, and `extra`, fields this version does not know: the protocol only ever adds fields). A
listener is an async iterator because that is how a game loop or a bridge consumes a stream; connection events
come through the same iterator, so a program sees a drop as data instead of an exception it has to catch. A
source streams at `speed` times real time (0 = as fast as the server's rate limit allows) and remembers its
position, so a reconnect resumes the current track where it was (sending `track` again, because analysis restarts
on a new connection). By default a source sends what the model hears: mono at the model's rate (the server's
`welcome` says it; 16 kHz until one has), resampled here with soxr. A 48 kHz stereo s16 source uploads 1.5 Mbit/s
and the server resamples it anyway; mono 16 kHz is a sixth of that. `model_format=False` sends the audio as it is.

Refusals that retrying cannot fix (400, 401, 403, 404) raise `Refused`; others (409 source_taken, 503 server_full,
network errors, close 1001 on a server restart) are retried with exponential backoff until `retries` attempts in a
row have failed (`GaveUp`). A fatal `error` message from the server raises `FatalServerError` on the source side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Union
from urllib.parse import quote, urlencode, urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .errors import SendReturnError
from .protocol import MAX_CHANNELS
from .audio import pcm
from .audio.files import AudioFile, block_frames, find_audio  # noqa: F401  (part of this module's API: files and folders -> audio files)

DEFAULT_URL = "ws://127.0.0.1:8765"
FATAL_STATUS = frozenset({400, 401, 403, 404})  # refusals that retrying cannot fix (409, 503: retry)
FINAL_CLOSE_CODES = frozenset({1000, 1003, 1008, 1009})  # closes a listener does not reconnect after (as the JS client)
OPEN_TIMEOUT_S = 10.0
END_TIMEOUT_S = 30.0  # after `end`, how long to wait for the server's last update and close
KEEPALIVE_S = 30.0  # a `keepalive` text message after this long without sending anything (None: never)
MAX_MESSAGE_BYTES = 1 << 20  # server messages are a few hundred bytes; anything near this is not protocol v1
POSITION_EVERY_S = 5.0  # a player's position report every this many seconds: the server's clock runs between reports, so
# more only costs (the server allows 4 per second)
MODEL_RATE = 16000  # what the shipped models hear, until a server's welcome says otherwise (analysis.sample_rate)


# ---------------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class _Message:
    raw: str = field(repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Welcome(_Message):
    protocol: int = 1
    room: str = ""
    role: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, float] = field(default_factory=dict)
    preset: str = ""
    audio: dict[str, Any] | None = None
    track_detection: dict[str, bool] | None = None  # sources: {"enabled": bool} (server extension)


@dataclass(frozen=True)
class Mood(_Message):
    room: str = ""
    seq: int = 0
    stream_time: float = 0.0
    mood: str | None = ""  # None: no music heard yet in this track (a silent start), so no label
    confidence: float = 0.0
    probabilities: dict[str, float] = field(default_factory=dict)
    valence: float = 0.0
    arousal: float = 0.0
    instant: dict[str, Any] = field(default_factory=dict)
    effects: dict[str, float | str | list[float]] = field(default_factory=dict)  # colours: "#rrggbb" and NAME_rgb
    preset: str = ""
    latency_ms: float = 0.0
    track: dict[str, str] | None = None
    genre: dict[str, Any] | None = None
    state: str | None = None  # "music" | "silent" (servers with silence detection)
    level_db: float | None = None  # the analysed window's level, dB re a full-scale sine
    prepared: bool = False  # from the room's prepared track, sent at its position (server extension)

    @property
    def silent(self) -> bool:
        """The window was below the server's silence threshold: mood held, effects going to rest."""
        return self.state == "silent"


@dataclass(frozen=True)
class SourceState(_Message):
    state: str = ""

    @property
    def connected(self) -> bool:
        return self.state == "connected"


@dataclass(frozen=True)
class ServerError(_Message):
    code: str = ""
    message: str = ""
    fatal: bool = False


@dataclass(frozen=True)
class TrackChange(_Message):
    """The server heard a new track start at `stream_time` (announced at `detected_at`); the room's smoothing
    restarted there (server extension: docs/PROTOCOL.md)."""

    room: str = ""
    source: str = ""
    stream_time: float = 0.0
    detected_at: float = 0.0
    score: float = 0.0
    threshold: float = 0.0
    prepared: bool = False  # heard in the room's prepared track, sent at its position


@dataclass(frozen=True)
class Timeline(_Message):
    """A prepared track's whole analysis, once per `play` of a new track (server extension): `updates` are
    {position, mood, confidence, valence, arousal, genre, state, effects}, so a game can schedule locally."""

    room: str = ""
    track: dict[str, str] = field(default_factory=dict)
    analysis: str = ""
    duration: float = 0.0
    lead_seconds: float = 0.0
    hop_seconds: float = 0.0
    track_changes: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Resync(_Message):
    """Updates `from_seq`..`to_seq` of the room will not arrive (a cluster could not carry them, or the room's source
    moved to another server process): the next Mood is the room's current state; snap to it (server extension)."""

    room: str = ""
    from_seq: int = 0
    to_seq: int = 0


@dataclass(frozen=True)
class Unknown(_Message):
    """A message type this client does not know (a later server may add some): `raw` has it all."""

    type: str = ""


@dataclass(frozen=True)
class Disconnected:
    """The connection ended (`code`/`reason` from the close frame; 1006 when there was none)."""

    code: int
    reason: str


@dataclass(frozen=True)
class Reconnecting:
    """About to wait `delay` seconds and connect again (attempt `attempt` in a row)."""

    reason: str
    delay: float
    attempt: int


ServerMessage = Union[Welcome, Mood, SourceState, ServerError, TrackChange, Timeline, Resync, Unknown]
Event = Union[ServerMessage, Disconnected, Reconnecting]
_TYPES: dict[str, type[_Message]] = {
    "welcome": Welcome, "mood": Mood, "source": SourceState, "error": ServerError, "track_change": TrackChange,
    "timeline": Timeline, "resync": Resync,
}


def parse_message(raw: str) -> ServerMessage:
    """A server text frame -> its dataclass. Unknown fields go to `extra`, unknown types become `Unknown`."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"server messages are JSON objects, got {raw[:80]!r}")
    kind = str(data.get("type", ""))
    cls = _TYPES.get(kind)
    if cls is None:
        return Unknown(raw=raw, type=kind, extra={k: v for k, v in data.items() if k != "type"})
    known = {f.name for f in fields(cls)} - {"raw", "extra"}
    return cls(
        raw=raw,
        extra={k: v for k, v in data.items() if k not in known and k != "type"},
        **{k: v for k, v in data.items() if k in known},
    )


def client_message(kind: str, **fields_: Any) -> str:
    """A client text message (schema/v1/client-message.json); None fields are left out. Every text message the
    clients send is built here (the tests validate them against the schema)."""
    return json.dumps({"type": kind, **{k: v for k, v in fields_.items() if v is not None}})


# ---------------------------------------------------------------------------------------------------- errors


class ClientError(SendReturnError):
    """Base of the errors this module raises."""


class Refused(ClientError):
    """The server refused the handshake for a reason retrying cannot fix. `body` is its JSON answer when it sent one."""

    def __init__(self, status: int, body: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {body}".strip())
        self.status = status
        self.body = body
        self.retry_after = retry_after  # seconds, from a 429's Retry-After
        try:
            err = json.loads(body)["error"]
            self.code, self.message = str(err["code"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            self.code, self.message = "", body


class GaveUp(ClientError):
    """`retries` connection attempts in a row failed."""


class FatalServerError(ClientError):
    """The server sent a fatal `error` for this stream (then closed it)."""

    def __init__(self, error: ServerError) -> None:
        super().__init__(error.raw)
        self.error = error


# ---------------------------------------------------------------------------------------------------- connecting


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between reconnect attempts: start, doubling (factor) up to max, in seconds."""

    start: float = 0.5
    max: float = 10.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.start
        while True:
            yield delay
            delay = min(delay * self.factor, self.max)


def http_url(base: str) -> str:
    """The server's HTTP origin for a ws:// or wss:// base URL."""
    return "http" + base[2:].rstrip("/") if base.startswith("ws") else base.rstrip("/")


def _http_put(url: str, body: bytes, timeout: float) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body or None, method="PUT", headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        raise Refused(e.code, e.read().decode("utf-8", "replace")) from None


def room_url(base: str, room: str, **params: Any) -> str:
    """ws://HOST:PORT/v1/rooms/{room}?... (None parameters left out; the room name is escaped)."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{base.rstrip('/')}/v1/rooms/{quote(room, safe='')}" + (f"?{query}" if query else "")


# ---------------------------------------------------------------------------------------------------- HTTP

UPLOAD_CHUNK = 64 * 1024


def http_base(url: str) -> tuple[str, int, bool, str]:
    """(host, port, tls, Host header) of a server's ws://, wss://, http:// or https:// URL (any path ignored)."""
    parts = urlsplit(url)
    tls = parts.scheme in ("wss", "https")
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise ValueError(f"not a server URL: {url!r} (ws://HOST:PORT or http://HOST:PORT)")
    return parts.hostname, parts.port or (443 if tls else 80), tls, parts.netloc


async def http_request(
    url: str, method: str, target: str, body: bytes, headers: list[tuple[str, str]], timeout: float
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with a body (h11 over an asyncio connection) -> (status, headers, body). The body is
    sent while the answer is watched for: a server that answers early (401, 413, 415, 429) is heard, and the rest
    of the body is not sent."""
    import h11

    host, port, tls, netloc = http_base(url)
    conn = h11.Connection(h11.CLIENT)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, ssl=tls or None)
        try:
            head = [("Host", netloc), ("Content-Length", str(len(body))), ("Connection", "close"), *headers]
            writer.write(conn.send(h11.Request(method=method, target=target, headers=head)))

            async def send_body() -> None:
                for i in range(0, len(body), UPLOAD_CHUNK):
                    writer.write(conn.send(h11.Data(data=body[i : i + UPLOAD_CHUNK])))
                    await writer.drain()
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()

            sender = asyncio.ensure_future(send_body())
            status, answer_headers, chunks = 0, {}, []
            try:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(UPLOAD_CHUNK)
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Response):
                        status = event.status_code
                        answer_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
            finally:
                if not sender.done():
                    sender.cancel()
                with contextlib.suppress(BaseException):
                    await sender
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return status, answer_headers, b"".join(chunks)


async def analyze_file(
    url: str, file: str | Path | bytes, *, token: str | None = None, name: str | None = None, timeout: float = 300.0
) -> dict[str, Any]:
    """POST an audio file (a path, or its bytes) to the server's /v1/analyze -> what `analyze --json` prints for
    it plus `features` (docs/PROTOCOL.md). `url` is the server's ws:// or http:// address. Raises `Refused` with
    the server's status, code and message (and `retry_after` on a 429) when it does not analyse it."""
    if isinstance(file, bytes):
        data, shown = file, name
    else:
        path = Path(file)
        data, shown = path.read_bytes(), name or path.name
    target = "/v1/analyze" + (f"?{urlencode({'name': shown})}" if shown else "")
    headers = [("Content-Type", "application/octet-stream")]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    status, answer_headers, body = await http_request(url, "POST", target, data, headers, timeout)
    if status != 200:
        retry = answer_headers.get("retry-after")
        raise Refused(status, body.decode("utf-8", "replace"), float(retry) if retry and retry.isdigit() else None)
    return json.loads(body)  # type: ignore[no-any-return]


def _refusal_text(exc: InvalidStatus) -> str:
    body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
    return f"HTTP {exc.response.status_code} {body}".strip()


async def _open(url: str, open_timeout: float) -> ClientConnection:
    """One connection attempt. Raises Refused (do not retry) or ConnectionError(reason) (may retry)."""
    try:
        return await connect(url, compression=None, proxy=None, open_timeout=open_timeout, max_size=MAX_MESSAGE_BYTES)
    except InvalidStatus as exc:
        body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
        if exc.response.status_code in FATAL_STATUS:
            raise Refused(exc.response.status_code, body) from exc
        raise ConnectionError(f"refused: {_refusal_text(exc)}") from exc
    except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
        raise ConnectionError(f"cannot connect ({type(exc).__name__}: {exc})") from exc


async def _keepalive(ws: ClientConnection, last_send: list[float], every: float) -> None:
    """Send `keepalive` whenever nothing was sent for `every` seconds (proxies close idle connections)."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.sleep(max(0.05, last_send[0] + every - time.monotonic()))
            if time.monotonic() - last_send[0] >= every:
                await ws.send(client_message("keepalive"))
                last_send[0] = time.monotonic()


# ---------------------------------------------------------------------------------------------------- listener


class Listener:
    """Follow a room: `async for event in listener` yields server messages and connection events, reconnecting
    with backoff until `retries` attempts in a row fail (-1: forever). Raises Refused or GaveUp. The iteration ends
    after `close()`, or after a close the server means (1000, 1003, 1008, 1009)."""

    def __init__(
        self,
        url: str,
        room: str,
        *,
        token: str | None = None,
        retries: int = -1,
        backoff: Backoff = Backoff(),
        keepalive: float | None = KEEPALIVE_S,
        open_timeout: float = OPEN_TIMEOUT_S,
    ) -> None:
        self.url = room_url(url, room, role="listener", token=token)
        self.retries = retries
        self.backoff = backoff
        self.keepalive = keepalive
        self.open_timeout = open_timeout
        self._ws: ClientConnection | None = None
        self._closed = False

    async def __aenter__(self) -> "Listener":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: the iterator ends after the current connection closes."""
        self._closed = True
        if self._ws is not None:
            await self._ws.close()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def events(self) -> AsyncIterator[Event]:
        delays = self.backoff.delays()
        failures = 0
        while not self._closed:
            try:
                ws = await _open(self.url, self.open_timeout)
            except ConnectionError as exc:
                reason = str(exc)
            else:
                self._ws = ws
                delays, failures = self.backoff.delays(), 0
                last_send = [time.monotonic()]
                pinger = asyncio.create_task(_keepalive(ws, last_send, self.keepalive)) if self.keepalive else None
                try:
                    async for raw in ws:
                        if isinstance(raw, str):
                            yield parse_message(raw)
                except ConnectionClosed:
                    pass
                finally:  # also when the consumer stops iterating (break, an exception): close the connection
                    if pinger is not None:
                        pinger.cancel()
                    await ws.close()
                    self._ws = None
                code = ws.close_code if ws.close_code is not None else 1006
                yield Disconnected(code, ws.close_reason or "")
                if code in FINAL_CLOSE_CODES:
                    return  # a normal end, or the server's policy: reconnecting would not change it
                reason = f"closed by the server ({code} {ws.close_reason})" if ws.close_reason else f"closed by the server ({code})"
            if self._closed:
                return
            failures += 1
            if 0 <= self.retries < failures:
                raise GaveUp(f"{reason}; gave up after {failures} attempts")
            delay = next(delays)
            yield Reconnecting(reason, delay, failures)
            await asyncio.sleep(delay)


# ---------------------------------------------------------------------------------------------------- source


@dataclass
class EndResult:
    """What `Source.end` saw: the server's last update on this connection, how many updates, the close code."""

    last: Mood | None
    updates: int
    close_code: int | None


class Source:
    """Be a room's source. The audio format is fixed per connection (protocol v1): `send_file` and `send_array`
    (re)connect with their audio's format; `connect` + `send_frames` send PCM bytes as they are.

    `on_event` gets every server message and connection event (Disconnected, Reconnecting) as it arrives."""

    def __init__(
        self,
        url: str,
        room: str,
        *,
        encoding: str = "pcm_s16le",
        preset: str | None = None,
        token: str | None = None,
        retries: int = 10,
        backoff: Backoff = Backoff(),
        keepalive: float | None = KEEPALIVE_S,
        open_timeout: float = OPEN_TIMEOUT_S,
        on_event: Callable[[Event], Any] | None = None,
        model_format: bool = True,
    ) -> None:
        if encoding not in pcm.ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(pcm.ENCODINGS)}")
        self.base, self.room, self.encoding = url, room, encoding
        self.preset_name, self.token = preset, token
        self.retries, self.backoff, self.keepalive, self.open_timeout = retries, backoff, keepalive, open_timeout
        self.on_event = on_event
        self.model_format = model_format  # send_file / send_array: mono at the model's rate unless told otherwise
        self.model_rate: int | None = None  # the rate the server's model hears (from its welcome)
        self.format: tuple[int, int] | None = None  # (sample_rate, channels) of the open connection
        self.updates = 0  # mood updates received on this source's connections
        self.last: Mood | None = None
        self._track: dict[str, str] | None = None  # re-sent after a reconnect
        self._playing: tuple[str, float | None] | None = None  # the prepared track played (follow_player replays it)
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._last_send = [time.monotonic()]
        self._fatal: ServerError | None = None
        self._callback_error: Exception | None = None
        self._welcomed = asyncio.Event()  # set by the reader when the open connection's welcome arrived

    async def __aenter__(self) -> "Source":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def _emit(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)

    # ------------------------------------------------------------------------------------------ connection

    async def connect(self, sample_rate: int, channels: int = 1) -> None:
        """Open a connection announcing this format (ending a connection with another format first), retrying
        with backoff. Raises Refused or GaveUp."""
        if self._ws is not None and self.format == (sample_rate, channels):
            return
        if self._ws is not None:
            await self.end()
        delays = self.backoff.delays()
        attempt = 0
        url = room_url(self.base, self.room, role="source", encoding=self.encoding, sample_rate=sample_rate,
                       channels=channels, preset=self.preset_name, token=self.token)
        while True:
            try:
                ws = await _open(url, self.open_timeout)
                break
            except ConnectionError as exc:
                attempt += 1
                if 0 <= self.retries < attempt:
                    raise GaveUp(f"could not connect after {attempt} attempts ({exc})") from exc
                delay = next(delays)
                self._emit(Reconnecting(str(exc), delay, attempt))
                await asyncio.sleep(delay)
        self._ws, self.format, self._fatal = ws, (sample_rate, channels), None
        self._welcomed.clear()
        self._last_send[0] = time.monotonic()
        self._reader = asyncio.create_task(self._read(ws))
        if self.keepalive:
            self._pinger = asyncio.create_task(_keepalive(ws, self._last_send, self.keepalive))

    async def _read(self, ws: ClientConnection) -> None:
        """Take the server's messages until it closes. An exception in `on_event` (e.g. BrokenPipeError when
        printing to a closed pipe) closes the connection and is raised by the next call on this source."""
        try:
            try:
                async for raw in ws:
                    if not isinstance(raw, str):
                        continue
                    msg = parse_message(raw)
                    if isinstance(msg, Welcome):
                        self.model_rate = _announced_rate(msg) or self.model_rate
                        self._welcomed.set()
                    if isinstance(msg, Mood):
                        self.updates += 1
                        self.last = msg
                    elif isinstance(msg, ServerError) and msg.fatal:
                        self._fatal = msg
                    self._emit(msg)
            except ConnectionClosed:
                pass
            code = ws.close_code if ws.close_code is not None else 1006
            self._emit(Disconnected(code, ws.close_reason or ""))
        except Exception as exc:  # the callback's, not the connection's
            self._callback_error = exc
            await ws.close()
        finally:
            self._welcomed.set()  # nobody waits for a welcome on a closed connection

    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            exc, self._callback_error = self._callback_error, None
            raise exc

    async def _drop(self) -> None:
        """Forget a connection that broke (after letting its reader take the last messages: a fatal error?)."""
        ws, self._ws = self._ws, None
        if self._pinger is not None:
            self._pinger.cancel()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=2.0)
        if ws is not None:
            await ws.close()
        self._raise_callback_error()
        if self._fatal is not None:
            raise FatalServerError(self._fatal)

    async def _reconnect(self) -> None:
        fmt = self.format
        assert fmt is not None
        await self._drop()
        await self.connect(*fmt)
        if self._track is not None:
            await self._send(client_message("track", **self._track))

    async def _send(self, data: str | bytes) -> None:
        self._raise_callback_error()
        assert self._ws is not None, "not connected"
        await self._ws.send(data)
        self._last_send[0] = time.monotonic()

    async def _send_resuming(self, data: str | bytes) -> None:
        """Send; after a dropped connection reconnect (resending the track) and send again."""
        while True:
            try:
                await self._send(data)
                return
            except ConnectionClosed:
                await self._reconnect()

    # ------------------------------------------------------------------------------------------ messages

    async def track(self, id: str, title: str | None = None, artist: str | None = None) -> None:
        """A new track starts: the room's analysis restarts, later updates carry it (sent again after reconnects)."""
        self._track = {k: v for k, v in {"id": id, "title": title, "artist": artist}.items() if v is not None}
        await self._send_resuming(client_message("track", **self._track))

    async def preset(self, name: str) -> None:
        """Switch the room's effect preset (an unknown name comes back as a non-fatal bad_message error)."""
        self.preset_name = name
        await self._send_resuming(client_message("preset", name=name))

    async def track_detection(self, enabled: bool) -> None:
        """Switch the room's track-change detection on or off (server extension; not re-sent after a reconnect:
        a new connection starts with the server's default)."""
        await self._send_resuming(client_message("track_detection", enabled=bool(enabled)))

    # ------------------------------------------------------------------------------------------ prepared tracks

    async def prepare(
        self, audio: str | Path | bytes, id: str, title: str | None = None, artist: str | None = None,
        analysis: str | None = None, timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Prepare the room's track `id` before it plays: PUT the audio file (a path or its bytes) to
        /v1/rooms/{room}/tracks/{id}, or refer to an analysis already stored (`analysis`, the id a PUT answered).
        Returns the server's description ({track, analysis, duration, updates, ...}); Refused with the server's
        answer otherwise (413 too long, 415 not audio, 507 store full)."""
        body = b"" if analysis is not None else (audio if isinstance(audio, bytes) else Path(audio).read_bytes())
        query = {k: v for k, v in {"title": title, "artist": artist, "analysis": analysis, "token": self.token}.items() if v}
        url = http_url(self.base) + f"/v1/rooms/{quote(self.room, safe='')}/tracks/{quote(id, safe='')}"
        return await asyncio.to_thread(_http_put, url + (f"?{urlencode(query)}" if query else ""), body, timeout)

    async def play(self, track: str, position: float = 0.0, lead_seconds: float | None = None) -> None:
        """The room follows its prepared track `track` from `position` seconds (connect first: `connect(rate)`)."""
        self._playing = (track, lead_seconds)
        await self._send_resuming(client_message("play", track=track, position=round(float(position), 3), lead_seconds=lead_seconds))

    async def position(self, position: float) -> None:
        """Where the player is in the prepared track now (every few seconds is enough; the server's clock runs)."""
        await self._send_resuming(client_message("position", position=round(float(position), 3)))

    async def pause(self) -> None:
        await self._send_resuming(client_message("pause"))

    async def stop(self) -> None:
        """Stop following the prepared track (live audio may follow)."""
        self._playing = None
        await self._send_resuming(client_message("stop"))

    async def follow_player(self, clock: Callable[[], float | None], every: float = POSITION_EVERY_S) -> None:
        """Report the player's position every `every` seconds until cancelled: `clock()` returns the player's
        position in seconds (None while paused). After a reconnect the track is played again at the clock's
        position (the room restarts where the player is, on whichever process the source lands)."""
        paused = False
        while True:
            position = clock()
            try:
                if position is None and not paused:
                    await self.pause()
                elif position is not None:
                    await self._send(client_message("position", position=round(float(position), 3)))
                paused = position is None
            except ConnectionClosed:
                await self._reconnect()
                if self._playing is not None and (position := clock()) is not None:
                    await self.play(self._playing[0], position, self._playing[1])
            await asyncio.sleep(every)

    async def send_frames(self, data: bytes) -> None:
        """PCM bytes in the announced format, sent as they are (call `connect` first)."""
        await self._send_resuming(data)

    async def end(self, timeout: float = END_TIMEOUT_S) -> EndResult:
        """Send `end`, wait for the server's last update and its close (1000). Returns what was seen."""
        if self._ws is None:
            return EndResult(self.last, self.updates, None)
        ws = self._ws
        try:
            await self._send(client_message("end"))
            if self._reader is not None:
                await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except ConnectionClosed:
            pass
        except asyncio.TimeoutError:
            pass
        await self._drop()
        self.format = None
        return EndResult(self.last, self.updates, ws.close_code)

    async def close(self) -> None:
        """Close without `end` (listeners see the source disconnect)."""
        if self._ws is not None:
            with contextlib.suppress(FatalServerError):
                await self._drop()
        self.format = None

    # ------------------------------------------------------------------------------------------ audio

    async def send_array(
        self, audio: np.ndarray, sample_rate: int, *, speed: float = 1.0, chunk_ms: float = 100.0, start: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Float audio, [frames] or [frames, channels] in -1..1 at `sample_rate`, from frame `start` on, paced at
        `speed` times real time (0: unpaced). With `model_format` (the default) it is sent mono at the model's rate,
        else as it is. Connects with that format if needed. Returns the number of input frames sent."""
        audio = np.asarray(audio, dtype=np.float32)
        block = audio[:, None] if audio.ndim == 1 else audio
        out_rate, out_channels = await self._send_format(sample_rate, block.shape[1], None, None)
        chunk = max(1, round(sample_rate * chunk_ms / 1000))
        blocks = _converted(_chunks(block, start, chunk), sample_rate, out_rate, out_channels)
        return await self._stream(blocks, sample_rate, out_channels, out_rate, speed, start, progress)

    async def send_file(
        self, path: str | Path, *, speed: float = 1.0, chunk_ms: float = 100.0, sample_rate: int | None = None,
        channels: int | None = None, track: bool = True, start: int = 0, progress: Callable[[int], None] | None = None,
    ) -> int:
        """Stream an audio file (wav, flac, ogg, mp3, ... anything libsndfile reads): a `track` message named after
        the file and its tags, then its audio paced at `speed` times real time. Sent mono at the model's rate with
        `model_format` (the default), else at the file's own rate and channels; `sample_rate` (resampled with soxr)
        and `channels` (1: downmix) override either. A dropped connection is reopened and the file resumes where it
        was. Raises `audio.files.DecodeError` for a file it cannot open, and `audio.files.Truncated` after sending
        what decodes of a file that stops before its declared length."""
        path = Path(path)
        with AudioFile(path) as f:
            rate, n_channels = await self._send_format(f.rate, f.channels, sample_rate, channels)
            await self.connect(rate, n_channels)
            if track:
                await self.track(**track_fields(path))
            chunk = max(1, round(f.rate * chunk_ms / 1000))
            blocks = _converted(_file_chunks(f, start, chunk), f.rate, rate, n_channels)
            return await self._stream(blocks, f.rate, n_channels, rate, speed, start, progress)

    async def _send_format(
        self, rate: int, channels: int, sample_rate: int | None, want_channels: int | None
    ) -> tuple[int, int]:
        """(rate, channels) to announce for audio at `rate` x `channels`: what the caller asked for, else mono at the
        model's rate (`model_format`), else the audio's own. The model's rate comes from the server's welcome: before
        the first one, a connection at MODEL_RATE mono asks (and is kept when the server's model hears that rate)."""
        if not self.model_format:
            return sample_rate or rate, want_channels or min(channels, MAX_CHANNELS)
        if sample_rate is None and self.model_rate is None:
            await self.connect(MODEL_RATE, want_channels or 1)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._welcomed.wait(), self.open_timeout)
            self.model_rate = self.model_rate or MODEL_RATE
        return sample_rate or self.model_rate or MODEL_RATE, want_channels or 1

    async def _stream(
        self, blocks: Iterator[tuple[int, np.ndarray]], in_rate: int, channels: int, out_rate: int, speed: float,
        start: int, progress: Callable[[int], None] | None,
    ) -> int:
        """Send (frames read, float block) pairs paced on the input's clock; resume after drops."""
        await self.connect(out_rate, channels)
        t0 = time.monotonic()
        sent_s = 0.0
        position = start
        for n_read, block in blocks:
            if len(block):
                await self._send_resuming(pcm.encode(block.reshape(-1), self.encoding))
            position += n_read
            sent_s += n_read / in_rate
            if progress is not None:
                progress(position)
            if speed > 0:
                delay = t0 + sent_s / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
            await asyncio.sleep(0)  # unpaced: still let the reader take the updates as they come
        return position - start


def _chunks(block: np.ndarray, start: int, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    for i in range(start, len(block), chunk):
        piece = block[i : i + chunk]
        yield len(piece), piece


def _file_chunks(f: AudioFile, start: int, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """(frames read, [frames, file channels] float32) from frame `start` on. Decodes in the blocks every reader
    uses (`audio.files.block_frames`: the server's `analyze` hears the same samples) and slices them: memory stays
    bounded, and the MP3 decoder is not stopped at every chunk boundary. The end is where the decoder stops, not
    the file's declared length (an estimate for MP3)."""
    for block, _ in f.blocks(block_frames(f.rate), start):
        for i in range(0, len(block), chunk):
            piece = block[i : i + chunk]
            yield len(piece), piece


def _converted(
    blocks: Iterator[tuple[int, np.ndarray]], in_rate: int, out_rate: int, channels: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(frames read, block) -> (frames read, block in `channels` at `out_rate`): downmixed, then resampled with a
    soxr stream (one filter state across blocks; the last block flushes it, found by reading one block ahead)."""
    if in_rate == out_rate:
        for n, block in blocks:
            yield n, to_channels(block, channels)
        return
    import soxr

    resampler = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32")
    pending: tuple[int, np.ndarray] | None = None
    for n, block in blocks:
        if pending is not None:
            yield pending[0], resampler.resample_chunk(pending[1], last=False)
        pending = (n, to_channels(block, channels))
    if pending is not None:
        yield pending[0], resampler.resample_chunk(pending[1], last=True)


def _announced_rate(welcome: Welcome) -> int | None:
    """The model's rate from a welcome (a server extension; older servers do not say it)."""
    rate = welcome.analysis.get("sample_rate") if isinstance(welcome.analysis, dict) else None
    return int(rate) if isinstance(rate, int) and not isinstance(rate, bool) else None


def to_channels(block: np.ndarray, channels: int) -> np.ndarray:
    """[frames, file_channels] -> [frames, channels]: keep, or downmix to mono (duplicated when channels > 1)."""
    if block.shape[1] == channels:
        return block
    mono = block.mean(axis=1, keepdims=True)
    return np.repeat(mono, channels, axis=1)


def track_fields(path: Path) -> dict[str, str]:
    """The `track` fields for a file: id from the file name, title/artist from its tags when it has them."""
    import soundfile as sf

    out = {"id": f"file:{path.name}", "title": path.stem}
    try:
        tags: Mapping[str, str] = sf.SoundFile(path).copy_metadata()
    except (sf.LibsndfileError, RuntimeError):
        tags = {}
    for key in ("title", "artist"):
        if tags.get(key):
            out[key] = tags[key]
    return out

"""OSC output: a room's updates as OSC bundles over UDP, for Unreal Engine's OSC plugin, TouchDesigner, Resolume,
Max, lighting desks: tools that speak OSC and not this websocket.

Address scheme (docs/PROTOCOL.md "OSC output"; machine-readable in schema/osc/v1.json, which a test holds equal
to what this module sends): everything under `{prefix}/{room}/` (prefix `/sendreturn` by default), so an engine
can bind `/sendreturn/*/valence`. Numbers wherever a tool needs numbers: valence, arousal, confidence, each mood's
and genre's smoothed probability, each effect in its own units and as 0..1 (`/norm`, from the preset file's
range), colours as three 0..1 floats and as OSC's colour type, the state as an int, seq as an int; the labels also
as strings. One bundle per update; `source` and `track_change` are triggers of their own.

Continuous values (`rate_hz` > 0): the effects, valence and arousal are then sent `rate_hz` times a second,
moving from the last values towards the latest update's at the preset's own slew (`max_rate` of each parameter,
scaled by the preset's `rate_scale`; values without one move linearly over one hop), so a Blueprint can bind a
value straight to a Material Parameter Collection with no lerp. The per-update bundle then leaves them out (it
would make them jump).

Never harmful: each target is one non-blocking, connected UDP socket; a send that fails (closed port: the
kernel's ICMP error, a full buffer, an unresolved or unresolvable name) is dropped and counted in /metrics
(`sendreturn_osc_send_errors_total{target}`), and logged at most once a minute per target. Names are resolved off
the event loop (`loop.getaddrinfo`), retried a minute later on failure. The number of targets and their rates
are bounded by the config (`outputs.osc.max_targets`, `outputs.osc.max_rate_hz`).

Encoding is python-osc's, in two ways by cost. An update's bundle (a few a second per server at most, strings of
varying length in it) is written with python-osc's OSC type writers (`pythonosc.parsing.osc_types`), each
address's encoded head kept; python-osc's message and bundle builders re-parse every datagram they build (about
0.9 ms for a bundle of 20 messages, measured). A stream's bundle (30 a second per room and target) keeps the same
addresses and type tags for the stream's life, so python-osc's builders build it once (`StreamShape.template`) and
every tick only writes the new float32 / RGBA words into it: one numpy operation for all the streams of a clock
(`StreamClock`, one timer per rate for all targets).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import socket
import time
from typing import Any, Mapping, Sequence

import numpy as np
from pythonosc.parsing import osc_types

from ..config import ConfigError, OscTargetSettings, Settings, as_dict
from ..metrics import Tally
from ..room.effects import Parameter, Presets, parse_colour
from ..room.rooms import Outgoing, Room
from ..room.update import Update

log = logging.getLogger(__name__)

STATE_CODES = {"silent": 0, "music": 1}  # `state` as an int: tools that take numbers only
SOURCE_CODES = {"disconnected": 0, "connected": 1}
NO_LABEL = ""  # `mood` / `genre` before a track's first music (the websocket's null): an empty string
ERROR_LOG_SECONDS = 60.0  # a failing target is logged at most this often
RESOLVE_RETRY_SECONDS = 60.0  # an unresolvable name is tried again this long after a failure
HEAD_CACHE_SIZE = 1 << 16  # encoded addresses kept (a room's map is a few dozen addresses)
RESOLVE_WAIT_SECONDS = 2.0  # the server's start waits at most this long for its targets' names
HOST_PORT_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:=\s]+):(?P<port>\d{1,5})(?:=(?P<rooms>\S+))?$")

Message = tuple[str, str, tuple[Any, ...]]  # (address, OSC type tags without the comma, arguments)
Value = float | tuple[float, float, float]  # a continuous value: a float, or a colour as 0..1 RGB


# ------------------------------------------------------------------------------------------------ settings


def parse_target(spec: str) -> dict[str, Any]:
    """`HOST:PORT[=ROOM_GLOB]` (serve --osc, osc --to) -> an outputs.osc.targets item (the config checks the rest).
    ConfigError for anything else."""
    m = HOST_PORT_RE.fullmatch(spec.strip())
    if m is None:
        raise ConfigError(f"an OSC target is HOST:PORT[=ROOM_GLOB] (e.g. 127.0.0.1:9000=lobby*), got {spec!r}")
    return {"host": m["host"].strip("[]"), "port": int(m["port"]), "rooms": [m["rooms"] or "*"]}


def with_targets(config: Settings, specs: Sequence[str]) -> Settings:
    """The settings with `serve --osc` targets (`HOST:PORT[=ROOM_GLOB]`) added to the configured ones, all checked
    together as a file's would be (bad specs, too many targets). ConfigError otherwise."""
    if not specs:
        return config
    targets = [as_dict(t) for t in config.outputs.osc.targets] + [parse_target(spec) for spec in specs]
    return config.replace(**{"outputs.osc.targets": targets})


# ------------------------------------------------------------------------------------------------ the view


def update_messages(prefix: str, update: Update) -> list[Message]:
    """An Update as OSC messages, but for the continuous values (`continuous_values`, encoded by `value_elements`):
    the bundle of one update holds both, unless a rate_hz stream carries the continuous ones."""
    a = update.analysis
    base = f"{prefix}/{update.room}"
    out: list[Message] = [
        (f"{base}/seq", "i", (update.seq,)),
        (f"{base}/stream_time", "f", (a.stream_time,)),
        (f"{base}/mood", "s", (a.mood or NO_LABEL,)),
        (f"{base}/confidence", "f", (a.confidence,)),
    ]
    out += [(f"{base}/mood/{label}", "f", (p,)) for label, p in a.probabilities.items()]
    if a.genre is not None:
        out.append((f"{base}/genre", "s", (a.genre.label or NO_LABEL,)))
        out += [(f"{base}/genre/{label}", "f", (p,)) for label, p in a.genre.probabilities.items()]
    if a.state is not None:
        out.append((f"{base}/state", "i", (STATE_CODES[a.state],)))
    if a.level_db is not None:
        out.append((f"{base}/level_db", "f", (a.level_db,)))
    out.append((f"{base}/preset", "s", (a.preset,)))
    return out


def continuous_values(update: Update) -> dict[str, Value]:
    """The values a rate_hz stream interpolates: valence, arousal and every effect (colours as 0..1 RGB)."""
    a = update.analysis
    values: dict[str, Value] = {"valence": a.valence, "arousal": a.arousal}
    for name, v in a.effects.items():
        if isinstance(v, str):  # a colour, "#rrggbb"
            values[f"effects/{name}"] = tuple(c / 255.0 for c in parse_colour(v))  # type: ignore[assignment]
        elif isinstance(v, (int, float)):
            values[f"effects/{name}"] = float(v)
    return values


class StreamShape:
    """The continuous values in one fixed order, as float64 columns: what a stream moves every tick, and the OSC
    messages they make, each argument one 32-bit word. Each value is of a kind: "float" (one column; one `f`
    message), "norm" (an effect with a range: one column; its `f` message and `/norm`, 0..1 of the range) or
    "colour" (three columns, 0..1; an `fff` message and `/rgba`, OSC's colour type). Every room of a server has the
    same shape (valence, arousal and the preset file's parameters), so all of a clock's streams share one array and
    a tick is a few numpy operations whatever the number of rooms.

    A row's words are its columns as float32, then the norms as float32, then the colours as RGBA; `messages`
    names, per message in bundle order, its address under the room, its type tags and the words it holds."""

    def __init__(self, spec: tuple[tuple[str, str, float, float], ...]) -> None:
        self.spec = spec  # (key, kind, low, high) per value, low/high for "norm" only
        first: list[int] = []
        norm_cols: list[int] = []
        bounds: list[tuple[float, float]] = []
        colour_cols: list[int] = []
        col = 0
        for _, kind, low, high in spec:
            first.append(col)
            if kind == "colour":
                colour_cols.append(col)
                col += 3
            else:
                if kind == "norm":
                    norm_cols.append(col)
                    bounds.append((low, high))
                col += 1
        self.columns = col
        self.width = col + len(norm_cols) + len(colour_cols)  # words per row
        self._norm_cols = np.array(norm_cols, dtype=np.intp)
        self._low = np.array([lo for lo, _ in bounds], dtype=np.float64)
        self._span = np.array([hi - lo for lo, hi in bounds], dtype=np.float64)
        self._colour_cols = np.array(colour_cols, dtype=np.intp)[:, None] + np.arange(3)
        self.messages: list[tuple[str, str, tuple[int, ...]]] = []
        norm_word, rgba_word = col, col + len(norm_cols)
        for (key, kind, _, _), c in zip(spec, first):
            if kind == "colour":
                self.messages += [(key, "fff", (c, c + 1, c + 2)), (f"{key}/rgba", "r", (rgba_word,))]
                rgba_word += 1
            elif kind == "norm":
                self.messages += [(key, "f", (c,)), (f"{key}/norm", "f", (norm_word,))]
                norm_word += 1
            else:
                self.messages.append((key, "f", (c,)))
        # columns that move together: a colour's three channels share one step (the largest of their distances)
        self._channels = tuple((c, c + 3) for c in colour_cols)

    def row(self, values: Mapping[str, Value | float | None]) -> np.ndarray:
        """Values (or one number per value, e.g. a rate; None -> NaN) by key -> one row of columns."""
        out: list[float] = []
        for key, kind, _, _ in self.spec:
            v = values[key]
            v = math.nan if v is None else v
            if kind == "colour":
                out += v if isinstance(v, tuple) else (v, v, v)  # type: ignore[arg-type]
            else:
                out.append(v)  # type: ignore[arg-type]
        return np.array(out, dtype=np.float64)

    def distance(self, current: np.ndarray, target: np.ndarray) -> np.ndarray:
        """How far each column has to go; a colour's channels all get the largest of theirs."""
        d = np.abs(target - current)
        for a, b in self._channels:
            d[..., a:b] = d[..., a:b].max(axis=-1, keepdims=True)
        return d

    def words(self, current: np.ndarray) -> np.ndarray:
        """N rows of columns -> N rows of big-endian 32-bit words: the messages' arguments as sent."""
        out = np.empty((current.shape[0], self.width), dtype=">u4")
        c, n = self.columns, self._norm_cols.size
        floats = out.view(">f4")
        floats[:, :c] = current
        if n:
            floats[:, c : c + n] = np.clip((current[:, self._norm_cols] - self._low) / self._span, 0.0, 1.0)
        if self._colour_cols.size:
            rgb = np.rint(np.clip(current[:, self._colour_cols], 0.0, 1.0) * 255.0).astype(np.uint32)
            out[:, c + n :] = (rgb[..., 0] << 24) | (rgb[..., 1] << 16) | (rgb[..., 2] << 8) | 0xFF
        return out

    def arguments(self, values: Mapping[str, Value]) -> list[tuple[str, str, tuple[Any, ...]]]:
        """The values of one update as (key, type tags, arguments) per message, in bundle order. Plain Python: one
        update's values are too few for numpy to pay (`words` is the same arithmetic for many rows at once; every
        stream's template checks that the two agree word for word)."""
        out: list[tuple[str, str, tuple[Any, ...]]] = []
        for key, kind, low, high in self.spec:
            v = values[key]
            if kind == "colour":
                r, g, b = (round(min(1.0, max(0.0, c)) * 255) for c in v)  # type: ignore[union-attr]
                out += [(key, "fff", v), (f"{key}/rgba", "r", ((r << 24) | (g << 16) | (b << 8) | 0xFF,))]  # type: ignore[list-item]
            elif kind == "norm":
                out += [(key, "f", (v,)), (f"{key}/norm", "f", (min(1.0, max(0.0, (v - low) / (high - low))),))]  # type: ignore[operator]
            else:
                out.append((key, "f", (v,)))
        return out

    def template(self, base: str, values: Mapping[str, Value]) -> tuple[np.ndarray, np.ndarray]:
        """A stream's bundle, encoded once (its addresses and type tags are the stream's for good, so the bytes'
        layout never changes), and the index of each of the row's words among its 32-bit words: a tick then writes
        only the values (OSC aligns every argument to 4 bytes)."""
        messages = [(f"{base}/{key}", tags, args) for key, tags, args in self.arguments(values)]
        data = np.frombuffer(encode_bundle(messages), dtype=np.uint8).copy()
        index = np.empty(self.width, dtype=np.intp)
        offset = len(_BUNDLE_HEAD)  # "#bundle", the time tag
        for (address, tags, _), (_, _, ws) in zip(messages, self.messages):
            offset += len(_head(address, tags))  # the element's size, its address and type tags; then the arguments
            index[list(ws)] = np.arange(len(ws)) + offset // 4
            offset += 4 * len(tags)
        if offset != data.size or not np.array_equal(data.view(">u4")[index], self.words(self.row(values)[None])[0]):
            raise RuntimeError(f"OSC stream template of {base}: the vectorised words disagree with the encoder's")
        return data, index


@functools.lru_cache(maxsize=HEAD_CACHE_SIZE)
def _shape(spec: tuple[tuple[str, str, float, float], ...]) -> StreamShape:
    return StreamShape(spec)


def stream_shape(values: Mapping[str, Value], parameters: Mapping[str, Parameter]) -> StreamShape:
    """The shape of these continuous values (one object per distinct shape: the same for every room)."""
    spec = []
    for key, v in values.items():
        p = parameters.get(key[len("effects/"):]) if key.startswith("effects/") else None
        if isinstance(v, tuple):
            spec.append((key, "colour", 0.0, 0.0))
        elif p is not None and p.type == "float":
            spec.append((key, "norm", float(p.low), float(p.high)))
        else:
            spec.append((key, "float", 0.0, 0.0))
    return _shape(tuple(spec))


def event_messages(prefix: str, room: str, message: Mapping[str, Any]) -> list[Message]:
    """Triggers: `source` (1 connected, 0 disconnected) and `track_change` (the stream time the new track started).
    Other messages (errors) have no OSC form."""
    base = f"{prefix}/{room}"
    if message["type"] == "source":
        return [(f"{base}/source", "i", (SOURCE_CODES[message["state"]],))]
    if message["type"] == "track_change":
        return [(f"{base}/track_change", "f", (message["stream_time"],))]
    return []


_WRITERS = {"f": osc_types.write_float, "i": osc_types.write_int, "s": osc_types.write_string, "r": osc_types.write_rgba}
_BUNDLE_HEAD = osc_types.write_string("#bundle") + osc_types.write_date(osc_types.IMMEDIATELY)


FIXED_SIZE = {"f": 4, "i": 4, "r": 4, "fff": 12}  # argument bytes of the type tag strings of fixed size


@functools.lru_cache(maxsize=HEAD_CACHE_SIZE)
def _head(address: str, tags: str) -> bytes:
    """A message's address and type tag string, encoded once: the same few hundred addresses go out with every
    update. For fixed-size arguments, with the bundle element's size in front (the element is then this + the
    arguments)."""
    head = osc_types.write_string(address) + osc_types.write_string("," + tags)
    return osc_types.write_int(len(head) + FIXED_SIZE[tags]) + head if tags in FIXED_SIZE else head


def _args(tags: str, args: Sequence[Any]) -> bytes:
    return b"".join(_WRITERS[t](a) for t, a in zip(tags, args))


def encode_message(address: str, tags: str, args: Sequence[Any]) -> bytes:
    head = _head(address, tags)
    return (head[4:] if tags in FIXED_SIZE else head) + _args(tags, args)


def encode_bundle(messages: Sequence[Message]) -> bytes:
    """One OSC bundle (time tag: immediately) holding the messages, in order."""
    parts = [_BUNDLE_HEAD]
    for address, tags, args in messages:
        if tags == "f":  # most messages: one float
            parts.append(_head(address, tags))
            parts.append(osc_types.write_float(args[0]))
        elif tags in FIXED_SIZE:
            parts.append(_head(address, tags))
            parts.append(_args(tags, args))
        else:
            data = encode_message(address, tags, args)
            parts.append(osc_types.write_int(len(data)))
            parts.append(data)
    return b"".join(parts)


# ------------------------------------------------------------------------------------------------ the stream


class _Streams:
    """Every stream of one shape on one clock, a row each: values, targets and rates as arrays, and all the
    streams' bundles in one buffer of words (each stream's bytes a slice of it), so a tick's arithmetic and its
    writing of the values are one numpy operation each over all rooms. New targets wait for the next tick
    (`aim`), which takes in all that arrived since the last one at once: the values do not move between ticks, so
    their rates come out as they would have at the update."""

    def __init__(self, shape: StreamShape) -> None:
        self.shape = shape
        self.rows: dict[tuple[int, str], int] = {}  # (id(target), room) -> row
        self.senders: list[OscTarget] = []
        self.templates: list[np.ndarray] = []
        self.indices: list[np.ndarray] = []
        empty = np.empty((0, shape.columns), dtype=np.float64)
        self.current, self.target, self.rates = empty, empty.copy(), empty.copy()
        self.moving = False  # some value has not reached its target: the next tick has arithmetic to do
        self.pending: dict[tuple[int, str], tuple[np.ndarray, np.ndarray, float]] = {}  # key -> target, slew, hop
        self._views: list[tuple[Any, memoryview]] | None = None  # (its target's _send, its bytes); None: to rebuild
        self._words = np.empty(0, dtype=">u4")  # every stream's bundle, back to back, as 32-bit words
        self._index = np.empty(0, dtype=np.intp)

    def add(self, key: tuple[int, str], sender: OscTarget, template: np.ndarray, index: np.ndarray, row: np.ndarray) -> None:
        self.rows[key] = len(self.senders)
        self.senders.append(sender)
        self.templates.append(template)
        self.indices.append(index)
        self.current = np.vstack([self.current, row])
        self.target = np.vstack([self.target, row])
        self.rates = np.vstack([self.rates, np.zeros_like(row)])
        self._views = None

    def aim(self, key: tuple[int, str], target: np.ndarray, slew: np.ndarray, hop: float) -> None:
        """A stream's new target, approached at the `slew` row's rates (NaN: none of its own, so the distance over
        `hop` seconds), from the next tick on."""
        self.pending[key] = (target, slew, hop)

    def remove(self, key: tuple[int, str]) -> None:
        self.pending.pop(key, None)
        i = self.rows.pop(key)
        for items in (self.senders, self.templates, self.indices):
            del items[i]
        self.current, self.target, self.rates = (np.delete(a, i, axis=0) for a in (self.current, self.target, self.rates))
        self.rows = {k: r - (r > i) for k, r in self.rows.items()}
        self._views = None

    def tick(self, dt: float) -> None:
        if self._views is None:  # rows came or went: one buffer of every stream's bundle, the values written below
            starts = np.cumsum([0] + [t.size for t in self.templates])  # bytes
            data = np.concatenate(self.templates) if self.templates else np.empty(0, dtype=np.uint8)
            self._words = data.view(">u4")
            self._index = np.concatenate([i + s // 4 for i, s in zip(self.indices, starts)]) if self.indices else self._index[:0]
            raw = memoryview(data)
            self._views = [(s._send, raw[a:b]) for s, a, b in zip(self.senders, starts, starts[1:])]
            self.moving = True
        if self.pending:
            rows = np.array([self.rows[k] for k in self.pending], dtype=np.intp)
            target = np.array([t for t, _, _ in self.pending.values()])
            slew = np.array([s for _, s, _ in self.pending.values()])
            hop = np.array([h for _, _, h in self.pending.values()])[:, None]
            self.pending.clear()
            self.target[rows] = target
            self.rates[rows] = np.where(np.isnan(slew), self.shape.distance(self.current[rows], target) / hop, slew)
            self.moving = True
        if self.moving:  # every value moved towards its target by at most rate * dt: the preset's slew
            step = self.rates * dt
            self.current += np.clip(self.target - self.current, -step, step)
            self.moving = not np.array_equal(self.current, self.target)
            self._words[self._index] = self.shape.words(self.current).ravel()
        for send, view in self._views:  # values that all arrived: the same bytes again, no arithmetic
            send(view)


class StreamClock:
    """One timer for every rate_hz stream at one rate: a server's targets share it (a timer per target or per room
    costs a loop callback per tick each, which at 30 Hz and hundreds of rooms was most of the stream's cost).

    A stream is one (target, room): a new update's values become its targets, approached at the preset's own slew
    (`max_rate` of each parameter, scaled by the preset's `rate_scale`; values without one move linearly over one
    hop). Each tick moves every stream's values in one vectorised step, writes them into the streams' bundles (built
    once by python-osc) in one scatter, and sends each stream's bundle. Ticks keep a fixed grid (no drift from the
    callback's own lateness); ticks a busy loop missed are skipped, and the next step covers the time they would
    have."""

    def __init__(self, rate_hz: float) -> None:
        self.rate_hz = float(rate_hz)
        self.period = 1.0 / self.rate_hz
        self._groups: dict[StreamShape, _Streams] = {}
        self._where: dict[tuple[int, str], _Streams] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._tick_time = 0.0  # loop time of the last tick
        self._next_tick = 0.0  # loop time the next tick is due

    def follow(
        self, sender: OscTarget, room: str, base: str, shape: StreamShape, values: Mapping[str, Value], slew: np.ndarray,
        hop: float,
    ) -> None:
        """A new update of `room` for `sender`: its `values` (of `shape`) are where the stream goes (`_Streams.aim`).
        A new stream (or one whose shape changed) starts at the values, its first bundle sent at once."""
        target = shape.row(values)
        key = (id(sender), room)
        group = self._where.get(key)
        if group is not None and group.shape is not shape:
            self.drop(sender, room)
            group = None
        if group is None:
            group = self._groups.get(shape) or self._groups.setdefault(shape, _Streams(shape))
            template, index = shape.template(base, values)
            group.add(key, sender, template, index, target)
            self._where[key] = group
            sender._send(template.tobytes())
        group.aim(key, target, slew, hop)
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._tick_time = loop.time()
            self._next_tick = self._tick_time + self.period
            self._handle = loop.call_at(self._next_tick, self._tick)

    def drop(self, sender: OscTarget, room: str) -> None:
        """The stream of `room` for `sender` ends (the room closed, the target closed)."""
        group = self._where.pop((id(sender), room), None)
        if group is not None:
            group.remove((id(sender), room))
            if not group.rows:
                del self._groups[group.shape]

    def drop_sender(self, sender: OscTarget) -> None:
        for sid, room in [k for k in self._where if k[0] == id(sender)]:
            self.drop(sender, room)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        dt, self._tick_time = now - self._tick_time, now
        if not self._groups:
            self._handle = None
            return
        for group in list(self._groups.values()):
            group.tick(dt)
        self._next_tick = max(self._next_tick + self.period, now + self.period / 2)
        self._handle = loop.call_at(self._next_tick, self._tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._groups.clear()
        self._where.clear()


# ------------------------------------------------------------------------------------------------ sending


class OscTarget:
    """One OSC destination as a sink of every room it matches (`send`/`room_closed`, see rooms.Sink). With rate_hz
    > 0 its rooms' continuous values go out through `clock` (shared by the server's targets of that rate; a target
    made alone gets its own)."""

    def __init__(
        self, settings: OscTargetSettings, presets: Presets, hop_seconds: float, metrics: Any = None,
        clock: StreamClock | None = None,
    ) -> None:
        self.settings = settings
        self.presets = presets
        self.parameters = {p.name: p for p in presets.parameters}
        self.hop_seconds = max(1e-3, float(hop_seconds))
        self.clock = clock if clock is not None or settings.rate_hz <= 0 else StreamClock(settings.rate_hz)
        self._own_clock = clock is None
        self._sent = metrics.osc_bundles.tally(target=settings.name) if metrics is not None else Tally()
        self._errors = metrics.osc_errors.tally(target=settings.name) if metrics is not None else Tally()
        self._sock: socket.socket | None = None
        self._resolving: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._last_log = -math.inf
        self._slews: dict[tuple[str, StreamShape], np.ndarray] = {}
        self._shapes: dict[tuple[str, ...], StreamShape] = {}  # by the values' keys (the kinds follow from them)
        self._rooms: set[str] = set()  # rooms with a stream on the clock
        try:  # an address needs no lookup: ready at once (AI_NUMERICHOST never touches the network)
            self._open(socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)[0])
        except OSError:
            pass  # a name: resolved by start(), or on the first send

    @property
    def sent(self) -> int:
        """Bundles sent since the target was made."""
        return int(self._sent.n)

    @property
    def errors(self) -> int:
        """Bundles lost since the target was made (`_failed`)."""
        return int(self._errors.n)

    # ---------------------------------------------------------------------------------------- sink

    def send(self, room: Room, out: Outgoing) -> None:
        self.deliver(room.name, out.message)

    def room_closed(self, room: Room) -> None:
        if self.clock is not None and room.name in self._rooms:
            self._rooms.discard(room.name)
            self.clock.drop(self, room.name)

    def deliver(self, room: str, message: Update | Mapping[str, Any]) -> None:
        """One broadcast of `room` (an Update, or a protocol message) -> its bundle, sent now."""
        prefix = self.settings.prefix
        if isinstance(message, Update):
            base = f"{prefix}/{message.room}"
            values = continuous_values(message)
            shape = self._shapes.get(tuple(values)) or self._shapes.setdefault(tuple(values), stream_shape(values, self.parameters))
            messages = update_messages(prefix, message)
            if self.clock is None:  # one bundle per update: the continuous values in it too
                messages += [(f"{base}/{key}", tags, args) for key, tags, args in shape.arguments(values)]
            self._send(encode_bundle(messages))
            if self.clock is not None:
                self._rooms.add(room)
                self.clock.follow(self, room, base, shape, values, self._slew(message.analysis.preset, shape), self.hop_seconds)
            return
        messages = event_messages(prefix, room, message)
        if messages:
            self._send(encode_bundle(messages))

    def _slew(self, preset_name: str, shape: StreamShape) -> np.ndarray:
        """The preset's max rates as a row of `shape`, in the stream's units per second (colours move 0..1, the
        preset's rates are RGB 0-255); NaN where a value has none."""
        key = (preset_name, shape)
        if key not in self._slews:
            preset = self.presets[preset_name] if preset_name in self.presets else None
            rates: dict[str, float | None] = dict.fromkeys((k for k, *_ in shape.spec), None)
            for m in preset.mappings if preset else ():
                r = preset.max_rate(m)  # type: ignore[union-attr]
                if f"effects/{m.parameter.name}" in rates and r is not None:
                    rates[f"effects/{m.parameter.name}"] = r / 255.0 if m.parameter.type == "colour" else r
            self._slews[key] = shape.row(rates)
        return self._slews[key]

    def close(self) -> None:
        if self.clock is not None:
            if self._own_clock:
                self.clock.close()
            else:
                self.clock.drop_sender(self)
        self._rooms.clear()
        if self._resolving is not None:
            self._resolving.cancel()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ---------------------------------------------------------------------------------------- UDP

    def _send(self, data: bytes | memoryview) -> None:
        sock = self._sock
        if sock is None:
            self._resolve()
            self._failed("not resolved yet" if self._resolving is not None else "name not resolved")
            return
        try:
            sock.send(data)
        except OSError as e:  # ConnectionRefusedError (ICMP port unreachable), BlockingIOError (buffer full), ...
            self._failed(e.strerror or type(e).__name__)
            return
        self._sent.n += 1

    def _failed(self, reason: str) -> None:
        self._errors.n += 1
        now = time.monotonic()
        if now - self._last_log >= ERROR_LOG_SECONDS:
            self._last_log = now
            log.warning("OSC target %s: send failed (%s); further failures are counted, logged once a minute",
                        self.settings.name, reason)

    def _resolve(self) -> None:
        """Start resolving the host off the loop (at most one attempt in flight; a failure waits a minute)."""
        if self._resolving is not None or time.monotonic() < self._retry_at:
            return
        self._resolving = asyncio.get_running_loop().create_task(self._connect())

    async def start(self) -> None:
        """Resolve the name before the first room needs it (the server's start-up; a failure is retried later)."""
        if self._sock is None and self._resolving is None:
            self._resolving = asyncio.get_running_loop().create_task(self._connect())
        if self._resolving is not None:
            await asyncio.wait([self._resolving], timeout=RESOLVE_WAIT_SECONDS)

    def _open(self, info: tuple[Any, ...]) -> None:
        family, kind, proto, _, address = info
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        sock.connect(address)  # UDP: no packet; the kernel then reports ICMP errors for this address
        self._sock = sock

    async def _connect(self) -> None:
        s = self.settings
        try:
            self._open((await asyncio.get_running_loop().getaddrinfo(s.host, s.port, type=socket.SOCK_DGRAM))[0])
        except (OSError, IndexError) as e:
            self._retry_at = time.monotonic() + RESOLVE_RETRY_SECONDS
            self._failed(f"cannot resolve {s.host!r}: {getattr(e, 'strerror', None) or e}")
        finally:
            self._resolving = None


class OscOutputs:
    """Every OSC target of a server; `sinks_for(room)` the ones whose patterns match the room. Targets of one
    rate_hz share one StreamClock."""

    def __init__(self, targets: Sequence[OscTarget] = ()) -> None:
        self.targets = list(targets)

    @classmethod
    def from_settings(
        cls, settings: Sequence[OscTargetSettings], presets: Presets, hop_seconds: float, metrics: Any = None,
    ) -> OscOutputs:
        clocks = {rate: StreamClock(rate) for rate in {t.rate_hz for t in settings if t.rate_hz > 0}}
        return cls([OscTarget(t, presets, hop_seconds, metrics, clocks.get(t.rate_hz)) for t in settings])

    def sinks_for(self, room: str) -> list[OscTarget]:
        return [t for t in self.targets if t.settings.matches(room)]

    async def start(self) -> None:
        await asyncio.gather(*(t.start() for t in self.targets))

    def close(self) -> None:
        clocks = {id(t.clock): t.clock for t in self.targets if t.clock is not None}
        for t in self.targets:
            t.close()
        for clock in clocks.values():
            clock.close()

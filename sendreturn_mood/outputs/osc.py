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

Encoding uses python-osc's own OSC type writers (`pythonosc.parsing.osc_types`); python-osc's message and bundle
builders re-parse every datagram they build (about 0.9 ms for a bundle of 20 messages, measured), which at 30 Hz
for hundreds of rooms would cost more than the rooms themselves.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pythonosc.parsing import osc_types

from ..config import ConfigError, OscTargetSettings, Settings, as_dict
from ..room.effects import Parameter, Presets, approach, parse_colour
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


def value_elements(base: str, values: Mapping[str, Value], parameters: Mapping[str, Parameter]) -> list[bytes]:
    """Continuous values as encoded bundle elements (the 30 Hz stream's whole work, so no message tuples in
    between): a float as `f` (an effect also as `/norm`, 0..1 of its range), a colour as `fff` (0..1) and as `/rgba`
    (OSC's colour type, alpha 255)."""
    out: list[bytes] = []
    write_float = osc_types.write_float
    for key, v in values.items():
        if isinstance(v, tuple):
            head, rgba_head = _value_heads(base, key, "colour")
            out += (head, write_float(v[0]), write_float(v[1]), write_float(v[2]), rgba_head, osc_types.write_rgba(rgba(v)))
            continue
        p = parameters.get(key[len("effects/"):]) if key.startswith("effects/") else None
        if p is not None and p.type == "float":
            head, norm_head = _value_heads(base, key, "norm")
            out += (head, write_float(v), norm_head, write_float(min(1.0, max(0.0, (v - p.low) / (p.high - p.low)))))
        else:
            out += (_value_heads(base, key, "float")[0], write_float(v))
    return out


@functools.lru_cache(maxsize=HEAD_CACHE_SIZE)
def _value_heads(base: str, key: str, kind: str) -> tuple[bytes, bytes]:
    """A continuous value's encoded element heads: its own, and its `/norm` (kind "norm") or `/rgba` ("colour")."""
    address = f"{base}/{key}"
    if kind == "colour":
        return _head(address, "fff"), _head(f"{address}/rgba", "r")
    return _head(address, "f"), _head(f"{address}/norm", "f") if kind == "norm" else b""


def rgba(rgb: Sequence[float]) -> int:
    """0..1 RGB -> OSC's 32-bit colour (RGBA, alpha 255)."""
    r, g, b = (int(round(min(1.0, max(0.0, c)) * 255)) for c in rgb)
    return (r << 24) | (g << 16) | (b << 8) | 0xFF


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
    """A message's address and type tag string, encoded once: the same few hundred addresses go out at 30 Hz. For
    fixed-size arguments, with the bundle element's size in front (the element is then this + the arguments)."""
    head = osc_types.write_string(address) + osc_types.write_string("," + tags)
    return osc_types.write_int(len(head) + FIXED_SIZE[tags]) + head if tags in FIXED_SIZE else head


def _args(tags: str, args: Sequence[Any]) -> bytes:
    return b"".join(_WRITERS[t](a) for t, a in zip(tags, args))


def encode_message(address: str, tags: str, args: Sequence[Any]) -> bytes:
    head = _head(address, tags)
    return (head[4:] if tags in FIXED_SIZE else head) + _args(tags, args)


def encode_bundle(messages: Sequence[Message], elements: Sequence[bytes] = ()) -> bytes:
    """One OSC bundle (time tag: immediately) holding the messages, in order, then the already encoded `elements`."""
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
    parts.extend(elements)
    return b"".join(parts)


# ------------------------------------------------------------------------------------------------ sending


@dataclass
class _Stream:
    """A room's interpolated values for one rate_hz target."""

    current: dict[str, Value]
    target: dict[str, Value]
    rates: dict[str, float]  # units per second each value moves at


class OscTarget:
    """One OSC destination as a sink of every room it matches (`send`/`room_closed`, see rooms.Sink)."""

    def __init__(
        self, settings: OscTargetSettings, presets: Presets, hop_seconds: float, metrics: Any = None,
    ) -> None:
        self.settings = settings
        self.presets = presets
        self.parameters = {p.name: p for p in presets.parameters}
        self.hop_seconds = max(1e-3, float(hop_seconds))
        self.metrics = metrics
        self.sent = 0
        self.errors = 0
        self._sock: socket.socket | None = None
        self._resolving: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._last_log = -math.inf
        self._streams: dict[str, _Stream] = {}
        self._ticker: asyncio.TimerHandle | None = None
        try:  # an address needs no lookup: ready at once (AI_NUMERICHOST never touches the network)
            self._open(socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)[0])
        except OSError:
            pass  # a name: resolved by start(), or on the first send
        self._tick_time = 0.0  # loop time of the last tick
        self._next_tick = 0.0  # loop time the next tick is due

    # ---------------------------------------------------------------------------------------- sink

    def send(self, room: Room, out: Outgoing) -> None:
        self.deliver(room.name, out.message)

    def room_closed(self, room: Room) -> None:
        self._streams.pop(room.name, None)

    def deliver(self, room: str, message: Update | Mapping[str, Any]) -> None:
        """One broadcast of `room` (an Update, or a protocol message) -> its bundle, sent now."""
        prefix = self.settings.prefix
        if isinstance(message, Update):
            streaming = self.settings.rate_hz > 0
            values = () if streaming else value_elements(f"{prefix}/{message.room}", continuous_values(message), self.parameters)
            self._send(encode_bundle(update_messages(prefix, message), values))
            if streaming:
                self._follow(room, message)
            return
        messages = event_messages(prefix, room, message)
        if messages:
            self._send(encode_bundle(messages))

    # ---------------------------------------------------------------------------------------- rate_hz

    def _follow(self, room: str, update: Update) -> None:
        """A new update for the stream: its values become the targets, approached at the preset's slew."""
        target = continuous_values(update)
        stream = self._streams.get(room)
        if stream is None or stream.current.keys() != target.keys():
            stream = self._streams[room] = _Stream(dict(target), target, {})
            self._send_values(room, stream.current)  # the first values go out at once, as they are
        stream.target = target
        stream.rates = self._rates(update.analysis.preset, stream.current, target)
        if self._ticker is None:
            loop = asyncio.get_running_loop()
            self._tick_time = loop.time()
            self._next_tick = self._tick_time + 1.0 / self.settings.rate_hz
            self._ticker = loop.call_at(self._next_tick, self._tick)

    def _rates(self, preset_name: str, current: Mapping[str, Value], target: Mapping[str, Value]) -> dict[str, float]:
        preset = self.presets[preset_name] if preset_name in self.presets else None
        # the preset's max_rate is in the parameter's units (RGB 0-255 for colours, which the stream sends as 0..1)
        slew = {
            m.parameter.name: None if (r := preset.max_rate(m)) is None else r / 255.0 if m.parameter.type == "colour" else r
            for m in preset.mappings
        } if preset else {}
        rates = {}
        for key, v in target.items():
            rate = slew.get(key[len("effects/"):]) if key.startswith("effects/") else None
            if rate is None:  # no slew of its own: linear over one hop
                rate = _distance(current[key], v) / self.hop_seconds
            rates[key] = rate
        return rates

    def _tick(self) -> None:
        """Every 1/rate_hz s while the target has rooms: step every room's values and send them."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        dt = now - self._tick_time
        self._tick_time = now
        if not self._streams:
            self._ticker = None
            return
        for room, stream in self._streams.items():
            for key, target in stream.target.items():
                stream.current[key] = approach(stream.current[key], target, stream.rates[key] * dt)
            self._send_values(room, stream.current)
        # on a fixed grid (no drift from the callback's own lateness); ticks missed by a busy loop are skipped
        period = 1.0 / self.settings.rate_hz
        self._next_tick = max(self._next_tick + period, now + period / 2)
        self._ticker = loop.call_at(self._next_tick, self._tick)

    def _send_values(self, room: str, values: Mapping[str, Value]) -> None:
        base = f"{self.settings.prefix}/{room}"
        self._send(encode_bundle((), value_elements(base, values, self.parameters)))

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._resolving is not None:
            self._resolving.cancel()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._streams.clear()

    # ---------------------------------------------------------------------------------------- UDP

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            self._resolve()
            self._failed("not resolved yet" if self._resolving is not None else "name not resolved")
            return
        try:
            self._sock.send(data)
        except OSError as e:  # ConnectionRefusedError (ICMP port unreachable), BlockingIOError (buffer full), ...
            self._failed(e.strerror or type(e).__name__)
            return
        self.sent += 1
        if self.metrics is not None:
            self.metrics.osc_bundles.inc(target=self.settings.name)

    def _failed(self, reason: str) -> None:
        self.errors += 1
        if self.metrics is not None:
            self.metrics.osc_errors.inc(target=self.settings.name)
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


def _distance(a: Value, b: Value) -> float:
    if isinstance(a, tuple):
        return max(abs(x - y) for x, y in zip(a, b))  # type: ignore[arg-type]
    return abs(a - b)  # type: ignore[operator]


@dataclass
class OscOutputs:
    """Every OSC target of a server; `sinks_for(room)` the ones whose patterns match the room."""

    targets: list[OscTarget] = field(default_factory=list)

    def sinks_for(self, room: str) -> list[OscTarget]:
        return [t for t in self.targets if t.settings.matches(room)]

    async def start(self) -> None:
        await asyncio.gather(*(t.start() for t in self.targets))

    def close(self) -> None:
        for t in self.targets:
            t.close()

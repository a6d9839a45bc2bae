"""Configuration: one YAML file, every key defaulted by the shipped `default_config.yaml`, CLI flags on top, read once
into frozen, typed settings (`Settings`: one dataclass per section).

The defaults live in exactly one place (the YAML beside this module, with a comment per key), so `python -m
sendreturn_mood config` prints what the server really uses and a user's file only needs the keys it changes. The
dataclasses below say each key's type; reading checks every value against it, so read sites use attributes and never
cast. Unknown keys and wrong types are refused all at once, each with the file, the key and the reason (an unknown
key with the nearest known one): a typo must not silently fall back to a default.

To add a section: a frozen dataclass here, one field for it in `Settings`, its keys with their defaults and comments
in default_config.yaml (a test checks that the two list the same keys). A range check goes in the section's
`problems()`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import fnmatch
import os
import re
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import SendReturnError

DEFAULT_CONFIG_TEXT = resources.files("sendreturn_mood").joinpath("default_config.yaml").read_text()
DEFAULTS: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_TEXT)

EVENT_LOOPS = ("auto", "uvloop", "asyncio")  # server.event_loop: auto = uvloop when installed
TRACK_FEATURES = ("auto", "embedding", "logmel")  # track_detection.feature: auto = the embedding when the model has one


class ConfigError(SendReturnError, ValueError):
    """A configuration file or value the server cannot use."""


# ---------------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ServerAuthSettings:
    secret: str | None
    secret_env: str | None
    issuer: str
    audience: str
    leeway_seconds: float
    close_at_expiry: bool
    max_ttl_seconds: float
    reserve_seconds: float
    revoked: tuple[str, ...]


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    max_connections: int
    max_rooms: int
    max_message_bytes: int
    auth_tokens: tuple[str, ...]
    auth: ServerAuthSettings
    send_queue_size: int
    send_queue_bytes: int
    allowed_origins: tuple[str, ...]
    allow_localhost_origins: bool
    allowed_hosts: tuple[str, ...]
    max_connections_per_address: int
    max_rooms_per_address: int
    room_creations_per_minute: float
    http_requests_per_second: float
    ping_interval_seconds: float | None
    ping_timeout_seconds: float | None
    rate_limit_factor: float
    rate_limit_burst_seconds: float
    clock_check_seconds: float | None
    shutdown_timeout_seconds: float
    workers: int
    event_loop: str
    reuse_port: bool
    metrics_port: int | None

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.port <= 65535:
            out.append("server.port must be in 0..65535")
        mp = self.metrics_port
        if mp is not None and not (1 <= mp <= 65535 and mp != self.port):
            out.append(f"server.metrics_port must be a port in 1..65535 other than server.port, got {mp!r}")
        if self.workers < 1:
            out.append("server.workers must be >= 1")
        if self.event_loop not in EVENT_LOOPS:
            out.append(f"server.event_loop must be one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}")
        return out


@dataclass(frozen=True)
class BrokerSettings:
    url: str | None
    prefix: str
    lease_seconds: float
    connect_timeout_seconds: float
    max_pending: int
    reconnect_max_seconds: float

    @property
    def in_memory(self) -> bool:
        return self.url in (None, "", "memory")

    def problems(self) -> list[str]:
        out = []
        if not 0.5 <= self.lease_seconds <= 600:
            out.append(f"broker.lease_seconds must be in 0.5..600, got {self.lease_seconds}")
        if self.max_pending < 1:
            out.append("broker.max_pending must be >= 1")
        return out


@dataclass(frozen=True)
class ModelSettings:
    path: str | None
    threads: int


@dataclass(frozen=True)
class AnalysisSettings:
    window_seconds: float | None
    hop_seconds: float
    min_seconds: float
    max_batch: int
    batch_tick_ms: float
    silence_db: float | None

    def problems(self) -> list[str]:
        out = []
        if not 0.1 <= self.hop_seconds <= 30:
            out.append(f"analysis.hop_seconds must be in 0.1..30, got {self.hop_seconds}")
        if self.window_seconds is not None and not 0.2 <= self.window_seconds <= 60:
            out.append(f"analysis.window_seconds must be in 0.2..60, got {self.window_seconds}")
        if self.silence_db is not None and not -120 <= self.silence_db <= 0:
            out.append(f"analysis.silence_db must be in -120..0 (dB re full scale) or null, got {self.silence_db}")
        if self.max_batch < 1:
            out.append("analysis.max_batch must be >= 1")
        if not 0 <= self.batch_tick_ms <= 100:
            out.append(f"analysis.batch_tick_ms must be in 0..100, got {self.batch_tick_ms}")
        return out


@dataclass(frozen=True)
class SmoothingSettings:
    time_constant_seconds: float
    hysteresis: float

    def problems(self) -> list[str]:
        out = []
        if self.time_constant_seconds < 0:
            out.append("smoothing.time_constant_seconds must be >= 0")
        if not 0 <= self.hysteresis < 1:
            out.append("smoothing.hysteresis must be in [0, 1)")
        return out


@dataclass(frozen=True)
class TrackDetectionSettings:
    enabled: bool
    sensitivity: float
    min_track_seconds: float
    feature: str

    def problems(self) -> list[str]:
        out = []
        if not 0.0 <= self.sensitivity <= 1.0:
            out.append(f"track_detection.sensitivity must be in [0, 1], got {self.sensitivity}")
        if not 0.0 <= self.min_track_seconds <= 3600.0:
            out.append(f"track_detection.min_track_seconds must be in 0..3600, got {self.min_track_seconds}")
        if self.feature not in TRACK_FEATURES:
            out.append(f"track_detection.feature must be one of {', '.join(TRACK_FEATURES)}, got {self.feature!r}")
        return out


@dataclass(frozen=True)
class PreparedSettings:
    max_tracks: int
    max_tracks_per_room: int
    ttl_seconds: float
    max_track_seconds: float
    lead_seconds: float

    def problems(self) -> list[str]:
        out = []
        if self.max_tracks < 1 or self.max_tracks_per_room < 1:
            out.append("prepared.max_tracks and prepared.max_tracks_per_room must be >= 1")
        if self.ttl_seconds < 1:
            out.append(f"prepared.ttl_seconds must be >= 1, got {self.ttl_seconds}")
        if not 1 <= self.max_track_seconds <= 3600:
            out.append(f"prepared.max_track_seconds must be in 1..3600, got {self.max_track_seconds}")
        if not 0 <= self.lead_seconds <= 10:
            out.append(f"prepared.lead_seconds must be in 0..10, got {self.lead_seconds}")
        return out


OSC_PREFIX = "/sendreturn"  # the default OSC address prefix (outputs/osc.py)
OSC_PREFIX_RE = re.compile(r"^(/[A-Za-z0-9_.\-]+)+$")


@dataclass(frozen=True)
class OscTargetSettings:
    """One OSC destination (an item of outputs.osc.targets): where, which rooms (names or globs), under which
    address prefix, at which rate (0: one bundle per update)."""

    host: str
    port: int
    rooms: tuple[str, ...] = ("*",)
    prefix: str = OSC_PREFIX
    rate_hz: float = 0.0

    @property
    def name(self) -> str:
        """The target in metrics and logs."""
        return f"{self.host}:{self.port}"

    def matches(self, room: str) -> bool:
        return any(fnmatch.fnmatchcase(room, pattern) for pattern in self.rooms)

    def problems(self, where: str, max_rate_hz: float) -> list[str]:
        out = []
        if not self.host or len(self.host) > 253:
            out.append(f"{where}.host: a host name or address is required")
        if not 1 <= self.port <= 65535:
            out.append(f"{where}.port must be a port in 1..65535, got {self.port}")
        if not self.rooms or not all(self.rooms):
            out.append(f"{where}.rooms must be a list of room names or globs (e.g. [lobby, stage-*])")
        if not OSC_PREFIX_RE.fullmatch(self.prefix):
            out.append(f"{where}.prefix must be an OSC address such as /sendreturn (segments of A-Z a-z 0-9 _ . -), got {self.prefix!r}")
        if not 0 <= self.rate_hz <= max_rate_hz:
            out.append(f"{where}.rate_hz must be 0 (one bundle per update) up to outputs.osc.max_rate_hz = {max_rate_hz:g}, got {self.rate_hz:g}")
        return out


@dataclass(frozen=True)
class OscOutputSettings:
    targets: tuple[OscTargetSettings, ...]
    max_targets: int
    max_rate_hz: float

    def problems(self) -> list[str]:
        out = [p for i, t in enumerate(self.targets) for p in t.problems(f"outputs.osc.targets[{i}]", self.max_rate_hz)]
        if len(self.targets) > self.max_targets:
            out.append(f"{len(self.targets)} OSC targets configured; outputs.osc.max_targets allows {self.max_targets}")
        return out


@dataclass(frozen=True)
class OutputsSettings:
    osc: OscOutputSettings

    def problems(self) -> list[str]:
        return self.osc.problems()


@dataclass(frozen=True)
class AnalyzeSettings:
    """POST /v1/analyze (server/analysis.py)."""

    enabled: bool
    max_bytes: int
    max_seconds: float
    max_concurrent: int
    workers: int
    timeout_seconds: float
    upload_timeout_seconds: float

    def problems(self) -> list[str]:
        out = []
        for key in ("max_bytes", "max_seconds", "max_concurrent", "timeout_seconds", "upload_timeout_seconds"):
            if getattr(self, key) <= 0:
                out.append(f"analyze.{key} must be > 0, got {getattr(self, key)}")
        if self.workers < 0:
            out.append(f"analyze.workers must be >= 0 (0: one per core but one), got {self.workers}")
        return out

    @property
    def worker_processes(self) -> int:
        """`workers`, with 0 meaning one per core but one (at least one)."""
        return self.workers or max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class EffectsSettings:
    file: str | None
    default_preset: str


@dataclass(frozen=True)
class LoggingSettings:
    level: str


@dataclass(frozen=True)
class Settings:
    """The whole configuration, one attribute per section of default_config.yaml."""

    server: ServerSettings
    broker: BrokerSettings
    model: ModelSettings
    analysis: AnalysisSettings
    smoothing: SmoothingSettings
    track_detection: TrackDetectionSettings
    prepared: PreparedSettings
    outputs: OutputsSettings
    analyze: AnalyzeSettings
    effects: EffectsSettings
    logging: LoggingSettings

    def problems(self) -> list[str]:
        out = []
        if self.server.workers > 1 and self.broker.in_memory:
            out.append(
                f"server.workers = {self.server.workers} needs a broker: processes that share a port share its rooms, "
                "and without one a room's source and listeners could land on different processes and never meet. "
                "Set broker.url (e.g. --broker redis://127.0.0.1:6379/0) or use one worker"
            )
        return out

    def replace(self, **dotted: Any) -> "Settings":
        """A copy with some keys changed, checked like a file: settings.replace(**{"server.port": 0})."""
        return _read(*_merged(as_dict(self), [("replace", _nest(dotted))]))

    def as_dict(self) -> dict[str, Any]:
        return as_dict(self)


# ---------------------------------------------------------------------------------------------------- reading


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Defaults <- YAML file <- overrides (dotted keys, e.g. {"server.port": 0}; None values are skipped).
    ConfigError listing every problem found."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        layers.append((str(path), data))
    layers.append(("command line", _nest({k: v for k, v in (overrides or {}).items() if v is not None})))
    return _read(*_merged(copy.deepcopy(DEFAULTS), layers))


def as_dict(settings: Any) -> dict[str, Any]:
    """Settings (or a section) as plain YAML-able data (tuples as lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(settings))


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        cur = nested
        *parents, last = key.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = value
    return nested


def _merged(base: dict[str, Any], layers: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, str]]:
    """`base` with each layer's values on top, and where each set key came from (dotted key -> file or "command
    line"); ConfigError naming every unknown key of every layer."""
    problems: list[str] = []
    origins: dict[str, str] = {}
    for source, data in layers:
        _merge(base, data, source, "", problems, origins)
    if problems:
        raise ConfigError(_listing(problems))
    return base, origins


def _merge(
    base: dict[str, Any], override: dict[str, Any], source: str, prefix: str, problems: list[str], origins: dict[str, str]
) -> None:
    for key, value in override.items():
        where = f"{prefix}{key}"
        if key not in base:
            close = difflib.get_close_matches(str(key), [str(k) for k in base], n=1)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"known: {', '.join(sorted(base))}"
            problems.append(f"{source}: unknown key '{where}' ({hint})")
        elif isinstance(base[key], dict):
            if isinstance(value, dict):
                _merge(base[key], value, source, where + ".", problems, origins)
            else:
                problems.append(f"{source}: '{where}' must be a mapping")
        else:
            base[key] = value
            origins[where] = source


def _sourced(problem: str, origins: dict[str, str]) -> str:
    """A type problem ("'server.port' must be ...") with the file or command line the value came from."""
    key = problem[1:].partition("'")[0].partition("[")[0] if problem.startswith("'") else ""
    return f"{origins[key]}: {problem}" if key in origins else problem


def _read(data: dict[str, Any], origins: dict[str, str]) -> Settings:
    problems: list[str] = []
    settings = _build(Settings, data, "", problems)
    problems = [_sourced(p, origins) for p in problems]
    if not problems:
        problems = [p for section in (settings, *vars(settings).values()) for p in _problems(section)]
    if problems:
        raise ConfigError(_listing(problems))
    return settings


def _problems(section: Any) -> list[str]:
    return section.problems() if hasattr(section, "problems") else []


def _listing(problems: list[str]) -> str:
    return problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems)


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        where, kind, value = f"{prefix}{f.name}", hints[f.name], data[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = _build(kind, value, where + ".", problems)  # type: ignore[arg-type]
            continue
        item = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else None
        if item is not None and dataclasses.is_dataclass(item):
            values[f.name] = _build_items(item, value, where, problems)
            continue
        try:
            values[f.name] = _typed(kind, value)
        except TypeError:
            problems.append(f"'{where}' must be {_kind_name(kind)}, got {value!r}")
    return None if problems else cls(**values)


def _build_items(cls: type, value: Any, where: str, problems: list[str]) -> tuple[Any, ...]:
    """A list of mappings -> a tuple of `cls` (missing keys take the field's default)."""
    if not isinstance(value, (list, tuple)):
        problems.append(f"'{where}' must be a list of mappings")
        return ()
    items = []
    for i, raw in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"'{at}' must be a mapping, got {raw!r}")
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in raw if k not in fields]
        missing = [k for k, f in fields.items() if k not in raw and f.default is dataclasses.MISSING]
        if unknown or missing:
            problems += [f"{at}: unknown key '{k}' (known: {', '.join(fields)})" for k in unknown]
            problems += [f"{at}: '{k}' is required" for k in missing]
            continue
        data = {k: raw.get(k, f.default) for k, f in fields.items()}
        built = _build(cls, data, at + ".", problems)
        if built is not None:
            items.append(built)
    return tuple(items)


def _typed(kind: Any, value: Any) -> Any:
    """`value` as `kind` (int, float, bool, str, tuple[str, ...], X | None); TypeError if it is not one."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(inner, value)
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return tuple(_typed(args[0], v) for v in value)
    if isinstance(value, bool) != (kind is bool):
        raise TypeError
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind):
        raise TypeError
    return value


def _kind_name(kind: Any) -> str:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _kind_name(a) for a in args)
    if typing.get_origin(kind) is tuple:
        return f"a list of {_kind_name(args[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, str(kind))

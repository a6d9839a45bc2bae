"""Configuration: one YAML file, every key defaulted by the shipped `default_config.yaml`, CLI flags on top.

The defaults live in exactly one place (the YAML beside this module), so `python -m sendreturn_mood config` prints
what the server really uses and a user's file only needs the keys it changes. Unknown keys and wrong types are
refused with the file, the key and the reason: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .server.eventloop import LOOPS
from .room.trackchange import DetectorSettings, TrackChangeError

DEFAULT_CONFIG_TEXT = resources.files("sendreturn_mood").joinpath("default_config.yaml").read_text()
DEFAULTS: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_TEXT)


class ConfigError(ValueError):
    """A configuration file or value the server cannot use."""


def _merge(base: dict[str, Any], override: dict[str, Any], source: str, prefix: str = "") -> None:
    for key, value in override.items():
        where = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{source}: unknown key '{where}' (known: {', '.join(sorted(base))})")
        default = base[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{where}' must be a mapping")
            _merge(default, value, source, where + ".")
            continue
        if default is not None and value is not None and not _same_kind(default, value):
            raise ConfigError(f"{source}: '{where}' must be {type(default).__name__}, got {value!r}")
        base[key] = value


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults <- YAML file <- overrides (dotted keys, e.g. {"server.port": 0}). Returns a fresh nested dict."""
    config = copy.deepcopy(DEFAULTS)
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
        _merge(config, data, str(path))
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        nested: dict[str, Any] = {}
        cur = nested
        *parents, last = dotted.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = value
        _merge(config, nested, "command line")
    _check(config)
    return config


def _check(c: dict[str, Any]) -> None:
    a, s = c["analysis"], c["smoothing"]
    if not 0.1 <= a["hop_seconds"] <= 30:
        raise ConfigError(f"analysis.hop_seconds must be in 0.1..30, got {a['hop_seconds']}")
    if a["window_seconds"] is not None and not 0.2 <= a["window_seconds"] <= 60:
        raise ConfigError(f"analysis.window_seconds must be in 0.2..60, got {a['window_seconds']}")
    if a["silence_db"] is not None and not -120 <= a["silence_db"] <= 0:
        raise ConfigError(f"analysis.silence_db must be in -120..0 (dB re full scale) or null, got {a['silence_db']}")
    if a["max_batch"] < 1:
        raise ConfigError("analysis.max_batch must be >= 1")
    if not 0 <= a["batch_tick_ms"] <= 100:
        raise ConfigError(f"analysis.batch_tick_ms must be in 0..100, got {a['batch_tick_ms']}")
    if s["time_constant_seconds"] < 0:
        raise ConfigError("smoothing.time_constant_seconds must be >= 0")
    if not 0 <= s["hysteresis"] < 1:
        raise ConfigError("smoothing.hysteresis must be in [0, 1)")
    if c["server"]["event_loop"] not in LOOPS:
        raise ConfigError(f"server.event_loop must be one of {', '.join(LOOPS)}, got {c['server']['event_loop']!r}")
    try:
        DetectorSettings.from_config(c)
    except TrackChangeError as e:
        raise ConfigError(str(e)) from None
    if not 0 <= c["server"]["port"] <= 65535:
        raise ConfigError("server.port must be in 0..65535")
    b = c["broker"]
    mp = c["server"]["metrics_port"]
    if mp is not None and not (isinstance(mp, int) and 1 <= mp <= 65535 and mp != c["server"]["port"]):
        raise ConfigError(f"server.metrics_port must be a port in 1..65535 other than server.port, got {mp!r}")
    if c["server"]["workers"] < 1:
        raise ConfigError("server.workers must be >= 1")
    if c["server"]["workers"] > 1 and b["url"] in (None, "", "memory"):
        raise ConfigError(
            f"server.workers = {c['server']['workers']} needs a broker: processes that share a port share its rooms, "
            "and without one a room's source and listeners could land on different processes and never meet. "
            "Set broker.url (e.g. --broker redis://127.0.0.1:6379/0) or use one worker"
        )
    pr = c["prepared"]
    if pr["max_tracks"] < 1 or pr["max_tracks_per_room"] < 1:
        raise ConfigError("prepared.max_tracks and prepared.max_tracks_per_room must be >= 1")
    if pr["ttl_seconds"] < 1:
        raise ConfigError(f"prepared.ttl_seconds must be >= 1, got {pr['ttl_seconds']}")
    if not 1 <= pr["max_track_seconds"] <= 3600:
        raise ConfigError(f"prepared.max_track_seconds must be in 1..3600, got {pr['max_track_seconds']}")
    if not 0 <= pr["lead_seconds"] <= 10:
        raise ConfigError(f"prepared.lead_seconds must be in 0..10, got {pr['lead_seconds']}")
    if not 0.5 <= b["lease_seconds"] <= 600:
        raise ConfigError(f"broker.lease_seconds must be in 0.5..600, got {b['lease_seconds']}")
    if b["max_pending"] < 1:
        raise ConfigError("broker.max_pending must be >= 1")

"""The configuration (sendreturn_mood/config.py): read once into frozen typed settings, every problem said at once."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from sendreturn_mood.config import DEFAULTS, ConfigError, Settings, load_config
from sendreturn_mood.errors import SendReturnError


def keys(cls: type, prefix: str = "") -> set[str]:
    out = set()
    for name, kind in typing.get_type_hints(cls).items():
        out |= keys(kind, f"{prefix}{name}.") if dataclasses.is_dataclass(kind) else {prefix + name}
    return out


def yaml_keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= yaml_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


def test_the_defaults_file_and_the_settings_list_the_same_keys():
    assert keys(Settings) == yaml_keys(DEFAULTS)


def test_settings_are_typed_and_frozen():
    s = load_config(None, {"server.port": 0, "analysis.hop_seconds": 2})
    assert s.server.port == 0 and isinstance(s.analysis.hop_seconds, float) and s.analysis.hop_seconds == 2.0
    assert s.server.auth_tokens == () and isinstance(s.server.allowed_origins, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.server.port = 1  # type: ignore[misc]
    assert s.replace(**{"server.port": 5}).server.port == 5 and s.server.port == 0


def test_every_unknown_key_is_refused_at_once_with_the_nearest_known_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"server": {"prot": 1, "max_conections": 3}, "smoothin": {}, "analysis": {"hop_seconds": 2}}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = str(e.value)
    assert "3 problems" in text
    assert f"{path}: unknown key 'server.prot' (did you mean 'server.port'?)" in text
    assert "unknown key 'server.max_conections' (did you mean 'server.max_connections'?)" in text
    assert "unknown key 'smoothin' (did you mean 'smoothing'?)" in text
    assert isinstance(e.value, SendReturnError)


def test_wrong_types_and_ranges_are_refused_all_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"server.port": "x", "server.reuse_port": 1, "analysis.max_batch": 2.5})
    text = str(e.value)
    assert "command line: 'server.port' must be an integer, got 'x'" in text
    assert "'server.reuse_port' must be true or false, got 1" in text
    assert "'analysis.max_batch' must be an integer, got 2.5" in text
    with pytest.raises(ConfigError) as e:
        load_config(None, {"analysis.hop_seconds": 100, "smoothing.hysteresis": 2})
    assert "analysis.hop_seconds must be in 0.1..30" in str(e.value) and "smoothing.hysteresis" in str(e.value)


def test_workers_need_a_broker():
    with pytest.raises(ConfigError, match="needs a broker"):
        load_config(None, {"server.workers": 2})
    assert load_config(None, {"server.workers": 2, "broker.url": "redis://127.0.0.1:6379/0"}).server.workers == 2

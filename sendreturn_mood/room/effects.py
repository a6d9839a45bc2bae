"""Effect presets: a YAML mapping from (smoothed mood probabilities, valence, arousal) to named effect parameters.

A SEND/RETURN room does not want mood labels, it wants to know how much reverb, which tint, how much fog. The mapping
is data (`effects.yaml` beside this module, or the file named by `effects.file` in the config) so that a room designer
can tune it without touching code, and it is checked completely at start-up: a typo must fail loudly with the file,
the key path and the reason (`EffectsError`), never silently produce a neutral effect on air.

File layout::

    parameters:                    # every parameter a client may receive, declared once
      reverb_mix: {type: float, range: [0, 1], neutral: 0.0, max_rate: 0.1}
      tint:       {type: colour, neutral: "#ffffff", max_rate: 60}
      fog_density: {type: float, range: [0, 1], neutral: 0.0, rest: 0.2}   # rest: the value during silence
    presets:
      default:
        description: ...
        parameters:
          reverb_mix:
            moods: {happy: 0.2, sad: 0.45}          # blended by the smoothed probabilities
            value: 0.1                               # used for moods not listed (default: the neutral value)
            arousal: {curve: smoothstep, input: [0, 1], output: [0, 0.1]}   # added on top
            max_rate: 0.05                           # units per second of stream time (null: unlimited)
      subtle: {extends: default, intensity: 0.4, rate_scale: 0.5}
      none: {description: dry}                       # parameters left out stay at their neutral value

A float parameter's target is ``sum_m p_m * moods[m]`` plus each valence/arousal term, where a term maps its input
from `input` (default [-1, 1], clamped) onto [0, 1], shapes it with the curve (linear, smoothstep, exp and log with a
`steepness`, pow with an `exponent`) and scales it onto `output` [a, b]. `intensity` then scales the distance from the
neutral value (0 = no effect, 1 = as written, >1 = exaggerated), the result is clamped to the parameter's range, and
the value may move towards it by at most `max_rate * rate_scale * dt` per update (dt in stream seconds). Colours blend
in RGB and their `max_rate` is in RGB units (0-255) per second per channel.

Rest state: while the room is silent (no audio above the silence threshold, see tracker.py) there is no mood to map,
so every parameter moves, at its preset's `max_rate`, to its declared `rest` value (default: its `neutral` value,
i.e. effects off) and stays there until music comes back; then it moves to the mood's targets again. The rest value
is the same in every preset: silence looks the same whatever the room's style.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ..errors import SendReturnError

PARAM_TYPES = ("float", "colour")
CURVES = ("linear", "smoothstep", "exp", "log", "pow")
INPUTS = ("valence", "arousal")
DEFAULT_STEEPNESS = 4.0
MAX_INTENSITY = 4.0
RESOLUTION = 1e-4  # wire values are rounded to about this fraction of the parameter's range (4 decimals on [0, 1],
# whole hertz on a 20 kHz cutoff): a cutoff in Hz would otherwise show audio-decoder noise in its 4th decimal, and
# the server and `analyze` would print different JSON for the same song

TOP_KEYS = ("version", "description", "parameters", "presets")
PARAM_KEYS = ("type", "range", "neutral", "rest", "max_rate", "unit", "description")
PRESET_KEYS = ("description", "extends", "intensity", "rate_scale", "parameters")
MAPPING_KEYS = ("value", "moods", "valence", "arousal", "max_rate")
TERM_KEYS = ("curve", "input", "output", "exponent", "steepness")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
COLOUR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")

RGB = tuple[float, float, float]


class EffectsError(SendReturnError, ValueError):
    """A preset file the server cannot use; the message reads "<file>: <key path>: <reason>"."""


def shipped_presets_path() -> Path:
    return Path(str(resources.files("sendreturn_mood.room").joinpath("effects.yaml")))


# ----------------------------------------------------------------------------------------------------- curves


def shape(curve: str, t: float, k: float) -> float:
    """A curve on [0, 1] -> [0, 1] with shape(0) = 0 and shape(1) = 1 (k: exponent or steepness)."""
    t = min(1.0, max(0.0, t))
    if curve == "linear":
        return t
    if curve == "smoothstep":
        return t * t * (3.0 - 2.0 * t)
    if curve == "exp":  # slow start, fast end
        return math.expm1(k * t) / math.expm1(k)
    if curve == "log":  # fast start, slow end
        return math.log1p(k * t) / math.log1p(k)
    if curve == "pow":
        return t**k
    raise ValueError(f"unknown curve {curve!r}")


def parse_colour(text: str) -> RGB:
    return (float(int(text[1:3], 16)), float(int(text[3:5], 16)), float(int(text[5:7], 16)))


def format_colour(rgb: Iterable[float]) -> str:
    return "#" + "".join(f"{int(round(min(255.0, max(0.0, c)))):02x}" for c in rgb)


RGB_SUFFIX = "_rgb"  # a colour parameter `tint` also goes on the wire as `tint_rgb`: [r, g, b], each 0..1


def with_rgb(effects: dict[str, float | str]) -> dict[str, Any]:
    """The wire's effects: every colour ("#rrggbb") followed by `{name}_rgb`, the same colour as three 0..1 floats
    (4 decimals), for engines that read numbers only (a Material Parameter Collection, a Blueprint's JSON reader).
    Read from the hex string itself, so both always say the same colour."""
    out: dict[str, Any] = {}
    for name, value in effects.items():
        out[name] = value
        if isinstance(value, str):
            out[name + RGB_SUFFIX] = [round(c / 255.0, 4) for c in parse_colour(value)]
    return out


def without_rgb(effects: dict[str, Any]) -> dict[str, float | str]:
    """The wire's effects back to the parameters alone (with_rgb's NAME_rgb entries are a view of NAME)."""
    return {name: value for name, value in effects.items() if not isinstance(value, list)}


# ------------------------------------------------------------------------------------------------ compiled form


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # "float" | "colour"
    neutral: float | RGB
    low: float = 0.0  # range (floats only)
    high: float = 0.0
    max_rate: float | None = None
    unit: str = ""
    description: str = ""
    rest: float | RGB | None = None  # the value during silence; None: the neutral value

    @property
    def rest_value(self) -> float | RGB:
        return self.neutral if self.rest is None else self.rest

    @functools.cached_property
    def decimals(self) -> int:
        """Decimals on the wire: about RESOLUTION of the range (colours are whole RGB units anyway). Cached: it is
        read for every parameter of every update."""
        if self.type == "colour":
            return 0
        return max(0, math.ceil(-math.log10(RESOLUTION * (self.high - self.low))))


@dataclass(frozen=True)
class Term:
    """A continuous contribution from valence or arousal."""

    input: str
    curve: str
    lo: float
    hi: float
    out0: float
    out1: float
    k: float

    def __call__(self, x: float) -> float:
        return self.out0 + (self.out1 - self.out0) * shape(self.curve, (x - self.lo) / (self.hi - self.lo), self.k)


@dataclass(frozen=True)
class ParamMapping:
    """How one preset sets one parameter."""

    parameter: Parameter
    value: float | RGB  # fallback for moods not listed (the neutral value unless given)
    moods: tuple[tuple[str, float | RGB], ...] = ()
    terms: tuple[Term, ...] = ()
    max_rate: float | None = None
    where: str = ""  # key path, for messages about moods checked later

    def __post_init__(self) -> None:
        object.__setattr__(self, "_table", dict(self.moods))  # frozen dataclass: a lookup table built once

    def target(self, probabilities: Mapping[str, float], valence: float, arousal: float, intensity: float) -> float | RGB:
        """The value this mapping asks for (before rate limiting). Plain loops: this runs per parameter per update."""
        p = self.parameter
        table: dict[str, Any] = self._table  # type: ignore[attr-defined]
        fallback = self.value
        total = 0.0
        if p.type == "colour":
            r = g = b = 0.0
            for label, prob in probabilities.items():
                c = table.get(label, fallback)
                total += prob
                r += prob * c[0]
                g += prob * c[1]
                b += prob * c[2]
            rgb = (r / total, g / total, b / total) if total > 0 else fallback
            n = p.neutral
            return tuple(min(255.0, max(0.0, n[i] + intensity * (rgb[i] - n[i]))) for i in range(3))  # type: ignore
        x = 0.0
        for label, prob in probabilities.items():
            total += prob
            x += prob * table.get(label, fallback)
        x = x / total if total > 0 else fallback
        for t in self.terms:
            x += t(valence if t.input == "valence" else arousal)
        x = p.neutral + intensity * (x - p.neutral)  # type: ignore[operator]
        return min(p.high, max(p.low, x))


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    intensity: float
    rate_scale: float
    mappings: tuple[ParamMapping, ...]  # one per declared parameter, in declaration order

    def targets(self, probabilities: Mapping[str, float], valence: float, arousal: float) -> dict[str, float | RGB]:
        return {m.parameter.name: m.target(probabilities, valence, arousal, self.intensity) for m in self.mappings}

    def max_rate(self, mapping: ParamMapping) -> float | None:
        return None if mapping.max_rate is None else mapping.max_rate * self.rate_scale


@dataclass(frozen=True)
class Presets:
    """All presets of one file; immutable and shared by every room."""

    file: str
    parameters: tuple[Parameter, ...]
    presets: tuple[Preset, ...]
    default: str
    _by_name: dict[str, Preset] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({p.name: p for p in self.presets})

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.presets]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Preset:
        return self._by_name[name]  # KeyError(name) for an unknown preset

    def describe(self) -> dict[str, str]:
        return {p.name: p.description for p in self.presets}

    def check_moods(self, labels: Iterable[str]) -> None:
        """Refuse presets that name moods the model does not have (EffectsError with the key path)."""
        known = list(labels)
        for preset in self.presets:
            for m in preset.mappings:
                for label, _ in m.moods:
                    if label not in known:
                        raise EffectsError(
                            f"{self.file}: {m.where}.moods.{label}: unknown mood '{label}' "
                            f"(the model's moods: {', '.join(known)})"
                        )


# ------------------------------------------------------------------------------------------------------ loading


class _Checker:
    """Validation helpers that know the file name for messages."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, where: str, reason: str) -> EffectsError:
        return EffectsError(f"{self.file}: {where}: {reason}" if where else f"{self.file}: {reason}")

    def mapping(self, value: Any, where: str, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping, got {type(value).__name__}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(where, f"keys must be strings, got {k!r}")
            if keys is not None and k not in keys:
                raise self.fail(f"{where}.{k}" if where else k, f"unknown key (known: {', '.join(keys)})")
        return value

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(where, f"must be a number, got {value!r}")
        return float(value)

    def rate(self, value: Any, where: str) -> float | None:
        if value is None:
            return None
        r = self.number(value, where)
        if r <= 0:
            raise self.fail(where, f"must be > 0 (or null for no limit), got {value!r}")
        return r

    def pair(self, value: Any, where: str) -> tuple[float, float]:
        if not isinstance(value, list) or len(value) != 2:
            raise self.fail(where, f"must be a list of two numbers, got {value!r}")
        return self.number(value[0], f"{where}[0]"), self.number(value[1], f"{where}[1]")

    def colour(self, value: Any, where: str) -> RGB:
        if not isinstance(value, str) or not COLOUR_RE.match(value):
            raise self.fail(where, f"must be a colour \"#rrggbb\", got {value!r}")
        return parse_colour(value)

    def in_range(self, value: Any, p: Parameter, where: str) -> float:
        x = self.number(value, where)
        if not p.low <= x <= p.high:
            raise self.fail(where, f"{value!r} is outside the range [{p.low:g}, {p.high:g}] of '{p.name}'")
        return x

    def text(self, value: Any, where: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(where, f"must be text, got {value!r}")
        return value


def _parameter(c: _Checker, name: str, raw: Any) -> Parameter:
    where = f"parameters.{name}"
    if not NAME_RE.match(name):
        raise c.fail(where, "parameter names are 1-64 characters of letters, digits, _ . - starting with a letter")
    d = c.mapping(raw, where, PARAM_KEYS)
    kind = d.get("type")
    if kind not in PARAM_TYPES:
        raise c.fail(f"{where}.type", f"must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    if "neutral" not in d:
        raise c.fail(f"{where}.neutral", "missing (the value when the effect is off)")
    common = dict(
        max_rate=c.rate(d.get("max_rate"), f"{where}.max_rate"),
        unit=c.text(d.get("unit"), f"{where}.unit"),
        description=c.text(d.get("description"), f"{where}.description"),
    )
    if kind == "colour":
        if "range" in d:
            raise c.fail(f"{where}.range", "colours have no range")
        rest = c.colour(d["rest"], f"{where}.rest") if d.get("rest") is not None else None
        return Parameter(name, kind, c.colour(d["neutral"], f"{where}.neutral"), rest=rest, **common)  # type: ignore[arg-type]
    if "range" not in d:
        raise c.fail(f"{where}.range", "missing ([min, max] for a float parameter)")
    low, high = c.pair(d["range"], f"{where}.range")
    if not low < high:
        raise c.fail(f"{where}.range", f"min must be below max, got {d['range']!r}")
    p = Parameter(name, kind, 0.0, low, high, **common)  # type: ignore[arg-type]
    neutral = c.in_range(d["neutral"], p, f"{where}.neutral")
    rest = c.in_range(d["rest"], p, f"{where}.rest") if d.get("rest") is not None else None
    return Parameter(name, kind, neutral, low, high, rest=rest, **common)  # type: ignore


def _term(c: _Checker, raw: Any, input_name: str, where: str) -> Term:
    d = c.mapping(raw, where, TERM_KEYS)
    curve = d.get("curve", "linear")
    if curve not in CURVES:
        raise c.fail(f"{where}.curve", f"unknown curve {curve!r} (known: {', '.join(CURVES)})")
    lo, hi = c.pair(d["input"], f"{where}.input") if "input" in d else (-1.0, 1.0)
    if not lo < hi:
        raise c.fail(f"{where}.input", f"the input range must be increasing, got {d['input']!r}")
    if "output" not in d:
        raise c.fail(f"{where}.output", "missing ([value at the input's low end, value at its high end])")
    out0, out1 = c.pair(d["output"], f"{where}.output")
    if curve == "pow":
        if "exponent" not in d:
            raise c.fail(f"{where}.exponent", "missing (the pow curve needs an exponent)")
        k = c.number(d["exponent"], f"{where}.exponent")
        if k <= 0:
            raise c.fail(f"{where}.exponent", f"must be > 0, got {d['exponent']!r}")
    elif "exponent" in d:
        raise c.fail(f"{where}.exponent", f"only the pow curve takes an exponent (this curve is {curve})")
    if curve in ("exp", "log"):
        k = c.number(d.get("steepness", DEFAULT_STEEPNESS), f"{where}.steepness")
        if k <= 0:
            raise c.fail(f"{where}.steepness", f"must be > 0, got {d['steepness']!r}")
    elif "steepness" in d:
        raise c.fail(f"{where}.steepness", f"only the exp and log curves take a steepness (this curve is {curve})")
    if curve in ("linear", "smoothstep"):
        k = 1.0
    return Term(input_name, curve, lo, hi, out0, out1, k)


def _mapping(c: _Checker, p: Parameter, raw: Any, where: str) -> ParamMapping:
    d = c.mapping(raw, where, MAPPING_KEYS)
    max_rate = c.rate(d["max_rate"], f"{where}.max_rate") if "max_rate" in d else p.max_rate
    moods_raw = c.mapping(d.get("moods"), f"{where}.moods")
    if p.type == "colour":
        for key in INPUTS:
            if key in d:
                raise c.fail(f"{where}.{key}", "valence/arousal curves apply to float parameters only")
        value = c.colour(d["value"], f"{where}.value") if "value" in d else p.neutral
        moods = tuple((m, c.colour(v, f"{where}.moods.{m}")) for m, v in moods_raw.items())
        return ParamMapping(p, value, moods, (), max_rate, where)
    value = c.in_range(d["value"], p, f"{where}.value") if "value" in d else p.neutral
    moods = tuple((m, c.in_range(v, p, f"{where}.moods.{m}")) for m, v in moods_raw.items())
    terms = tuple(_term(c, d[key], key, f"{where}.{key}") for key in INPUTS if key in d)
    return ParamMapping(p, value, moods, terms, max_rate, where)  # type: ignore[arg-type]


def parse_presets(data: Any, file: str, default: str = "default") -> Presets:
    """Validate and compile the parsed YAML of a preset file."""
    c = _Checker(file)
    top = c.mapping(data, "", TOP_KEYS)
    params_raw = c.mapping(top.get("parameters"), "parameters")
    if not params_raw:
        raise c.fail("parameters", "missing or empty (declare every effect parameter here)")
    parameters = {name: _parameter(c, name, raw) for name, raw in params_raw.items()}
    for name, p in parameters.items():
        if p.type == "colour" and name + RGB_SUFFIX in parameters:
            raise c.fail(f"parameters.{name}{RGB_SUFFIX}", f"the wire already sends colour {name!r} as {name}{RGB_SUFFIX}")
    presets_raw = c.mapping(top.get("presets"), "presets")
    if not presets_raw:
        raise c.fail("presets", "missing or empty")
    for name, raw in presets_raw.items():
        if not NAME_RE.match(name):
            raise c.fail(f"presets.{name}", "preset names are 1-64 characters of letters, digits, _ . - ")
        c.mapping(raw, f"presets.{name}", PRESET_KEYS)

    compiled: dict[str, dict[str, ParamMapping]] = {}

    def mappings_of(name: str, chain: tuple[str, ...]) -> dict[str, ParamMapping]:
        if name in compiled:
            return compiled[name]
        where = f"presets.{name}"
        d = presets_raw[name] or {}
        result: dict[str, ParamMapping] = {}
        if "extends" in d:
            parent = d["extends"]
            if not isinstance(parent, str) or parent not in presets_raw:
                raise c.fail(f"{where}.extends", f"no preset named {parent!r} (presets: {', '.join(presets_raw)})")
            if parent in chain:
                raise c.fail(f"{where}.extends", f"circular: {' -> '.join(chain + (name, parent))}")
            result.update(mappings_of(parent, chain + (name,)))
        own = c.mapping(d.get("parameters"), f"{where}.parameters")
        for pname, raw in own.items():
            if pname not in parameters:
                raise c.fail(
                    f"{where}.parameters.{pname}",
                    f"unknown parameter (declared under 'parameters': {', '.join(parameters)})",
                )
            result[pname] = _mapping(c, parameters[pname], raw, f"{where}.parameters.{pname}")
        compiled[name] = result
        return result

    presets = []
    for name in presets_raw:
        d = presets_raw[name] or {}
        where = f"presets.{name}"
        own = mappings_of(name, ())
        intensity = c.number(d.get("intensity", 1.0), f"{where}.intensity")
        if not 0 <= intensity <= MAX_INTENSITY:
            raise c.fail(f"{where}.intensity", f"must be in [0, {MAX_INTENSITY:g}], got {d['intensity']!r}")
        rate_scale = c.number(d.get("rate_scale", 1.0), f"{where}.rate_scale")
        if rate_scale <= 0:
            raise c.fail(f"{where}.rate_scale", f"must be > 0, got {d['rate_scale']!r}")
        mappings = tuple(
            own.get(pname) or ParamMapping(p, p.neutral, (), (), p.max_rate, f"{where}.parameters.{pname}")
            for pname, p in parameters.items()
        )
        presets.append(Preset(name, c.text(d.get("description"), f"{where}.description"), intensity, rate_scale, mappings))
    if default not in presets_raw:
        raise c.fail("presets", f"no preset named {default!r}, the default preset (presets: {', '.join(presets_raw)})")
    return Presets(file, tuple(parameters.values()), tuple(presets), default)


def load_presets(path: str | Path | None = None, default: str = "default") -> Presets:
    """Read and validate a preset file (None: the presets shipped with the package). Raises EffectsError."""
    file = Path(path) if path is not None else shipped_presets_path()
    try:
        text = file.read_text()
    except OSError as e:
        raise EffectsError(f"{file}: cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EffectsError(f"{file}: not valid YAML: {e}") from None
    return parse_presets(data, str(file), default)


# ------------------------------------------------------------------------------------------------ per-room state


class EffectState:
    """One room's effect values: targets from the preset, rate-limited in stream time.

    Switching preset keeps the current values and moves them towards the new preset's targets at the new preset's
    rates, so a room changing its look mid-song fades instead of jumping (unless the preset sets no limit).
    """

    def __init__(self, presets: Presets, preset: str | None = None) -> None:
        self.presets = presets
        name = presets.default if preset is None else preset
        self._preset = presets[name]
        self.reset()

    @property
    def preset(self) -> str:
        return self._preset.name

    def set_preset(self, name: str) -> None:
        self._preset = self.presets[name]

    def reset(self) -> None:
        self._values: dict[str, float | RGB] | None = None

    def update(self, probabilities: Mapping[str, float], valence: float, arousal: float, dt: float) -> dict[str, Any]:
        """New values after `dt` stream seconds, rounded for the wire (floats to 4 decimals, colours "#rrggbb").

        Raises ValueError, leaving the state untouched, for a non-finite input: a NaN would otherwise stay in the
        room's effect values for the rest of the track."""
        if not all(math.isfinite(v) for v in (valence, arousal, dt, *probabilities.values())):
            raise ValueError("effects need finite probabilities, valence, arousal and time step")
        preset = self._preset
        return self._move(preset.targets(probabilities, valence, arousal), dt)

    def rest(self, dt: float) -> dict[str, Any]:
        """Silence: every value moves towards its parameter's rest value (see the module docstring)."""
        if not math.isfinite(dt):
            raise ValueError("effects need a finite time step")
        return self._move({p.name: p.rest_value for p in self.presets.parameters}, dt)

    def _move(self, targets: dict[str, float | RGB], dt: float) -> dict[str, Any]:
        preset = self._preset
        if self._values is None:
            self._values = targets
        else:
            dt = max(0.0, dt)
            for m in preset.mappings:
                name = m.parameter.name
                rate = preset.max_rate(m)
                self._values[name] = approach(self._values[name], targets[name], None if rate is None else rate * dt)
        return {m.parameter.name: _wire(self._values[m.parameter.name], m.parameter.decimals) for m in preset.mappings}


def approach(current: float | RGB, target: float | RGB, step: float | None) -> float | RGB:
    """`current` moved towards `target` by at most `step` (per channel for colours; None: all the way)."""
    if step is None:
        return target
    if isinstance(target, tuple):
        return tuple(c + min(step, max(-step, t - c)) for c, t in zip(current, target))  # type: ignore[arg-type]
    return current + min(step, max(-step, target - current))  # type: ignore[operator]


def _wire(v: float | RGB, decimals: int) -> float | str:
    if isinstance(v, tuple):
        return format_colour(v)
    return round(float(v), decimals) + 0.0  # + 0.0: no "-0.0" on the wire

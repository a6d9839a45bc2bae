"""Effect presets: the shipped file, blending, curves, intensity, rate limits, and every validation message.

A broken preset file must stop the server at start-up with "<file>: <key path>: <reason>", never put a neutral or
half-applied effect on air, so each rule of the format has a test that checks the exact key path it reports.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sendreturn_mood.room.effects import (
    CURVES,
    EffectsError,
    EffectState,
    Presets,
    format_colour,
    load_presets,
    parse_colour,
    shape,
    shipped_presets_path,
)
from sendreturn_mood.room.tracker import MoodTracker
from tests.tiny_model import tiny_info

MOODS = ["happy", "angry", "sad", "calm"]
BASE: dict[str, Any] = {
    "parameters": {
        "reverb_mix": {"type": "float", "range": [0, 1], "neutral": 0.0, "max_rate": 0.1},
        "lowpass_hz": {"type": "float", "range": [200, 20000], "neutral": 20000},
        "tint": {"type": "colour", "neutral": "#ffffff", "max_rate": 50},
    },
    "presets": {
        "default": {
            "parameters": {
                "reverb_mix": {"moods": {"happy": 0.2, "sad": 0.6}},
                "lowpass_hz": {"value": 12000, "arousal": {"curve": "linear", "output": [-4000, 4000]}},
                "tint": {"moods": {"happy": "#ff0000", "sad": "#0000ff"}},
            }
        },
        "soft": {"extends": "default", "intensity": 0.5, "rate_scale": 0.5},
    },
}


def write(tmp_path: Path, doc: Any, name: str = "fx.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def probs(**p: float) -> dict[str, float]:
    return {m: p.get(m, 0.0) for m in MOODS}


def one_update(presets: Presets, preset: str, p: dict[str, float], valence: float = 0.0, arousal: float = 0.0) -> dict:
    return EffectState(presets, preset).update(p, valence, arousal, 0.0)


# ---------------------------------------------------------------------------------------------- shipped file


def test_shipped_presets_load_and_fit_the_model_moods() -> None:
    presets = load_presets()
    assert presets.file == str(shipped_presets_path())
    assert {"default", "subtle", "dramatic", "none"} <= set(presets.names)
    assert presets.default == "default" and "dramatic" in presets and "club" not in presets
    presets.check_moods(MOODS)
    names = {p.name for p in presets.parameters}
    assert {"reverb_mix", "lowpass_hz", "highpass_hz", "saturation", "tint", "fog_density", "camera_shake"} <= names
    assert all(presets.describe()[n] for n in presets.names)  # every preset says what it is for


@pytest.mark.parametrize("preset", ["default", "subtle", "dramatic", "visuals_only", "none"])
def test_shipped_presets_stay_in_range_for_any_mood(preset: str) -> None:
    presets = load_presets()
    rng = np.random.default_rng(1)
    ranges = {p.name: (p.low, p.high) for p in presets.parameters if p.type == "float"}
    for _ in range(50):
        p = dict(zip(MOODS, rng.dirichlet(np.ones(4) * 0.3)))
        out = one_update(presets, preset, p, rng.uniform(-1, 1), rng.uniform(-1, 1))
        assert set(out) == {q.name for q in presets.parameters}
        for name, value in out.items():
            if name in ranges:
                assert ranges[name][0] <= value <= ranges[name][1], (name, value)
            else:
                assert isinstance(value, str) and len(value) == 7 and value.startswith("#")


def test_shipped_presets_differ_in_strength() -> None:
    presets = load_presets()
    sad = probs(sad=1.0)
    default, subtle, dramatic = (one_update(presets, n, sad, -0.6, -0.6) for n in ("default", "subtle", "dramatic"))
    none = one_update(presets, "none", sad, -0.6, -0.6)
    assert subtle["reverb_mix"] == pytest.approx(0.4 * default["reverb_mix"], abs=1e-4)
    assert dramatic["reverb_mix"] > default["reverb_mix"] > subtle["reverb_mix"] > none["reverb_mix"] == 0.0
    assert dramatic["lowpass_hz"] < default["lowpass_hz"] < subtle["lowpass_hz"] < none["lowpass_hz"] == 20000.0
    assert none["tint"] == "#ffffff" and default["tint"] == "#3a86ff"
    visuals = one_update(presets, "visuals_only", sad, -0.6, -0.6)
    assert visuals["reverb_mix"] == 0.0 and visuals["fog_density"] == default["fog_density"]


# ----------------------------------------------------------------------------------------- mapping behaviour


def test_mood_values_are_blended_by_probability(tmp_path: Path) -> None:
    presets = load_presets(write(tmp_path, BASE))
    out = one_update(presets, "default", probs(happy=0.5, sad=0.5))
    assert out["reverb_mix"] == 0.4
    assert out["tint"] == "#800080"  # RGB blend of red and blue
    # moods the preset does not list take the mapping's `value`, else the neutral value
    assert one_update(presets, "default", probs(angry=1.0))["reverb_mix"] == 0.0
    assert one_update(presets, "default", probs(happy=0.5, angry=0.5))["reverb_mix"] == 0.1
    assert one_update(presets, "default", probs(angry=1.0))["tint"] == "#ffffff"


def test_continuous_terms_are_added_and_clamped(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    presets = load_presets(write(tmp_path, doc))
    assert one_update(presets, "default", probs(happy=1), arousal=-1.0)["lowpass_hz"] == 8000.0
    assert one_update(presets, "default", probs(happy=1), arousal=0.0)["lowpass_hz"] == 12000.0
    assert one_update(presets, "default", probs(happy=1), arousal=0.5)["lowpass_hz"] == 14000.0
    doc["presets"]["default"]["parameters"]["lowpass_hz"]["arousal"]["output"] = [-20000, 20000]
    presets = load_presets(write(tmp_path, doc))
    assert one_update(presets, "default", probs(happy=1), arousal=-1.0)["lowpass_hz"] == 200.0  # range minimum
    assert one_update(presets, "default", probs(happy=1), arousal=1.0)["lowpass_hz"] == 20000.0


def test_input_range_is_clamped(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["presets"]["default"]["parameters"]["reverb_mix"] = {
        "value": 0.0,
        "valence": {"curve": "pow", "exponent": 2, "input": [0, 1], "output": [0, 0.8]},
    }
    presets = load_presets(write(tmp_path, doc))
    values = [one_update(presets, "default", probs(happy=1), valence=v)["reverb_mix"] for v in (-1, 0, 0.5, 1, 1)]
    assert values == [0.0, 0.0, 0.2, 0.8, 0.8]


@pytest.mark.parametrize("curve", CURVES)
def test_curves_run_from_0_to_1_monotonically(curve: str) -> None:
    k = 2.0 if curve == "pow" else 4.0
    xs = np.linspace(0, 1, 101)
    ys = [shape(curve, x, k) for x in xs]
    assert ys[0] == pytest.approx(0.0, abs=1e-12) and ys[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(ys, ys[1:]))
    assert shape(curve, -3.0, k) == ys[0] and shape(curve, 7.0, k) == ys[-1]


def test_curve_shapes() -> None:
    assert shape("linear", 0.3, 1) == pytest.approx(0.3)
    assert shape("smoothstep", 0.25, 1) == pytest.approx(0.15625)
    assert shape("pow", 0.5, 3) == pytest.approx(0.125)
    assert shape("exp", 0.5, 4) == pytest.approx(math.expm1(2) / math.expm1(4))  # slow start
    assert shape("log", 0.5, 4) == pytest.approx(math.log1p(2) / math.log1p(4))  # fast start
    assert shape("exp", 0.5, 4) < 0.5 < shape("log", 0.5, 4)


def test_intensity_scales_the_distance_from_neutral(tmp_path: Path) -> None:
    presets = load_presets(write(tmp_path, BASE))
    full = one_update(presets, "default", probs(sad=1), arousal=0.5)
    soft = one_update(presets, "soft", probs(sad=1), arousal=0.5)
    assert soft["reverb_mix"] == pytest.approx(full["reverb_mix"] / 2)
    assert soft["lowpass_hz"] == pytest.approx(20000 - (20000 - full["lowpass_hz"]) / 2)
    assert soft["tint"] == "#8080ff"  # halfway from white to blue


def test_rate_limit_in_stream_time(tmp_path: Path) -> None:
    presets = load_presets(write(tmp_path, BASE))
    fx = EffectState(presets, "default")
    assert fx.update(probs(happy=1), 0, 0, 0.0)["reverb_mix"] == 0.2  # first value: taken as is
    steps = [fx.update(probs(sad=1), 0, 0, 1.5)["reverb_mix"] for _ in range(4)]
    assert steps == [0.35, 0.5, 0.6, 0.6]  # 0.1 per second, 1.5 s per update, then it has arrived
    # colours: at most 50 RGB units per second per channel
    fx.reset()
    fx.update(probs(happy=1), 0, 0, 0.0)
    rgb = parse_colour(fx.update(probs(sad=1), 0, 0, 1.0)["tint"])
    assert rgb == (205.0, 0.0, 50.0)
    # unlimited parameters jump
    fx.reset()
    fx.update(probs(happy=1), 0, 0, 0.0)
    assert fx.update(probs(happy=1), 0, -1.0, 0.5)["lowpass_hz"] == 8000.0


def test_rate_scale_and_preset_switch_glide(tmp_path: Path) -> None:
    presets = load_presets(write(tmp_path, BASE))
    fx = EffectState(presets, "soft")  # rate_scale 0.5: 0.05 per second
    assert fx.update(probs(happy=1), 0, 0, 0.0)["reverb_mix"] == 0.1
    assert fx.update(probs(sad=1), 0, 0, 2.0)["reverb_mix"] == 0.2
    fx.set_preset("default")  # targets change, values glide from where they are
    assert fx.preset == "default"
    assert fx.update(probs(sad=1), 0, 0, 1.0)["reverb_mix"] == 0.3
    with pytest.raises(KeyError):
        fx.set_preset("missing")


def test_wire_values_are_rounded_to_a_fraction_of_the_range(tmp_path: Path) -> None:
    """4 decimals on [0, 1]; whole hertz on a 200-20000 Hz cutoff (decoder noise must not reach the JSON)."""
    presets = load_presets(write(tmp_path, BASE))
    assert {p.name: p.decimals for p in presets.parameters} == {"reverb_mix": 4, "lowpass_hz": 0, "tint": 0}
    out = one_update(presets, "default", probs(happy=0.123456, sad=0.876544), arousal=0.123456)
    assert out["reverb_mix"] == round(0.2 * 0.123456 + 0.6 * 0.876544, 4)
    assert out["lowpass_hz"] == 12494.0


def test_colour_helpers() -> None:
    assert parse_colour("#ff8000") == (255.0, 128.0, 0.0)
    assert format_colour((255.4, 127.6, -3)) == "#ff8000"
    assert format_colour((300, 0, 0)) == "#ff0000"


# ---------------------------------------------------------------------------------------------- validation


def mutate(path: str, value: Any) -> dict[str, Any]:
    """BASE with the value at a dotted key path replaced (value DELETE removes the key)."""
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    cur = doc
    for p in parents:
        cur = cur[p]
    if value is DELETE:
        del cur[last]
    else:
        cur[last] = value
    return doc


DELETE = object()
P = "presets.default.parameters"
INVALID = [
    ("colours", 1, "colours: unknown key (known: version, description, parameters, presets)"),
    ("parameters", DELETE, "parameters: missing or empty"),
    ("parameters", [1, 2], "parameters: must be a mapping, got list"),
    ("parameters.reverb_mix.type", "int", "parameters.reverb_mix.type: must be one of float, colour, got 'int'"),
    ("parameters.reverb_mix.ranges", [0, 1], "parameters.reverb_mix.ranges: unknown key (known: type, range"),
    ("parameters.reverb_mix.range", DELETE, "parameters.reverb_mix.range: missing ([min, max]"),
    ("parameters.reverb_mix.range", [1, 0], "parameters.reverb_mix.range: min must be below max"),
    ("parameters.reverb_mix.range", [0, "one"], "parameters.reverb_mix.range[1]: must be a number, got 'one'"),
    ("parameters.reverb_mix.range", [0], "parameters.reverb_mix.range: must be a list of two numbers"),
    ("parameters.reverb_mix.neutral", DELETE, "parameters.reverb_mix.neutral: missing"),
    ("parameters.reverb_mix.neutral", 2, "parameters.reverb_mix.neutral: 2 is outside the range [0, 1] of 'reverb_mix'"),
    ("parameters.reverb_mix.max_rate", -1, "parameters.reverb_mix.max_rate: must be > 0 (or null for no limit)"),
    ("parameters.reverb_mix.max_rate", True, "parameters.reverb_mix.max_rate: must be a number, got True"),
    ("parameters.tint.neutral", "white", "parameters.tint.neutral: must be a colour \"#rrggbb\", got 'white'"),
    ("parameters.tint.range", [0, 1], "parameters.tint.range: colours have no range"),
    ("parameters.reverb mix", {"type": "float"}, "parameters.reverb mix: parameter names are"),
    ("presets", DELETE, "presets: missing or empty"),
    ("presets.default.intensty", 1, "presets.default.intensty: unknown key (known: description, extends"),
    (f"{P}.reverb", {"value": 0.1}, f"{P}.reverb: unknown parameter (declared under 'parameters': reverb_mix, lowpass_hz, tint)"),
    (f"{P}.reverb_mix.mood", {}, f"{P}.reverb_mix.mood: unknown key (known: value, moods, valence, arousal, max_rate)"),
    (f"{P}.reverb_mix.moods.happy", 1.5, f"{P}.reverb_mix.moods.happy: 1.5 is outside the range [0, 1] of 'reverb_mix'"),
    (f"{P}.reverb_mix.moods.happy", "lots", f"{P}.reverb_mix.moods.happy: must be a number, got 'lots'"),
    (f"{P}.reverb_mix.moods", [0.1], f"{P}.reverb_mix.moods: must be a mapping, got list"),
    (f"{P}.reverb_mix.value", -0.1, f"{P}.reverb_mix.value: -0.1 is outside the range [0, 1]"),
    (f"{P}.reverb_mix.max_rate", 0, f"{P}.reverb_mix.max_rate: must be > 0"),
    (f"{P}.lowpass_hz.arousal.curve", "cubic", f"{P}.lowpass_hz.arousal.curve: unknown curve 'cubic' (known: linear, smoothstep, exp, log, pow)"),
    (f"{P}.lowpass_hz.arousal.output", DELETE, f"{P}.lowpass_hz.arousal.output: missing"),
    (f"{P}.lowpass_hz.arousal.output", [1, 2, 3], f"{P}.lowpass_hz.arousal.output: must be a list of two numbers"),
    (f"{P}.lowpass_hz.arousal.input", [1, -1], f"{P}.lowpass_hz.arousal.input: the input range must be increasing"),
    (f"{P}.lowpass_hz.arousal.curve", "pow", f"{P}.lowpass_hz.arousal.exponent: missing (the pow curve needs an exponent)"),
    (f"{P}.lowpass_hz.arousal.exponent", 2, f"{P}.lowpass_hz.arousal.exponent: only the pow curve takes an exponent"),
    (f"{P}.lowpass_hz.arousal.steepness", 2, f"{P}.lowpass_hz.arousal.steepness: only the exp and log curves take a steepness"),
    (f"{P}.lowpass_hz.arousal.gain", 2, f"{P}.lowpass_hz.arousal.gain: unknown key (known: curve, input, output"),
    (f"{P}.lowpass_hz.arousal", 3, f"{P}.lowpass_hz.arousal: must be a mapping, got int"),
    (f"{P}.lowpass_hz.energy", {}, f"{P}.lowpass_hz.energy: unknown key"),
    (f"{P}.tint.moods.sad", "#00f", f"{P}.tint.moods.sad: must be a colour \"#rrggbb\", got '#00f'"),
    (f"{P}.tint.valence", {"output": [0, 1]}, f"{P}.tint.valence: valence/arousal curves apply to float parameters only"),
    ("presets.soft.extends", "base", "presets.soft.extends: no preset named 'base' (presets: default, soft)"),
    ("presets.default.extends", "soft", "presets.soft.extends: circular: default -> soft -> default"),
    ("presets.soft.intensity", 5, "presets.soft.intensity: must be in [0, 4], got 5"),
    ("presets.soft.rate_scale", 0, "presets.soft.rate_scale: must be > 0, got 0"),
    ("presets.default", DELETE, "presets.soft.extends: no preset named 'default'"),
]


@pytest.mark.parametrize(("key", "value", "message"), INVALID, ids=[f"{k}={v!r}" for k, v, _ in INVALID])
def test_invalid_files_name_the_file_key_and_reason(tmp_path: Path, key: str, value: Any, message: str) -> None:
    path = write(tmp_path, mutate(key, value))
    with pytest.raises(EffectsError) as e:
        load_presets(path)
    assert str(e.value).startswith(f"{path}: {message}"), str(e.value)


def test_steepness_with_exp_and_bad_steepness(tmp_path: Path) -> None:
    doc = mutate(f"{P}.lowpass_hz.arousal", {"curve": "exp", "steepness": 2, "output": [0, 1]})
    load_presets(write(tmp_path, doc))
    doc = mutate(f"{P}.lowpass_hz.arousal", {"curve": "log", "steepness": -2, "output": [0, 1]})
    with pytest.raises(EffectsError, match=f"{P}.lowpass_hz.arousal.steepness: must be > 0"):
        load_presets(write(tmp_path, doc))


def test_missing_default_preset(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(EffectsError) as e:
        load_presets(path, default="club")
    assert str(e.value) == f"{path}: presets: no preset named 'club', the default preset (presets: default, soft)"


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(EffectsError, match=r"nope\.yaml: cannot read"):
        load_presets(tmp_path / "nope.yaml")
    bad = write(tmp_path, "presets: {default: [unclosed\n")
    with pytest.raises(EffectsError, match=r"fx\.yaml: not valid YAML"):
        load_presets(bad)
    with pytest.raises(EffectsError, match=r"fx\.yaml: must be a mapping, got list"):
        load_presets(write(tmp_path, "- 1\n- 2\n"))


def test_unknown_moods_are_refused_when_the_tracker_is_built(tmp_path: Path) -> None:
    path = write(tmp_path, mutate(f"{P}.reverb_mix.moods.excited", 0.3))
    presets = load_presets(path)  # the file alone is fine: moods come from the model
    with pytest.raises(EffectsError) as e:
        MoodTracker(tiny_info(), presets, None, 4.0, 0.08)
    assert str(e.value) == (
        f"{path}: {P}.reverb_mix.moods.excited: unknown mood 'excited' (the model's moods: happy, angry, sad, calm)"
    )

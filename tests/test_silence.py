"""Silence is not a mood (issue 13): the window level read back from the log-mel, the tracker's silent state (hold,
rest effects, uniform instant), non-finite model outputs refused before they reach any state, and `analyze`'s
silent spans."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sendreturn_mood.room.offline import analyze_file
from tests.server_support import running_server
from sendreturn_mood.config import ConfigError, load_config
from sendreturn_mood.room.effects import EffectState, load_presets, parse_presets
from sendreturn_mood.audio.frontend import FrontEndSpec
from sendreturn_mood.audio.level import SILENCE_FLOOR_DB, window_level_db
from sendreturn_mood.model.contract import MoodModel, Prediction
from sendreturn_mood.audio.pipeline import AnalysisStream, WindowPlan
from sendreturn_mood.room.smoothing import ExpSmoother
from sendreturn_mood.room.tracker import MoodTracker, NonFiniteOutput
from tests.tiny_model import tiny_info

INFO = tiny_info()
PRESETS = load_presets()
HAPPY = np.array([0.85, 0.05, 0.05, 0.05])
ANGRY = np.array([0.1, 0.7, 0.1, 0.1])
GENRE = np.array([0.7, 0.1, 0.1, 0.1])
LOUD, QUIET = -20.0, -90.0


def tracker(tau: float = 4.0) -> MoodTracker:
    return MoodTracker(INFO, PRESETS, None, tau, 0.08, silence_db=-60.0)


def analysed(tr: MoodTracker, moods: np.ndarray, genres: np.ndarray, *args, **kwargs) -> dict:
    """The tracker's Analysis of one window, as the wire shows it."""
    return tr.update(Prediction(moods, genres), *args, **kwargs).to_dict()


def window_of(y: np.ndarray, spec: FrontEndSpec) -> np.ndarray:
    stream = AnalysisStream(spec, spec.sample_rate, WindowPlan(187, 94, 16))
    return stream.push(y.astype(np.float32))[0].logmel


@pytest.mark.parametrize("spec", [FrontEndSpec(), FrontEndSpec(log="db"), FrontEndSpec(mean=2.0, std=3.0), FrontEndSpec(quantize="float16")])
def test_level_is_read_back_from_any_front_end(spec):
    n = spec.sample_rate * 4
    t = np.arange(n) / spec.sample_rate
    assert window_level_db(window_of(np.sin(2 * np.pi * 1000 * t), spec), spec) == pytest.approx(0.0, abs=0.5)
    noise = 0.01 * np.random.default_rng(0).standard_normal(n)  # -40 dBFS RMS
    assert window_level_db(window_of(noise, spec), spec) == pytest.approx(-41.0, abs=2.0)
    assert window_level_db(window_of(np.zeros(n), spec), spec) == SILENCE_FLOOR_DB


def test_silence_holds_the_mood_and_rests_the_effects():
    tr = tracker()
    music = [analysed(tr, HAPPY, GENRE, 3.0 + 1.5 * i, level_db=LOUD) for i in range(4)]
    assert all(u["state"] == "music" and u["level_db"] == LOUD for u in music)
    last = music[-1]
    quiet = [analysed(tr, ANGRY, np.array([0.1, 0.7, 0.1, 0.1]), 7.5 + 1.5 * i, level_db=QUIET) for i in range(1, 40)]
    for u in quiet:  # the model said "angry, electronic" about silence: nobody hears it
        assert u["state"] == "silent" and u["level_db"] == QUIET
        assert (u["mood"], u["probabilities"], u["valence"], u["arousal"], u["genre"]) == (
            last["mood"], last["probabilities"], last["valence"], last["arousal"], last["genre"])
        assert set(u["instant"]["probabilities"].values()) == {0.25}
    neutral = {p.name: p.neutral for p in PRESETS.parameters}
    assert quiet[-1]["effects"]["tint"] == "#ffffff"
    assert all(quiet[-1]["effects"][k] == pytest.approx(v) for k, v in neutral.items() if k != "tint")
    # effects glide to rest at their max_rate: the first silent update moved reverb by at most 0.08/s * 1.5 s
    assert abs(quiet[0]["effects"]["reverb_mix"] - last["effects"]["reverb_mix"]) <= 0.08 * 1.5 + 1e-4
    back = analysed(tr, ANGRY, GENRE, 7.5 + 1.5 * 40, level_db=LOUD)
    assert back["state"] == "music" and back["mood"] == "angry"  # 58 s since the last music: the new music takes over


def test_silence_from_the_start_has_no_mood_label():
    """A track that starts silent is not announced as the first label of a uniform tie: no label until music."""
    tr = tracker()
    u = analysed(tr, ANGRY, GENRE, 3.0, level_db=SILENCE_FLOOR_DB)
    assert u["state"] == "silent" and set(u["probabilities"].values()) == {0.25}
    assert u["mood"] is None and u["confidence"] == 0.0 and u["genre"]["label"] is None
    assert set(u["genre"]["probabilities"].values()) == {0.25}
    assert all(math.isfinite(v) for v in (u["valence"], u["arousal"]))
    music = analysed(tr, ANGRY, GENRE, 4.5, level_db=LOUD)
    assert music["mood"] == "angry" and music["confidence"] > 0.5 and music["genre"]["label"] is not None
    tr.reset()  # a new track: nothing heard in it yet
    assert analysed(tr, HAPPY, GENRE, 3.0, level_db=QUIET)["mood"] is None


def test_without_a_level_the_update_is_as_before():
    u = analysed(tracker(), HAPPY, GENRE, 3.0)
    assert "state" not in u and "level_db" not in u


def test_level_from_the_window_itself():
    spec = INFO.frontend
    tr = tracker()
    u = analysed(tr, HAPPY, GENRE, 3.0, window_of(np.zeros(spec.sample_rate * 4), spec))
    assert u["state"] == "silent" and u["level_db"] == SILENCE_FLOOR_DB
    t = np.arange(spec.sample_rate * 4) / spec.sample_rate
    u = analysed(tr, HAPPY, GENRE, 4.5, window_of(0.1 * np.sin(2 * np.pi * 440 * t), spec))
    assert u["state"] == "music" and -25 < u["level_db"] < -15


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_model_outputs_are_refused_before_any_state_changes(bad):
    a, b = tracker(), tracker()
    for t in (a, b):
        analysed(t, HAPPY, GENRE, 3.0, level_db=LOUD)
    with pytest.raises(NonFiniteOutput):
        analysed(a, np.array([bad, 0.1, 0.1, 0.1]), GENRE, 4.5, level_db=LOUD)
    with pytest.raises(NonFiniteOutput):
        analysed(a, HAPPY, np.array([0.1, bad, 0.1, 0.1]), 4.5, level_db=LOUD)
    with pytest.raises(NonFiniteOutput):
        analysed(a, HAPPY, GENRE, bad, level_db=LOUD)
    assert analysed(a, ANGRY, GENRE, 6.0, level_db=LOUD) == analysed(b, ANGRY, GENRE, 6.0, level_db=LOUD)


def test_smoothing_and_effects_refuse_non_finite_values():
    s = ExpSmoother(1.0)
    s.update(np.array([0.5, 0.5]), 0.0)
    with pytest.raises(ValueError, match="finite"):
        s.update(np.array([np.nan, 0.5]), 1.0)
    assert s.value.tolist() == [0.5, 0.5]
    fx = EffectState(PRESETS)
    with pytest.raises(ValueError, match="finite"):
        fx.update({"happy": 1.0}, math.nan, 0.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        fx.rest(math.inf)


def test_rest_values_are_declared_per_parameter(tmp_path: Path):
    doc = {"parameters": {"fog": {"type": "float", "range": [0, 1], "neutral": 0.0, "rest": 0.3, "max_rate": 0.1},
                          "tint": {"type": "colour", "neutral": "#ffffff", "rest": "#000000"}},
           "presets": {"default": {"parameters": {"fog": {"value": 0.9}}}}}
    presets = parse_presets(doc, "fx.yaml")
    fx = EffectState(presets)
    assert fx.rest(1.0) == {"fog": 0.3, "tint": "#000000"}  # no previous value: straight to rest
    fx.reset()
    fx.update({"happy": 1.0}, 0.0, 0.0, 0.0)
    assert fx.rest(1.0)["fog"] == pytest.approx(0.8)  # glides at max_rate
    doc["parameters"]["fog"]["rest"] = 2.0
    with pytest.raises(Exception, match=r"fx.yaml: parameters.fog.rest: 2.0 is outside the range"):
        parse_presets(doc, "fx.yaml")


def test_silence_threshold_config(tmp_path: Path):
    assert load_config().analysis.silence_db == -60.0
    off = tmp_path / "off.yaml"
    off.write_text("analysis:\n  silence_db: null\n")
    assert load_config(off).analysis.silence_db is None
    with pytest.raises(ConfigError, match="silence_db must be in -120..0"):
        load_config(None, {"analysis.silence_db": 5})


def test_analyze_reports_silent_spans(tiny_model_path: Path, tmp_path: Path):
    sr = 16000
    t = np.arange(sr * 6) / sr
    tone = 0.2 * np.sin(2 * np.pi * 330 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
    y = np.concatenate([tone, np.zeros(sr * 10), tone]).astype(np.float32)
    path = tmp_path / "pause.wav"
    sf.write(str(path), y, sr, subtype="FLOAT")
    result = analyze_file(path, MoodModel(tiny_model_path), load_config())
    states = [u["state"] for u in result["timeline"]]
    assert "silent" in states and states[0] == "music" and states[-1] == "music"
    [(start, end)] = result["silent_spans"]
    assert 6.0 <= start <= 7.0 and 15.0 <= end <= 16.0
    silent = [u for u in result["timeline"] if u["state"] == "silent"]
    assert all(u["level_db"] == SILENCE_FLOOR_DB for u in silent)


@pytest.mark.parametrize("bad", ["moods", "genres", "embedding"])
def test_a_room_refuses_non_finite_outputs_before_any_state_changes(bad):
    from sendreturn_mood.room.rooms import Room

    room = Room("r", tracker())
    outputs = {"moods": HAPPY.copy(), "genres": GENRE.copy(), "embedding": np.ones(8)}
    outputs[bad][0] = np.nan
    with pytest.raises(NonFiniteOutput):
        room.on_window(0, Prediction(**outputs), 3.0, 1.0)
    assert room.seq == 0
    [update] = room.on_window(0, Prediction(HAPPY, GENRE, np.ones(8)), 3.0, 1.0)
    assert update.seq == 1 and update.analysis.mood == "happy"  # the failed window left nothing behind


async def test_a_room_that_starts_silent_sends_no_label_until_music(tiny_model_path: Path, tmp_path: Path):
    """A real source streams 3 s of digital silence, then music: every update before the music has mood null
    (valid against the schema), every one from the first music on names a mood, and `analyze` agrees."""
    from tests.server_support import client, read_until_closed, send_audio, server_config, tone

    rate = 16000
    audio = np.concatenate([np.zeros(3 * rate, dtype=np.float32), tone(4.0, rate)])
    async with running_server(tiny_model_path) as server:
        async with client(server, "quiet-start", role="source", sample_rate=rate, encoding="pcm_f32le") as (ws, _):
            await send_audio(ws, audio, rate, 1, "pcm_f32le")
            await ws.send('{"type": "end"}')
            updates = [m for m in await read_until_closed(ws) if m["type"] == "mood"]  # schema-checked
    states = [u["state"] for u in updates]
    first_music = states.index("music")
    assert first_music >= 2, states  # the silence was long enough for silent updates
    assert all(u["mood"] is None and u["confidence"] == 0.0 for u in updates[:first_music])
    assert all(u["mood"] in INFO.mood_labels for u in updates[first_music:])
    path = tmp_path / "quiet-start.wav"
    sf.write(str(path), audio, rate, subtype="FLOAT")
    timeline = analyze_file(path, MoodModel(tiny_model_path), server_config())["timeline"]
    assert [u["mood"] for u in timeline] == [u["mood"] for u in updates]

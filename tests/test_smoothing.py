"""Smoothing, label hysteresis and the per-room `MoodTracker` (the analysis fields of protocol v1's `mood`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sendreturn_mood.config import load_config
from sendreturn_mood.model.contract import Prediction
from sendreturn_mood.room.effects import load_presets
from sendreturn_mood.room.smoothing import ExpSmoother, LabelHysteresis, smoothing_alpha
from sendreturn_mood.room.tracker import MoodTracker, tracker_from_config
from tests.tiny_model import tiny_info

INFO = tiny_info()  # moods happy, angry, sad, calm; genres classical, electronic, pop, rock
PRESETS = load_presets()
HAPPY = np.array([0.85, 0.05, 0.05, 0.05])
SAD = np.array([0.05, 0.05, 0.85, 0.05])
MOOD_FIELDS = {"stream_time", "mood", "confidence", "probabilities", "valence", "arousal", "instant", "effects", "preset"}


def tracker(tau: float = 4.0, hysteresis: float = 0.08, info=INFO, preset: str | None = None) -> MoodTracker:
    return MoodTracker(info, PRESETS, preset, tau, hysteresis)


def analysed(t: MoodTracker, moods: np.ndarray, genres: np.ndarray | None, stream_time: float) -> dict:
    """The tracker's Analysis of one window's Prediction, as the wire shows it (`analyze`'s timeline row)."""
    return t.update(Prediction(moods, genres), stream_time).to_dict()


# ------------------------------------------------------------------------------------------------ smoothing


def test_alpha() -> None:
    assert smoothing_alpha(1.5, 0.0) == 1.0  # tau 0: no smoothing
    assert smoothing_alpha(2.0, 2.0) == pytest.approx(1 - 1 / math.e)
    assert smoothing_alpha(0.0, 2.0) == 0.0
    with pytest.raises(ValueError, match="time constant must be >= 0"):
        smoothing_alpha(1.0, -1.0)


def test_first_value_after_reset_is_taken_as_is() -> None:
    s = ExpSmoother(4.0)
    np.testing.assert_array_equal(s.update(HAPPY, 1.5), HAPPY)
    s.update(SAD, 1.5)
    s.reset()
    np.testing.assert_array_equal(s.update(SAD, 100.0), SAD)


@pytest.mark.parametrize("hop", [0.5, 1.0, 1.5, 3.0])
def test_step_response_follows_the_time_constant_whatever_the_hop(hop: float) -> None:
    """A switch from 0 to 1 reaches 1 - exp(-T / tau) after T seconds of audio, for any hop."""
    tau = 4.0
    s = ExpSmoother(tau)
    s.update(np.zeros(1), 0.0)
    t = 0.0
    while t < 6.0 - 1e-9:
        value = s.update(np.ones(1), hop)
        t += hop
    assert value[0] == pytest.approx(1 - math.exp(-6.0 / tau), abs=1e-12)


def test_hysteresis_keeps_the_label_between_close_moods() -> None:
    h = LabelHysteresis(0.08)
    assert h.update(np.array([0.52, 0.48])) == 0
    # the other mood is ahead, but by no more than 0.08 ([0.46, 0.54]: exactly the margin, not enough)
    for p in ([0.48, 0.52], [0.46, 0.54], [0.51, 0.49], [0.465, 0.535]):
        assert h.update(np.array(p)) == 0, p
    assert h.update(np.array([0.455, 0.545])) == 1  # 0.09 ahead
    assert h.update(np.array([0.5, 0.5])) == 1
    h.reset()
    assert h.update(np.array([0.4, 0.6])) == 1  # after a reset: plain argmax


def test_zero_hysteresis_is_argmax() -> None:
    h = LabelHysteresis(0.0)
    assert [h.update(np.array(p)) for p in ([0.6, 0.4], [0.49, 0.51], [0.51, 0.49])] == [0, 1, 0]
    with pytest.raises(ValueError, match="hysteresis"):
        LabelHysteresis(1.0)


# -------------------------------------------------------------------------------------------------- tracker


def test_update_returns_exactly_the_mood_fields() -> None:
    analysis = tracker().update(Prediction(HAPPY, np.array([0.1, 0.2, 0.6, 0.1])), 3.0)
    out = analysis.to_dict()
    assert set(out) == MOOD_FIELDS | {"genre"}
    assert out["stream_time"] == 3.0
    assert out["mood"] == "happy" and out["confidence"] == 0.85
    assert out["probabilities"] == {"happy": 0.85, "angry": 0.05, "sad": 0.05, "calm": 0.05}
    assert out["instant"] == {"probabilities": out["probabilities"], "valence": out["valence"], "arousal": out["arousal"]}
    va = HAPPY @ INFO.valence_arousal
    assert (out["valence"], out["arousal"]) == (round(va[0], 4), round(va[1], 4))
    assert out["genre"] == {"label": "pop", "probabilities": {"classical": 0.1, "electronic": 0.2, "pop": 0.6, "rock": 0.1}}
    assert out["preset"] == "default"
    assert set(analysis.effects) == {p.name for p in PRESETS.parameters}  # the wire adds each colour's _rgb view
    json.dumps(out)  # plain JSON types only


def test_no_genre_without_genres() -> None:
    out = analysed(tracker(info=tiny_info(genres=False)), HAPPY, None, 3.0)
    assert set(out) == MOOD_FIELDS


def test_smoothing_over_stream_time_and_instant_is_unsmoothed() -> None:
    t = tracker(tau=4.0, hysteresis=0.0)
    analysed(t, HAPPY, None, 3.0)
    out = analysed(t, SAD, None, 4.5)
    a = 1 - math.exp(-1.5 / 4.0)
    expected = HAPPY + a * (SAD - HAPPY)
    assert out["probabilities"] == {k: round(v, 4) for k, v in zip(INFO.mood_labels, expected)}
    assert out["instant"]["probabilities"]["sad"] == 0.85
    va = expected @ INFO.valence_arousal  # smoothed V/A = smoothed probabilities @ coordinates
    assert out["valence"] == round(va[0], 4) and out["arousal"] == round(va[1], 4)
    assert out["confidence"] == out["probabilities"][out["mood"]]


def test_time_constant_zero_follows_the_instant_values() -> None:
    t = tracker(tau=0.0, hysteresis=0.0)
    analysed(t, HAPPY, None, 3.0)
    out = analysed(t, SAD, None, 4.5)
    assert out["probabilities"] == out["instant"]["probabilities"] and out["mood"] == "sad"


def test_result_depends_on_stream_time_not_on_hop() -> None:
    """Happy until 6 s, sad after: at 12 s the smoothed values agree for hops of 1.5 s and 3 s."""

    def final(hop: float) -> dict:
        t = tracker(tau=4.0)
        times = np.arange(3.0, 12.0 + 1e-9, hop)
        return [analysed(t, HAPPY if x <= 6.0 + 1e-9 else SAD, None, float(x)) for x in times][-1]

    a, b = final(1.5), final(3.0)
    assert a["probabilities"] == b["probabilities"] and a["valence"] == b["valence"] and a["mood"] == b["mood"]


def test_label_does_not_flicker_between_sad_and_calm() -> None:
    t = tracker(tau=0.0, hysteresis=0.08)
    labels = []
    for i in range(20):
        sad = 0.46 + (0.04 if i % 2 else -0.04)
        labels.append(analysed(t, np.array([0.02, 0.02, sad, 0.96 - sad]), None, 3.0 + 1.5 * i)["mood"])
    assert set(labels) == {"calm"}  # the first label holds: the other one never leads by more than 0.08
    assert analysed(t, np.array([0.02, 0.02, 0.66, 0.30]), None, 40.0)["mood"] == "sad"


def test_reset_restarts_smoothing_and_effects() -> None:
    t = tracker()
    first = analysed(t, HAPPY, None, 3.0)
    analysed(t, SAD, None, 4.5)
    t.reset()
    again = analysed(t, HAPPY, None, 3.0)
    assert again == first


def test_same_inputs_give_identical_json() -> None:
    """The server and analyze each build a tracker; the same windows must serialise to the same bytes."""
    rng = np.random.default_rng(0)
    seq = [(rng.dirichlet(np.ones(4)), rng.dirichlet(np.ones(4)), 3.0 + 1.5 * i) for i in range(30)]
    config = load_config()
    a = tracker_from_config(INFO, config, PRESETS)
    b = tracker_from_config(INFO, config, PRESETS)
    assert [json.dumps(analysed(a, *x)) for x in seq] == [json.dumps(analysed(b, *x)) for x in seq]


def test_values_are_rounded_to_four_decimals() -> None:
    out = analysed(tracker(), np.array([0.123456789, 0.2, 0.3, 0.376543211]), None, 1.23456789)
    numbers = [out["stream_time"], out["valence"], out["arousal"], *out["probabilities"].values()]
    numbers += [v for v in out["effects"].values() if isinstance(v, float)]
    assert all(round(x, 4) == x for x in numbers)


def test_presets_are_chosen_and_unknown_ones_refused() -> None:
    t = tracker(preset="subtle")
    assert t.preset == "subtle" and analysed(t, HAPPY, None, 3.0)["preset"] == "subtle"
    t.set_preset("dramatic")
    assert t.preset == "dramatic"
    with pytest.raises(KeyError, match="nope"):
        t.set_preset("nope")
    with pytest.raises(KeyError):
        tracker(preset="nope")
    assert t.preset == "dramatic"


def test_tracker_from_config_uses_the_config() -> None:
    config = load_config(overrides={"smoothing.time_constant_seconds": 0.0, "smoothing.hysteresis": 0.0})
    t = tracker_from_config(INFO, config, PRESETS, "none")
    analysed(t, HAPPY, None, 3.0)
    out = analysed(t, SAD, None, 4.5)
    assert out["mood"] == "sad" and out["probabilities"]["sad"] == 0.85 and out["preset"] == "none"


def test_wrong_number_of_probabilities_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected 4 mood probabilities, got 3"):
        analysed(tracker(), np.array([0.3, 0.3, 0.4]), None, 3.0)

"""The tempo/key measurement (training.keytempo): the MIDI it writes holds the truth it claims, the MIREX scores
are the MIREX definitions, and a handful of real FluidSynth renders reach what the full run measured
(docs/evaluation/features.md)."""

from __future__ import annotations

import pretty_midi
import pytest

from sendreturn_mood.audio import features as F
from training import keytempo as K

SUBSET = 6  # renders in the test (the full run: `python -m training keytempo-eval`, 240 renders)
SUBSET_SECONDS = 20.0
# Thresholds below the full run's test-half numbers (docs/evaluation/features.md), with room for 6 pieces' luck.
MIN_TEMPO_ACC2 = 5 / 6
MIN_KEY_WEIGHTED = 0.6


def test_plan_covers_all_24_keys_and_the_tempo_range():
    pieces = K.plan(48, seed=3)
    assert {(p.key, p.mode) for p in pieces[:24]} == {(k, m) for k in range(12) for m in (F.MAJOR, F.MINOR)}
    assert all(K.MIN_BPM <= p.bpm <= K.MAX_BPM for p in pieces)
    assert K.plan(48, seed=3) == pieces  # seeded


def test_midi_is_in_its_key_and_tempo(tmp_path):
    piece = next(p for p in K.plan(24, seed=1) if p.mode == F.MINOR)
    K.write_midi(piece, tmp_path / "piece.mid")
    pm = pretty_midi.PrettyMIDI(str(tmp_path / "piece.mid"))
    assert pm.get_tempo_changes()[1][0] == pytest.approx(piece.bpm, rel=1e-3)
    assert {i.name for i in pm.instruments} == {"chords", "bass", "melody", "drums"}
    allowed = {(piece.key + s) % 12 for s in K.MINOR_SCALE} | {(piece.key + 11) % 12}  # + the leading tone
    pitched = [n.pitch % 12 for i in pm.instruments if not i.is_drum for n in i.notes]
    assert set(pitched) <= allowed
    assert pm.get_end_time() >= piece.seconds - 60.0 / piece.bpm * 4


def test_mirex_tempo_accuracies():
    assert K.tempo_scores(123.0, 120.0) == (True, True)
    assert K.tempo_scores(240.0, 120.0) == (False, True)
    assert K.tempo_scores(40.5, 120.0) == (False, True)  # a third
    assert K.tempo_scores(100.0, 120.0) == (False, False)


def test_mirex_key_weights():
    a_minor, c_major = (9, F.MINOR), (0, F.MAJOR)
    assert K.key_score(*c_major, *c_major) == 1.0
    assert K.key_score(7, F.MAJOR, *c_major) == 0.5  # a fifth above
    assert K.key_score(*a_minor, *c_major) == 0.3  # relative
    assert K.key_score(0, F.MINOR, *c_major) == 0.2  # parallel
    assert K.key_score(F.UNDECIDED, F.UNDECIDED, *c_major) == 0.0


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    reason = K.fluidsynth_available()
    if reason:
        pytest.skip(reason)
    cache = tmp_path_factory.mktemp("keytempo")
    pieces = K.plan(24, seed=0, seconds=SUBSET_SECONDS)[:: 24 // SUBSET][:SUBSET]
    return [(p, K.read_audio(K.rendered(p, cache))) for p in pieces]


def test_a_rendered_subset_reaches_the_measured_accuracy(renders):
    acc2, keys = [], []
    for piece, (samples, rate) in renders:
        f = F.audio_features(samples, rate)
        acc2.append(K.tempo_scores(f.tempo, piece.bpm)[1])
        keys.append(K.key_score(f.key, f.mode, piece.key, piece.mode))
        assert f.loudness is not None and -40.0 < f.loudness < 0.0
        assert abs(f.duration_ms / 1000 - len(samples) / rate) < 0.01
    assert sum(acc2) / len(acc2) >= MIN_TEMPO_ACC2, acc2
    assert sum(keys) / len(keys) >= MIN_KEY_WEIGHTED, keys

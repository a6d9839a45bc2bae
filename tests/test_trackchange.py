"""The track-change detector on synthetic embeddings and log-mel windows, its settings, and the room/session wiring
(sans-I/O: no sockets). The real-server and real-music tests are in test_trackchange_server.py."""

from __future__ import annotations

import numpy as np
import pytest

from sendreturn_mood import contract, protocol
from sendreturn_mood.config import ConfigError, load_config
from sendreturn_mood.audio.frontend import FrontEndSpec, log_mel
from sendreturn_mood.model.contract import Prediction
from sendreturn_mood.room.update import Update
from sendreturn_mood.room.trackchange import (
    FEATURE_EMBEDDING,
    FEATURE_LOGMEL,
    MAX_HISTORY,
    DetectorSettings,
    TrackChangeDetector,
    TrackChangeError,
    threshold,
)
from tests.server_support import checked

WINDOW = 2.992  # the shipped model's patch (187 frames)
HOP = 1.5
SPEC = FrontEndSpec(quantize="float16")  # the shipped model's front end
FRAME = SPEC.frames_to_seconds(1)
N_MELS, FRAMES = 96, 187
LOUD = np.full((N_MELS, FRAMES), 2.0, dtype=np.float32)  # a window of music (no silent frames)


def settings(**kw) -> DetectorSettings:
    """The settings these tests were written for (sensitivity 0.5, not the shipped default: the synthetic songs
    are made to sit clearly on either side of its threshold), with `kw` changed."""
    return DetectorSettings(**{"enabled": True, "sensitivity": 0.5, "min_track_seconds": 20.0, "feature": "auto", **kw})


def detector(**kw) -> TrackChangeDetector:
    has_embedding = kw.pop("has_embedding", True)
    return TrackChangeDetector(settings(**kw), SPEC, WINDOW, has_embedding)


def song_embedding(seed: int, dim: int = 128) -> np.ndarray:
    """A song's typical embedding: sparse and non-negative like the model's ReLU output."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal(dim), 0.0) * 2.0


def windows(songs: list[tuple[np.ndarray, float]], noise: float = 0.25, seed: int = 0, silence: float = 0.0):
    """(stream_time, logmel, embedding) every hop for songs [(typical embedding, seconds)] back to back, with
    `silence` seconds of silence between them (windows overlapping it get silent log-mel frames)."""
    rng = np.random.default_rng(seed)
    spans, t = [], 0.0
    for i, (emb, seconds) in enumerate(songs):
        if i:
            t += silence
        spans.append((t, t + seconds, emb))
        t += seconds
    end = WINDOW
    out = []
    while end <= t + 1e-9:
        start = end - WINDOW
        mid = [s for s in spans if s[0] <= end - WINDOW / 2 < s[1]] or [min(spans, key=lambda s: abs(s[0] - end))]
        emb = mid[0][2] * (1 + noise * rng.standard_normal(mid[0][2].size))
        logmel = LOUD.copy()
        frame_times = start + np.arange(FRAMES) * FRAME
        silent = ~np.any([(frame_times >= a) & (frame_times < b) for a, b, _ in spans], axis=0)
        logmel[:, silent] = 0.0
        out.append((end, logmel, np.maximum(emb, 0.0)))
        end += HOP
    return out


def run(det: TrackChangeDetector, stream) -> list:
    return [c for t, logmel, emb in stream if (c := det.update(t, logmel, emb)) is not None]


def test_a_change_is_heard_near_the_boundary_and_once():
    changes = run(detector(), windows([(song_embedding(1), 45.0), (song_embedding(2), 45.0)]))
    assert len(changes) == 1
    c = changes[0]
    assert abs(c.stream_time - 45.0) <= 1.5 + 1e-6  # placed inside the window that straddles the boundary
    assert 45.0 < c.detected_at <= 45.0 + WINDOW + 2 * HOP + 1e-6  # confirmed by the next two whole windows
    assert c.score >= c.threshold
    assert c.to_dict()["source"] == "detected"


def test_one_song_with_its_usual_variation_gives_no_change():
    assert run(detector(), windows([(song_embedding(1), 600.0)], seed=3)) == []


def test_every_change_of_a_long_stream_is_heard():
    stream = windows([(song_embedding(k), 40.0) for k in range(8)])
    changes = run(detector(), stream)
    assert [round(c.stream_time / 40.0) for c in changes] == list(range(1, 8))


def test_no_change_sooner_than_min_track_seconds():
    songs = [(song_embedding(1), 30.0), (song_embedding(2), 12.0), (song_embedding(3), 30.0)]
    changes = run(detector(min_track_seconds=20.0), windows(songs))
    assert [round(c.stream_time) for c in changes] == [30]  # 42 s is only 12 s after the change at 30 s
    changes = run(detector(min_track_seconds=5.0), windows(songs))
    assert [round(c.stream_time) for c in changes] == [30, 42]


def test_reset_makes_an_explicit_track_win():
    """A `track` message resets the detector: a change right after it (the message came a little early) is not
    announced again, because no change comes sooner than min_track_seconds after a reset."""
    det = detector()
    stream = windows([(song_embedding(1), 6.0), (song_embedding(2), 60.0)])
    assert run(det, stream[:3]) == []
    det.reset()
    assert run(det, [(t - stream[3][0] + WINDOW, lm, e) for t, lm, e in stream[3:]]) == []


def test_sensitivity_trades_detections_for_false_alarms():
    assert threshold(FEATURE_EMBEDDING, 0.2) > threshold(FEATURE_EMBEDDING, 0.5) > threshold(FEATURE_EMBEDDING, 0.8)
    assert threshold(FEATURE_LOGMEL, 0.2) > threshold(FEATURE_LOGMEL, 0.8)
    close = [(song_embedding(1), 40.0), (0.2 * song_embedding(1) + 0.8 * song_embedding(2), 40.0)]  # distance ~0.4
    assert run(detector(sensitivity=0.0), windows(close)) == []
    assert len(run(detector(sensitivity=1.0), windows(close))) == 1


def test_silence_between_tracks_is_left_out():
    changes = run(detector(), windows([(song_embedding(1), 40.0), (song_embedding(2), 40.0)], silence=2.0))
    assert len(changes) == 1 and abs(changes[0].stream_time - 41.0) <= 3.0
    # a pause inside one song is not a change
    assert run(detector(), windows([(song_embedding(1), 40.0), (song_embedding(1), 40.0)], silence=2.5)) == []


def test_silent_windows_never_score():
    det = detector(min_track_seconds=0.0)
    quiet = np.zeros((N_MELS, FRAMES), dtype=np.float32)
    for k in range(40):
        assert det.update(WINDOW + k * HOP, quiet, song_embedding(k)) is None
        assert det.last_score is None


@pytest.mark.parametrize("spec", [SPEC, FrontEndSpec(log="db"), FrontEndSpec(mean=2.0, std=1.5)])
def test_silence_is_judged_through_the_models_own_front_end(spec):
    """Quiet noise is silence and music-level noise is not, whatever the log compression or normalisation."""
    from sendreturn_mood.room.trackchange import window_feature

    rng = np.random.default_rng(5)
    emb = song_embedding(1)
    for dbfs, silent in ((-80.0, True), (-65.0, True), (-30.0, False), (-15.0, False)):
        x = (10 ** (dbfs / 20) * rng.standard_normal(3 * spec.sample_rate)).astype(np.float32)
        f = window_feature(FEATURE_EMBEDDING, log_mel(x, spec)[:, 20:-20], emb, spec)
        assert (f.vector is None) == silent, (dbfs, spec)


def test_logmel_feature_for_a_model_without_embedding():
    det = detector(has_embedding=False)
    assert det.feature == FEATURE_LOGMEL
    rng = np.random.default_rng(0)
    bright = np.linspace(0.5, 3.0, N_MELS, dtype=np.float32)[:, None]
    dark = bright[::-1].copy()
    stream = []
    for k in range(50):
        t = WINDOW + k * HOP
        shape = bright if t - WINDOW < 40.0 - WINDOW / 2 else dark
        stream.append((t, shape + 0.1 * rng.standard_normal((N_MELS, FRAMES)).astype(np.float32), None))
    changes = run(det, stream)
    assert len(changes) == 1 and abs(changes[0].stream_time - 40.0) <= 3.0


def test_switching_off_and_on():
    det = detector()
    det.set_enabled(False)
    stream = windows([(song_embedding(1), 40.0), (song_embedding(2), 40.0)])
    assert run(det, stream) == []
    det.set_enabled(True)  # starts from an empty history: no change from the audio heard while off
    assert run(det, stream[-10:]) == []


def test_history_is_bounded_and_a_restarted_clock_resets():
    det = detector(min_track_seconds=0.0)
    for t, logmel, emb in windows([(song_embedding(1), 400.0)]):
        det.update(t, logmel, emb)
    assert len(det._history) <= MAX_HISTORY
    det.update(WINDOW, LOUD, song_embedding(1))  # stream time went back: a new stream
    assert len(det._history) == 1


def test_settings_are_checked():
    with pytest.raises(TrackChangeError, match="sensitivity"):
        settings(sensitivity=1.5)
    with pytest.raises(TrackChangeError, match="min_track_seconds"):
        settings(min_track_seconds=-1)
    with pytest.raises(TrackChangeError, match="feature"):
        settings(feature="mfcc")
    with pytest.raises(TrackChangeError, match="no 'embedding' output"):
        detector(feature=FEATURE_EMBEDDING, has_embedding=False)
    with pytest.raises(ConfigError, match="track_detection.sensitivity"):
        load_config(None, {"track_detection.sensitivity": 2.0})
    assert DetectorSettings.from_config(load_config(None, {"track_detection.sensitivity": 0.5})) == settings()


# ---------------------------------------------------------------------------------------------- protocol and room


def test_handshake_parameter_and_message():
    assert protocol.parse_connect("/v1/rooms/a?role=source&track_detection=off").track_detection is False
    assert protocol.parse_connect("/v1/rooms/a?role=source&track_detection=on").track_detection is True
    assert protocol.parse_connect("/v1/rooms/a?role=source").track_detection is None
    with pytest.raises(protocol.Refusal, match="track_detection must be on or off"):
        protocol.parse_connect("/v1/rooms/a?track_detection=maybe")
    assert protocol.parse_client_message('{"type": "track_detection", "enabled": false}') == protocol.TrackDetection(False)
    checked({"type": "track_detection", "enabled": False}, contract.CLIENT_MESSAGE)  # and schema/v1 describes it
    with pytest.raises(protocol.MessageError, match="boolean field 'enabled'"):
        protocol.parse_client_message('{"type": "track_detection", "enabled": "no"}')


def _room():
    from sendreturn_mood.room.effects import load_presets
    from sendreturn_mood.room.rooms import Room
    from sendreturn_mood.room.tracker import tracker_from_config
    from tests.tiny_model import tiny_info

    info = tiny_info()
    config = load_config()
    room = Room("lobby", tracker_from_config(info, config, load_presets(None, "default")))
    room.detector = detector()
    return room


def test_room_announces_the_change_before_the_mood_and_restarts_smoothing():
    room = _room()
    room.start_source(None)
    happy, calm = np.array([0.7, 0.1, 0.1, 0.1]), np.array([0.1, 0.1, 0.1, 0.7])
    kinds = []
    for t, logmel, emb in windows([(song_embedding(1), 45.0), (song_embedding(2), 45.0)]):
        msgs = [m if isinstance(m, dict) else m.to_message()
                for m in room.on_window(room.generation, Prediction(happy if t < 45 else calm, None, emb), t, 1.0, logmel)]
        kinds += [m["type"] for m in msgs]
        if msgs[0]["type"] == "track_change":
            assert checked(msgs[0])["room"] == "lobby" and msgs[0]["source"] == "detected"
            assert msgs[1]["probabilities"] == msgs[1]["instant"]["probabilities"]  # smoothing restarted
    assert kinds.count("track_change") == 1 and kinds.count("mood") == len(kinds) - 1
    assert room.on_window(room.generation - 1, Prediction(happy, None, song_embedding(1)), 99.0, 1.0, LOUD) == []  # stale


def test_room_switches_and_explicit_track_resets_detection():
    room = _room()
    room.start_source(None, track_detection=False)
    assert room.track_detection is False
    stream = windows([(song_embedding(1), 45.0), (song_embedding(2), 45.0)])
    p = np.array([0.25] * 4)
    assert all(isinstance(m, Update) for t, lm, e in stream for m in room.on_window(room.generation, Prediction(p, None, e), t, 1.0, lm))
    assert room.set_track_detection(True) and room.track_detection
    room.start_source(None)  # a new source without the parameter: the configured default (on)
    assert room.track_detection
    for t, lm, e in stream[:15]:
        room.on_window(room.generation, Prediction(p, None, e), t, 1.0, lm)
    room.new_track({"id": "x"})
    assert len(room.detector._history) == 0


def test_session_message_switches_detection():
    from sendreturn_mood.room.session import Reply, Session, SessionSettings
    from sendreturn_mood.audio.pipeline import WindowPlan
    from sendreturn_mood.audio.frontend import FrontEndSpec

    room = _room()
    room.start_source(None)
    settings = SessionSettings(1 << 20, 8.0, 30.0, WindowPlan(187, 94, 62), FrontEndSpec(), WINDOW, HOP, {}, ("default",))
    session = Session(protocol.parse_connect("/v1/rooms/lobby?role=source&sample_rate=16000"), room, settings)
    welcome = session.open()[0]
    assert isinstance(welcome, Reply) and welcome.message["track_detection"] == {"enabled": True}
    assert session.receive('{"type": "track_detection", "enabled": false}', 0.0) == []
    assert room.track_detection is False
    room.detector = None
    [reply] = session.receive('{"type": "track_detection", "enabled": true}', 0.0)
    assert reply.message["code"] == protocol.BAD_MESSAGE


def test_a_server_refuses_to_start_with_a_detector_its_model_cannot_feed(tiny_model_path):
    from sendreturn_mood.model.contract import MoodModel
    from sendreturn_mood.server.app import MoodServer

    config = load_config(None, {"track_detection.feature": "embedding"})
    with pytest.raises(ConfigError, match="no 'embedding' output"):
        MoodServer(config, MoodModel(tiny_model_path))

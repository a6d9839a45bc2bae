"""`analyze`: the streaming path over real songs, its JSON shape, and what it does with files it cannot use.

The tiny fixture model stands in for the trained one, so these tests check the plumbing (windows, timeline,
summary, agreement with a server-like chunked path) rather than how good the moods are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sendreturn_mood.audio.pipeline import window_plan
from sendreturn_mood.cli.analyze import main
from sendreturn_mood.room.offline import AnalyzeError, analyze_file
from sendreturn_mood.config import load_config
from sendreturn_mood.room.effects import load_presets
from sendreturn_mood.model.contract import MoodModel
from sendreturn_mood.audio.pcm import decode, encode
from sendreturn_mood.audio.pipeline import AnalysisStream
from sendreturn_mood.room.tracker import tracker_from_config
from tests.conftest import REPO, shared_data_or_skip

SUMMARY_FIELDS = {"file", "duration", "model", "preset", "windows", "mood", "probabilities", "valence", "arousal", "genre", "timeline",
                  "track_detection", "track_changes", "silent_spans"}
UPDATE_FIELDS = {"stream_time", "mood", "confidence", "probabilities", "valence", "arousal", "instant", "genre", "effects", "state",
                 "level_db", "preset"}
SHORT_CLIP = "Q1/MT0013621344.mp3"  # the one 10 s clip of 4Q


def songs(n: int = 2) -> list[Path]:
    folder = shared_data_or_skip("moods-4q")
    return [folder / SHORT_CLIP] + sorted(folder.glob("Q3/*.mp3"))[: n - 1]


@pytest.fixture(scope="module")
def model(tiny_model_path: Path) -> MoodModel:
    return MoodModel(tiny_model_path)


@pytest.fixture(scope="module")
def graded_model(tmp_path_factory: pytest.TempPathFactory) -> MoodModel:
    """The tiny model behind a normalising front end: its probabilities are graded (not saturated at 0 or 1) on
    real music, so comparisons of values mean something."""
    from sendreturn_mood.audio.frontend import FrontEndSpec
    from tests.tiny_model import build_tiny_model, tiny_info

    path = tmp_path_factory.mktemp("graded") / "graded.onnx"
    return MoodModel(build_tiny_model(path, tiny_info(FrontEndSpec(mean=1.0, std=20.0))))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "sendreturn_mood", "analyze", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )


def test_cli_json_on_real_songs_and_a_bad_file(tiny_model_path: Path, tmp_path: Path) -> None:
    files = songs(2)
    bad = tmp_path / "not_audio.mp3"
    bad.write_text("this is not audio")
    r = cli(str(files[0]), str(bad), str(files[1]), "--json", "--model", str(tiny_model_path))
    assert r.returncode == 1, r.stderr
    assert f"error: {bad}: corrupt or unsupported audio" in r.stderr and "does not exist" not in r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2  # the other files are still analysed
    config = load_config()
    hop = config.analysis.hop_seconds
    for line, file in zip(lines, files):
        result = json.loads(line)
        assert set(result) == SUMMARY_FIELDS
        assert result["file"] == str(file)
        assert result["model"] == {"name": "tiny-test-model", "version": "0.0.1"}
        assert result["duration"] == pytest.approx(sf.info(str(file)).duration, abs=0.1)
        timeline = result["timeline"]
        assert len(timeline) == result["windows"] >= 5
        assert all(set(u) == UPDATE_FIELDS for u in timeline)
        times = [u["stream_time"] for u in timeline]
        assert times[0] == pytest.approx(3.0, abs=0.02)  # the model's patch: 187 frames of 16 ms
        assert np.allclose(np.diff(times[:-1]), hop, atol=0.02)  # one update per hop, plus the tail window
        assert 0 < times[-1] - times[-2] <= hop + 0.02 and times[-1] == pytest.approx(result["duration"], abs=0.05)
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert result["mood"] == max(result["probabilities"], key=result["probabilities"].get)
        mean = np.mean([list(u["instant"]["probabilities"].values()) for u in timeline], axis=0)
        np.testing.assert_allclose(list(result["probabilities"].values()), mean, atol=1e-3)
        assert set(result["genre"]["probabilities"]) == {"classical", "electronic", "pop", "rock"}
        assert all(-1 <= u["valence"] <= 1 and -1 <= u["arousal"] <= 1 for u in timeline)


def test_cli_human_output(tiny_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = songs(1)[0]
    assert main([str(file), "--model", str(tiny_model_path), "--preset", "subtle"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{file}  (10.1 s, 6 windows, model tiny-test-model 0.0.1, preset subtle)")
    assert "time" in out[1] and "happy" in out[1] and "valence" in out[1]
    assert len(out) == 2 + 6 + 1
    assert out[-1].startswith("  summary: ")


def test_analyze_agrees_with_a_server_like_chunked_path(graded_model: MoodModel) -> None:
    """What a room would broadcast: PCM s16le at 48 kHz stereo in 100 ms messages, one window per inference."""
    from sendreturn_mood.audio.resample import resample

    model = graded_model
    file = songs(2)[1]
    config = load_config()
    presets = load_presets()
    y16, sr = sf.read(str(file), dtype="float32")
    assert sr == 16000
    reference = analyze_file(file, model, config)

    # the same audio as a client would send it; the server resamples back to 16 kHz itself
    y48 = resample(y16, 16000, 48000)
    pcm = encode(np.repeat(y48[:, None], 2, axis=1).ravel(), "pcm_f32le")
    stream = AnalysisStream(model.info.frontend, 48000, window_plan(model.info, config))
    tracker = tracker_from_config(model.info, config, presets)
    updates = []
    step = 4800 * 2 * 4
    for i in range(0, len(pcm), step):
        for w in stream.push(decode(pcm[i : i + step], "pcm_f32le", 2)):
            p = model.predict(w.logmel[None])
            updates.append(tracker.update(p[0], w.stream_time, w.logmel).to_dict())
    for w in stream.finish():
        p = model.predict(w.logmel[None])
        updates.append(tracker.update(p[0], w.stream_time, w.logmel).to_dict())

    assert [u["stream_time"] for u in updates] == [u["stream_time"] for u in reference["timeline"]]
    # a round trip through 48 kHz is not bit-exact audio, so compare values, not bytes
    assert 0.05 < reference["timeline"][-1]["probabilities"]["sad"] < 0.95  # graded, so the comparison has teeth
    for a, b in zip(updates, reference["timeline"]):
        assert a["mood"] == b["mood"]
        for label in a["probabilities"]:
            assert a["probabilities"][label] == pytest.approx(b["probabilities"][label], abs=0.02)


def test_same_audio_gives_identical_json_whatever_the_chunking(graded_model: MoodModel) -> None:
    """Exactly the server's case: the same samples, pushed in 20 ms pieces, batch of one -> the same bytes."""
    model = graded_model
    file = songs(1)[0]
    config = load_config()
    reference = analyze_file(file, model, config)
    y, sr = sf.read(str(file), dtype="float32")
    stream = AnalysisStream(model.info.frontend, sr, window_plan(model.info, config))
    tracker = tracker_from_config(model.info, config, load_presets())
    updates = []
    for i in range(0, len(y), 320):
        for w in stream.push(y[i : i + 320]):
            p = model.predict(w.logmel[None])
            updates.append(tracker.update(p[0], w.stream_time, w.logmel).to_dict())
    for w in stream.finish():
        p = model.predict(w.logmel[None])
        updates.append(tracker.update(p[0], w.stream_time, w.logmel).to_dict())
    assert json.dumps(updates) == json.dumps(reference["timeline"])


@pytest.mark.parametrize(("fmt", "subtype"), [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")])
def test_other_formats_rates_and_channels(model: MoodModel, tmp_path: Path, fmt: str, subtype: str) -> None:
    """wav / flac / ogg, stereo at 44.1 kHz: read, downmixed, resampled, analysed."""
    from sendreturn_mood.audio.resample import resample

    y16, _ = sf.read(str(songs(1)[0]), dtype="float32")
    y = resample(y16, 16000, 44100)
    path = tmp_path / f"clip.{fmt}"
    sf.write(str(path), np.stack([y, 0.5 * y], axis=1), 44100, format=fmt.upper(), subtype=subtype)
    result = analyze_file(path, model, load_config())
    assert result["duration"] == pytest.approx(len(y) / 44100, abs=0.05)
    assert result["windows"] == 6 and result["file"] == str(path)


def test_wav_of_the_same_samples_gives_the_same_analysis(model: MoodModel, tmp_path: Path) -> None:
    file = songs(1)[0]
    y, sr = sf.read(str(file), dtype="float32")
    wav = tmp_path / "same.wav"
    sf.write(str(wav), y, sr, subtype="FLOAT")
    a, b = analyze_file(file, model, load_config()), analyze_file(wav, model, load_config())
    assert json.dumps(a["timeline"]) == json.dumps(b["timeline"])
    assert {k: v for k, v in a.items() if k != "file"} == {k: v for k, v in b.items() if k != "file"}


def test_settings_come_from_the_config(model: MoodModel, tmp_path: Path, tiny_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("analysis:\n  hop_seconds: 2.0\n  window_seconds: 2.0\nsmoothing:\n  time_constant_seconds: 0\n")
    assert main([str(songs(1)[0]), "--json", "--config", str(config_file), "--model", str(tiny_model_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    times = [u["stream_time"] for u in result["timeline"]]
    assert times[:4] == [2.0, 4.0, 6.0, 8.0]
    assert all(u["probabilities"] == u["instant"]["probabilities"] for u in result["timeline"])  # tau = 0


def test_too_short_and_missing_files(model: MoodModel, tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    sf.write(str(short), np.zeros(8000, dtype=np.float32), 16000)
    with pytest.raises(AnalyzeError, match=r"short\.wav: too short to analyse \(0\.50 s of audio; at least 1\.0 s needed\)"):
        analyze_file(short, model, load_config())
    with pytest.raises(AnalyzeError, match=r"missing\.flac: no such file"):
        analyze_file(tmp_path / "missing.flac", model, load_config())


def test_setup_errors_exit_2(tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = str(tmp_path / "x.wav")
    assert main([file, "--model", str(tmp_path / "none.onnx")]) == 2
    assert "none.onnx: no such model file" in capsys.readouterr().err
    assert main([file, "--model", str(tiny_model_path), "--preset", "loud"]) == 2
    assert "unknown preset 'loud' (presets: default, subtle, dramatic" in capsys.readouterr().err
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("analysis:\n  hop: 2\n")
    assert main([file, "--config", str(bad_config), "--model", str(tiny_model_path)]) == 2
    assert "unknown key 'analysis.hop'" in capsys.readouterr().err


def test_cli_takes_folders(tiny_model_path: Path, tmp_path: Path) -> None:
    """A folder is searched recursively for audio files (sorted); other files are left alone; a missing path and a
    folder without audio are named, and the rest is still analysed."""
    import soundfile as sf

    album = tmp_path / "album"
    (album / "disc2").mkdir(parents=True)
    t = np.arange(3 * 16000) / 16000
    sf.write(album / "b.wav", 0.2 * np.sin(2 * np.pi * 440 * t), 16000)
    sf.write(album / "disc2" / "a.flac", 0.2 * np.sin(2 * np.pi * 220 * t), 16000)
    (album / "notes.txt").write_text("not audio")
    (tmp_path / "empty").mkdir()
    r = cli(str(album), str(tmp_path / "missing"), str(tmp_path / "empty"), "--json", "--model", str(tiny_model_path))
    assert r.returncode == 1, r.stderr
    assert [json.loads(line)["file"] for line in r.stdout.splitlines()] == [str(album / "b.wav"), str(album / "disc2" / "a.flac")]
    assert f"error: {tmp_path / 'missing'}: no such file or folder" in r.stderr
    assert f"error: {tmp_path / 'empty'}: no audio files" in r.stderr

"""Decoding by what the decoder returns: the same file gives the same samples in any process, whatever its heap held
before; a file that stops before its declared length is reported as truncated (how much decoded, where it stopped);
`analyze`, training and the streaming client read the same samples.

The MP3s here are made by the test (libsndfile's LAME encoder writes a Xing/Info header with the frame count, as
most encoders do); cutting bytes off the end leaves that header's length in place, which is how a cut download or a
truncated upload looks to a decoder.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sendreturn_mood.audio.files import AudioFile, DecodeError, Truncated, decode, mono_blocks, to_mono
from sendreturn_mood.config import load_config
from sendreturn_mood.model.contract import MoodModel
from sendreturn_mood.room.offline import AnalyzeError, analyze_file
from tests.conftest import REPO

RATE = 44100
SECONDS = 30.0


def music(seconds: float = SECONDS, rate: int = RATE) -> np.ndarray:
    """Stereo test music: a chord that changes every 2 s, with a beat-like envelope (loud enough not to be silent)."""
    t = np.arange(int(seconds * rate)) / rate
    root = 220.0 * 2 ** (np.floor(t / 2.0) % 5 / 12)
    env = 0.5 + 0.5 * np.exp(-((t * 2.0) % 1.0) * 6)
    y = sum(np.sin(2 * np.pi * root * r * t) for r in (1.0, 1.26, 1.5)) / 3 * env * 0.4
    return np.stack([y, 0.8 * y], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def mp3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mp3") / "song.mp3"
    sf.write(path, music(), RATE, format="MP3")
    return path


def cut(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


@pytest.fixture(scope="module")
def slightly_short(mp3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its header declares ~0.3 s more than the decoder finds (within the tolerance: not truncated): what an
    ordinary MP3 with an estimated length looks like, and what soundfile's blocks() filled from the heap."""
    return cut(mp3, tmp_path_factory.mktemp("short") / "short.mp3", 1 - 0.3 / SECONDS)


def dirty_the_heap(frames: int) -> None:
    """Leave freed heap memory full of huge floats, the size of a decoder's buffer (glibc then serves the next
    allocation of that size from the heap, not from fresh zeroed pages)."""
    for _ in range(3):
        for size in (frames * 2, frames, frames // 2):
            junk = np.full(size, 3.8e30, dtype=np.float32)
            del junk
    gc.collect()


def test_declared_length_is_only_a_claim(slightly_short: Path) -> None:
    with AudioFile(slightly_short) as f:
        blocks = [b for b, _ in f.blocks(RATE * 7)]
        assert f.declared_frames - f.decoded_frames > RATE * 0.2  # the header's estimate is longer than the audio
    y = np.concatenate(blocks)
    assert len(y) == f.decoded_frames and np.abs(y).max() <= 1.0
    assert [last for _, last in AudioFile(slightly_short).blocks(RATE * 7)] == [False] * (len(blocks) - 1) + [True]


def test_same_mp3_after_the_heap_is_dirtied_gives_the_same_timeline(slightly_short: Path, tiny_model_path: Path) -> None:
    model, config = MoodModel(tiny_model_path), load_config()
    first = analyze_file(slightly_short, model, config)
    with AudioFile(slightly_short) as f:
        dirty_the_heap(f.declared_frames * f.channels)
    second = analyze_file(slightly_short, model, config)
    assert second == first
    assert first["duration"] == pytest.approx(decode(slightly_short)[0].size / RATE, abs=0.01)


def test_same_samples_in_a_fresh_process_and_a_used_one(slightly_short: Path) -> None:
    here, _ = decode(slightly_short)
    code = (
        "import sys, numpy as np; from sendreturn_mood.audio.files import decode; "
        "[np.full(n, 3.8e30, np.float32) for n in (2_700_000, 2_600_000, 1_300_000)]; "
        f"y, _ = decode({str(slightly_short)!r}); sys.stdout.write(f'{{y.size}} {{float(np.abs(y).sum()):.6f}}')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env=dict(os.environ, OPENBLAS_NUM_THREADS="1")).stdout
    assert out == f"{here.size} {float(np.abs(here).sum()):.6f}"


def test_truncated_mp3_is_reported_as_truncated(mp3: Path, tmp_path: Path, tiny_model_path: Path) -> None:
    short = cut(mp3, tmp_path / "cut.mp3", 0.25)
    with pytest.raises(Truncated) as e:
        decode(short)
    assert 6.0 < e.value.decoded_seconds < 9.0 and e.value.declared_seconds == pytest.approx(SECONDS, abs=0.1)
    assert "truncated: the decoder stopped at 7." in str(e.value) and "of the 30.00 s the file declares" in str(e.value)
    with pytest.raises(AnalyzeError, match=r"cut\.mp3: truncated: the decoder stopped at 7\.\d\d s of the 30\.00 s"):
        analyze_file(short, MoodModel(tiny_model_path), load_config())


def test_analyze_reports_the_truncated_file_and_analyses_the_others(mp3: Path, tmp_path: Path, tiny_model_path: Path) -> None:
    cut(mp3, tmp_path / "a_cut.mp3", 0.25)
    (tmp_path / "b_whole.mp3").write_bytes(mp3.read_bytes())
    r = subprocess.run(
        [sys.executable, "-m", "sendreturn_mood", "analyze", "--json", "--model", str(tiny_model_path), str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"), timeout=120,
    )
    assert r.returncode == 1
    assert "a_cut.mp3: truncated: the decoder stopped at" in r.stderr
    assert [line.count('"file"') for line in r.stdout.splitlines()] == [1] and "b_whole.mp3" in r.stdout


def test_not_audio_and_empty_say_so(tmp_path: Path) -> None:
    (tmp_path / "notes.mp3").write_text("not audio at all\n" * 50)
    with pytest.raises(DecodeError, match="corrupt or unsupported audio"):
        AudioFile(tmp_path / "notes.mp3")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(DecodeError):
        AudioFile(tmp_path / "empty.wav")


def test_the_streaming_client_sends_the_samples_analyze_reads(slightly_short: Path) -> None:
    """libmpg123 decodes slightly differently around a point where a read stopped, so every reader reads the same
    blocks; the client's chunks, put back together, are analyze's samples, and end where the decoder ended."""
    from sendreturn_mood.client import _file_chunks

    rate, blocks = mono_blocks(slightly_short)
    analysed = np.concatenate(list(blocks))
    with AudioFile(slightly_short) as f:
        chunks = list(_file_chunks(f, 0, 4410))
    assert sum(n for n, _ in chunks) == len(analysed)
    assert np.array_equal(np.concatenate([to_mono(c) for _, c in chunks]), analysed)


def test_training_decodes_what_analyze_decodes(slightly_short: Path) -> None:
    from training.cache import decode as training_decode

    ours, rate = decode(slightly_short)
    assert np.array_equal(training_decode(slightly_short, rate), ours)


@pytest.mark.parametrize("fmt", ["WAV", "OGG"])
def test_a_cut_wav_or_ogg_is_reported_as_truncated(fmt: str, tmp_path: Path) -> None:
    """libsndfile counts only the frames a cut WAV still holds and gives a cut Ogg no length at all; what it noticed
    (the data chunk's declared size, the missing end-of-stream page) is what says the file was cut."""
    whole = tmp_path / f"whole.{fmt.lower()}"
    sf.write(whole, music(10.0)[:, 0], RATE, format=fmt)
    assert decode(whole)[0].size == RATE * 10
    with pytest.raises(Truncated, match="truncated"):
        decode(cut(whole, tmp_path / f"cut.{fmt.lower()}", 0.3))

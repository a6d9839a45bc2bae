"""The cheaper audio path must not change what the shipped model hears, on real music (skipped without the data).

Two choices made for cost are checked here against the reference they replaced: soxr "MQ" resampling against "HQ"
(a 16 kHz song brought to 48 kHz and back), and scipy's FFT in the front end against numpy's. Both may move log-mel
values by float rounding (through the recipe's float16 step, up to ~5e-4), never the model's answer.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr

from sendreturn_mood.audio import frontend
from sendreturn_mood.model.contract import MoodModel
from tests.conftest import shared_data_or_skip


@pytest.fixture(scope="module")
def model() -> MoodModel:
    return MoodModel()


@pytest.fixture(scope="module")
def songs() -> list[np.ndarray]:
    files = sorted(shared_data_or_skip("moods-4q").glob("Q*/*.mp3"))[::170][:4]
    out = []
    for f in files:
        y, sr = sf.read(str(f), dtype="float32")
        assert sr == 16000
        out.append(y if y.ndim == 1 else y.mean(axis=1, dtype=np.float32))
    return out


def windows(lm: np.ndarray, patch: int) -> np.ndarray:
    return np.stack([lm[:, i : i + patch] for i in range(0, lm.shape[1] - patch, patch // 2)])


def assert_same_answers(model: MoodModel, a: np.ndarray, b: np.ndarray) -> None:
    pa, pb = model.predict(a).moods, model.predict(b).moods
    assert np.max(np.abs(pa - pb)) < 1e-4
    np.testing.assert_array_equal(pa.argmax(axis=1), pb.argmax(axis=1))


def test_mq_resampling_gives_the_model_what_hq_gives(model: MoodModel, songs: list[np.ndarray]) -> None:
    spec, patch = model.info.frontend, model.info.patch_frames
    for y in songs:
        y48 = soxr.resample(y, 16000, 48000, quality="VHQ")
        hq = frontend.log_mel(soxr.resample(y48, 48000, 16000, quality="HQ")[: len(y)], spec)
        mq = frontend.log_mel(soxr.resample(y48, 48000, 16000, quality="MQ")[: len(y)], spec)
        assert np.mean(np.abs(hq - mq)) < 1e-5
        assert_same_answers(model, windows(hq, patch), windows(mq, patch))


def test_scipy_fft_gives_the_model_what_numpy_fft_gives(model: MoodModel, songs: list[np.ndarray], monkeypatch) -> None:
    spec, patch = model.info.frontend, model.info.patch_frames
    for y in songs:
        ours = frontend.log_mel(y, spec)
        with monkeypatch.context() as m:
            m.setattr(frontend.scipy.fft, "rfft", np.fft.rfft)
            reference = frontend.log_mel(y, spec)
        assert np.max(np.abs(ours - reference)) < 1e-3
        assert_same_answers(model, windows(ours, patch), windows(reference, patch))

"""PCM decoding: both wire encodings, 1-8 channels, downmix, and every `bad_audio` case of protocol v1."""

from __future__ import annotations

import numpy as np
import pytest

from sendreturn_mood.protocol import MAX_CHANNELS
from sendreturn_mood.audio.pcm import ENCODINGS, BadAudio, bytes_per_frame, decode, encode


def interleaved(channels: int, frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.9, 0.9, size=(frames, channels)).astype(np.float32)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("channels", range(1, MAX_CHANNELS + 1))
def test_round_trip_and_downmix_is_the_channel_mean(encoding: str, channels: int) -> None:
    x = interleaved(channels, 480, seed=channels)
    data = encode(x.ravel(), encoding)
    assert len(data) == 480 * bytes_per_frame(encoding, channels)
    mono = decode(data, encoding, channels)
    assert mono.dtype == np.float32 and mono.shape == (480,)
    tolerance = 1 / 32768 if encoding == "pcm_s16le" else 1e-7
    np.testing.assert_allclose(mono, x.mean(axis=1), atol=tolerance)


def test_s16le_scale_and_byte_order() -> None:
    data = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    assert data[:4] == b"\x00\x00\x00\x40"  # little-endian on the wire
    np.testing.assert_array_equal(decode(data, "pcm_s16le", 1), [0.0, 0.5, -1.0, 32767 / 32768])


def test_f32le_byte_order() -> None:
    data = np.array([0.25, -1.0], dtype="<f4").tobytes()
    np.testing.assert_array_equal(decode(data, "pcm_f32le", 1), [0.25, -1.0])


def test_opposite_channels_cancel_in_the_downmix() -> None:
    x = np.stack([np.full(10, 0.5), np.full(10, -0.5)], axis=1).astype(np.float32)
    assert np.all(decode(encode(x.ravel(), "pcm_f32le"), "pcm_f32le", 2) == 0.0)


def test_encode_clips_instead_of_wrapping() -> None:
    data = encode(np.array([1.5, -1.5], dtype=np.float32), "pcm_s16le")
    np.testing.assert_array_equal(np.frombuffer(data, "<i2"), [32767, -32768])


def test_empty_frame_is_no_audio() -> None:
    assert decode(b"", "pcm_s16le", 2).size == 0


@pytest.mark.parametrize(
    ("encoding", "channels", "n_bytes"),
    [("pcm_s16le", 1, 3), ("pcm_s16le", 2, 6), ("pcm_f32le", 1, 6), ("pcm_f32le", 2, 12), ("pcm_f32le", 8, 36)],
)
def test_partial_sample_frames_are_bad_audio(encoding: str, channels: int, n_bytes: int) -> None:
    with pytest.raises(BadAudio, match=f"{n_bytes} bytes is not a whole number of sample frames"):
        decode(b"\x00" * n_bytes, encoding, channels)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats_are_bad_audio(bad: float) -> None:
    x = np.zeros(8, dtype=np.float32)
    x[5] = bad
    with pytest.raises(BadAudio, match="NaN or infinite"):
        decode(x.astype("<f4").tobytes(), "pcm_f32le", 2)


def test_unknown_encoding_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        encode(np.zeros(4), "pcm_u8")


@pytest.mark.parametrize("channels", range(1, MAX_CHANNELS + 1))
def test_s16le_downmix_is_bit_identical_to_the_scaled_channel_mean(channels: int) -> None:
    """The one-pass integer downmix must give exactly what scaling each channel to [-1, 1) and averaging gave (the
    features the shipped model was trained and checked against), over the whole int16 range."""
    x = np.random.default_rng(channels).integers(-32768, 32768, size=4800 * channels).astype("<i2")
    scaled = x.astype(np.float32) / np.float32(32768)
    expected = scaled[0::channels].copy()
    for k in range(1, channels):
        expected += scaled[k::channels]  # exact: multiples of 2**-15 below 8 in magnitude
    expected /= np.float32(channels)
    np.testing.assert_array_equal(decode(x.tobytes(), "pcm_s16le", channels), expected)

"""`AnalysisStream`: windows at the right frame counts, identical whatever the chunking, and the tail-window rules.

The server (per room) and `analyze` (per file) both cut windows with this class; these tests pin the geometry so
that "analyze and the server agree" holds by construction.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sendreturn_mood.audio.frontend import FrontEndSpec, StreamingLogMel, log_mel
from sendreturn_mood.audio.pipeline import EMIT_FRAMES, AnalysisStream, Window, WindowPlan
from sendreturn_mood.audio.resample import StreamingResampler, resample

SPEC = FrontEndSpec()  # 16 kHz, hop 256: 62.5 frames per second
PLAN = WindowPlan.from_seconds(SPEC, window_seconds=3.0, hop_seconds=1.5, min_seconds=1.0)
TOLERANCE = 1e-4


def noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * rng.standard_normal(t.size) * (1 + np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)


def run(y: np.ndarray, rate: int, cuts: list[int], plan: WindowPlan = PLAN, finish: bool = True) -> list[Window]:
    s = AnalysisStream(SPEC, rate, plan)
    out, start = [], 0
    for c in sorted(set(cuts)) + [len(y)]:
        out += s.push(y[start:c])
        start = c
    if finish:
        out += s.finish()
    return out


def test_plan_from_seconds() -> None:
    assert (PLAN.window_frames, PLAN.hop_frames, PLAN.min_frames) == (188, 94, 62)


def test_windows_at_the_right_frame_counts_and_times() -> None:
    y = noise(10.0, 16000)
    windows = run(y, 16000, list(range(0, len(y), 3200)), finish=False)
    total = 1 + (len(y) - SPEC.n_fft // 2) // SPEC.hop_length  # frames emitted before the end is known
    assert len(windows) == 1 + (total - PLAN.window_frames) // PLAN.hop_frames
    for i, w in enumerate(windows):
        end = PLAN.window_frames + i * PLAN.hop_frames
        assert w.logmel.shape == (SPEC.n_mels, PLAN.window_frames)
        assert w.logmel.dtype == np.float32
        assert w.stream_time == pytest.approx(end * SPEC.hop_length / SPEC.sample_rate)
        assert not w.final


def test_windows_are_slices_of_the_offline_log_mel() -> None:
    y = noise(8.0, 16000, seed=1)
    offline = log_mel(y, SPEC)
    for i, w in enumerate(run(y, 16000, [777, 5000, 40000])):
        end = round(w.stream_time * SPEC.sample_rate / SPEC.hop_length)
        assert np.max(np.abs(w.logmel - offline[:, end - w.logmel.shape[1] : end])) <= TOLERANCE, f"window {i}"


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_other_rates_give_the_windows_of_the_resampled_audio(rate: int) -> None:
    y = noise(7.0, rate, seed=2)
    offline = log_mel(resample(y, rate, SPEC.sample_rate), SPEC)
    windows = run(y, rate, list(range(0, len(y), int(0.02 * rate))))
    assert len(windows) >= 3
    for w in windows:
        end = round(w.stream_time * SPEC.sample_rate / SPEC.hop_length)
        assert np.max(np.abs(w.logmel - offline[:, end - w.logmel.shape[1] : end])) <= TOLERANCE


@settings(max_examples=10, deadline=None)
@given(rate=st.sampled_from([16000, 44100]), seconds=st.floats(0.5, 7.0), data=st.data())
def test_windows_do_not_depend_on_chunking(rate: int, seconds: float, data: st.DataObject) -> None:
    y = noise(seconds, rate, seed=3)
    cuts = data.draw(st.lists(st.integers(0, len(y)), max_size=40), label="cuts")
    ref = run(y, rate, [])
    got = run(y, rate, cuts)
    assert [(w.stream_time, w.final, w.logmel.shape) for w in got] == [(w.stream_time, w.final, w.logmel.shape) for w in ref]
    for a, b in zip(got, ref):
        assert np.max(np.abs(a.logmel - b.logmel)) <= TOLERANCE


@settings(max_examples=15, deadline=None)
@given(rate=st.sampled_from([16000, 22050, 44100, 48000]), data=st.data())
def test_windows_come_out_of_the_push_that_completes_them(rate: int, data: st.DataObject) -> None:
    """The DSP is deferred (resampling every half second, the FFT when a window is due), never a window: each push
    returns exactly the windows that an eager resample + log-mel of everything received so far completes."""
    y = noise(6.0, rate, seed=8)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(y)), max_size=80), label="cuts")))
    s = AnalysisStream(SPEC, rate, PLAN)
    resampler, front = StreamingResampler(rate, SPEC.sample_rate), StreamingLogMel(SPEC)
    frames = due_before = start = 0
    for c in cuts + [len(y)]:
        got = s.push(y[start:c])
        frames += front.push(resampler.push(y[start:c])).shape[1]
        due = 0 if frames < PLAN.window_frames else 1 + (frames - PLAN.window_frames) // PLAN.hop_frames
        assert len(got) == due - due_before, f"after {c} samples"
        due_before, start = due, c


@settings(max_examples=25, deadline=None)
@given(rate=st.sampled_from([44100, 48000]), data=st.data())
def test_input_held_back_until_due_after_gives_the_same_windows_from_the_same_piece(rate: int, data: st.DataObject) -> None:
    """What session.Session does with integer PCM: pieces are held (undecoded) while `due_after` says no DSP would
    run, then pushed in one piece. Every piece returns the windows the eager stream returns for it, equal to the bit."""
    y = noise(6.0, rate, seed=9)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(y)), max_size=80), label="cuts")))
    eager, held_stream = AnalysisStream(SPEC, rate, PLAN), AnalysisStream(SPEC, rate, PLAN)
    held: list[np.ndarray] = []
    start = 0
    for c in cuts + [len(y)]:
        expected = eager.push(y[start:c])
        held.append(y[start:c])
        got = []
        if held_stream.due_after(sum(len(h) for h in held)):
            got = held_stream.push(np.concatenate(held))
            held = []
        assert len(got) == len(expected), f"after {c} samples"
        for a, b in zip(got, expected):
            assert a.stream_time == b.stream_time
            np.testing.assert_array_equal(a.logmel, b.logmel)
        start = c
    tail = held_stream.push(np.concatenate(held)) if held else []
    expected_tail, got_tail = eager.finish(), tail + held_stream.finish()
    assert [w.stream_time for w in got_tail] == [w.stream_time for w in expected_tail]
    for a, b in zip(got_tail, expected_tail):
        np.testing.assert_array_equal(a.logmel, b.logmel)


def test_final_window_covers_the_tail() -> None:
    """10 s: regular windows end at 188, 282, ...; the tail past the last one is long enough for a final window."""
    y = noise(10.0, 16000, seed=4)
    windows = run(y, 16000, [])
    total = 1 + len(y) // SPEC.hop_length  # after flush: all frames, right padding included
    last_regular = windows[-2]
    final = windows[-1]
    assert final.final and not last_regular.final
    assert final.stream_time == pytest.approx(total * SPEC.hop_length / SPEC.sample_rate)
    assert final.logmel.shape == (SPEC.n_mels, PLAN.window_frames)
    np.testing.assert_allclose(final.logmel, log_mel(y, SPEC)[:, -PLAN.window_frames :], atol=TOLERANCE)


def test_no_final_window_when_the_tail_is_shorter_than_min() -> None:
    # exactly one regular window (188 frames) plus a few frames: nothing new enough for a final window
    n = (PLAN.window_frames + 10) * SPEC.hop_length
    windows = run(noise(n / 16000, 16000, seed=5), 16000, [])
    assert len(windows) == 1 and not windows[0].final


def test_short_audio_gets_one_shorter_final_window() -> None:
    """2 s (< the 3 s window, >= min 1 s): one final window with every frame there is."""
    y = noise(2.0, 16000, seed=6)
    windows = run(y, 16000, [1000])
    assert len(windows) == 1 and windows[0].final
    assert windows[0].logmel.shape == (SPEC.n_mels, 1 + len(y) // SPEC.hop_length)
    np.testing.assert_allclose(windows[0].logmel, log_mel(y, SPEC), atol=TOLERANCE)


def test_audio_shorter_than_min_gives_nothing() -> None:
    assert run(noise(0.5, 16000), 16000, []) == []
    assert AnalysisStream(SPEC, 16000, PLAN).finish() == []


def test_finish_and_reset_start_a_new_track() -> None:
    y = noise(5.0, 48000, seed=7)
    s = AnalysisStream(SPEC, 48000, PLAN)
    first = s.push(y) + s.finish()
    assert s.seconds_received == 0.0
    second = s.push(y) + s.finish()
    assert [w.stream_time for w in first] == [w.stream_time for w in second]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.logmel, b.logmel)
    s.push(y[:30000])
    assert s.seconds_received == pytest.approx(30000 / 48000)
    s.reset()
    assert s.seconds_received == 0.0 and s.frames_total == 0
    assert [w.stream_time for w in s.push(y) + s.finish()] == [w.stream_time for w in first]


@pytest.mark.parametrize("rate", [16000, 48000])
def test_memory_is_bounded_by_the_window(rate: int) -> None:
    s = AnalysisStream(SPEC, rate, PLAN)
    for seconds in [1.0] * 20 + [60.0] + [0.1] * 40:  # a very large push grows the buffers; later pushes shrink them
        s.push(noise(seconds, rate))
        assert s.frames_buffered <= PLAN.window_frames
    # the bound is the point of this test: a window and a hop of frames, a quarter second of input, EMIT_FRAMES
    # frames' samples plus a resampled quarter second (about 220 kB at 48 kHz)
    assert s._ring.shape[1] <= PLAN.window_frames + EMIT_FRAMES + 20  # noqa: SLF001
    assert s._raw.size <= rate // 4  # noqa: SLF001
    assert s._logmel._buf.size <= (EMIT_FRAMES + 1) * SPEC.hop_length + SPEC.n_fft + SPEC.sample_rate // 4 + 64  # noqa: SLF001

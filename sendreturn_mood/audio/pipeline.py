"""One source's audio path: mono samples at the client's rate -> windows of log-mel frames, ready for the model.

    samples -> StreamingResampler -> StreamingLogMel -> rolling window -> Window every hop

The server (per room) and `analyze` (per file) both use this class, so they cut exactly the same windows from the
same audio whatever the chunking. Window boundaries are counted in front-end frames, never in wall-clock time:
the first window ends after `window_frames` frames, the next ones every `hop_frames` frames after it, and `finish`
adds a last window over the tail when enough new audio arrived since the previous one.

Per-push work is kept to a copy: a push appends the samples to a preallocated buffer, and the DSP runs in large
pieces: the resampler when a quarter of a second of input is pending, the FFT and mel product over `EMIT_FRAMES`
frames at once (or when a window falls due), written straight into a ring buffer of frames that is copied out only as
the window. A window comes out of the same push as if everything ran eagerly: the resampler's
output never runs ahead of the ideal count, so "could a window be due?" is answered without running anything
(tested). The resampler and the front end are exact under any chunking, so the windows are those of the offline
computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import Settings
from .frontend import FrontEndSpec, StreamingLogMel
from .resample import StreamingResampler


@dataclass(frozen=True)
class Window:
    logmel: np.ndarray  # [n_mels, frames] float32, an owned copy
    stream_time: float  # seconds of the track's audio up to the end of this window
    final: bool = False  # the tail window made by `finish`


@dataclass(frozen=True)
class WindowPlan:
    """Window geometry in front-end frames."""

    window_frames: int
    hop_frames: int
    min_frames: int

    @classmethod
    def from_seconds(cls, spec: FrontEndSpec, window_seconds: float, hop_seconds: float, min_seconds: float) -> "WindowPlan":
        return cls(
            window_frames=spec.seconds_to_frames(window_seconds),
            hop_frames=spec.seconds_to_frames(hop_seconds),
            min_frames=spec.seconds_to_frames(min_seconds),
        )


RESAMPLE_CHUNK_SECONDS = 0.25  # pending input resampled in one call once this much has arrived (soxr's per-call cost)
EMIT_FRAMES = 96  # frames computed in one call once this many are ready (or a window is due): about one call per hop


class AnalysisStream:
    """Streaming resample + log-mel + rolling window for one audio stream (one room's source, or one file).

    Memory is bounded by the window: the last `window_frames` frames plus one hop of new ones, and at most about
    `RESAMPLE_CHUNK_SECONDS` of input and one hop of resampled samples waiting for the DSP.
    """

    def __init__(self, spec: FrontEndSpec, in_rate: int, plan: WindowPlan) -> None:
        self.spec = spec
        self.in_rate = int(in_rate)
        self.plan = plan
        self._resampler = StreamingResampler(self.in_rate, spec.sample_rate)
        self._chunk = max(1, int(self.in_rate * RESAMPLE_CHUNK_SECONDS))
        # samples the front end holds at most: EMIT_FRAMES frames, one frame's overlap and one resampled chunk
        pending = EMIT_FRAMES * spec.hop_length + spec.n_fft + -(-self._chunk * spec.sample_rate // self.in_rate) + 64
        self._logmel = StreamingLogMel(spec, pending)
        self._same_rate = self.in_rate == spec.sample_rate
        self._raw = np.zeros(0, dtype=np.float32)  # allocated by the first push: an idle source costs no buffers
        # a window's frames plus what one computation adds at most (EMIT_FRAMES - 1 pending + one resampled chunk)
        chunk_frames = -(-self._chunk * spec.sample_rate // (self.in_rate * spec.hop_length))
        self._ring_size = plan.window_frames + EMIT_FRAMES + chunk_frames + 2
        self._ring = np.zeros((spec.n_mels, 0), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Start a new track: forget all audio and window state."""
        self._resampler.reset()
        self._logmel.reset()
        self._raw_n = 0  # input samples waiting in _raw for the resampler
        self._ring_end = 0  # frames in _ring[:, :_ring_end]; the newest is at _ring_end - 1
        self._total = 0  # frames produced since reset
        self._next_end = self.plan.window_frames  # frame count at which the next window ends
        self._last_end = 0  # frame count at the end of the last window emitted
        self._samples_in = 0

    @property
    def seconds_received(self) -> float:
        """Seconds of input audio received since the last reset."""
        return self._samples_in / self.in_rate

    @property
    def frames_total(self) -> int:
        """Frames computed since the last reset (they are computed when a window needs them)."""
        return self._total

    @property
    def frames_buffered(self) -> int:
        """Frames held for the next windows (at most `window_frames` between pushes)."""
        return min(self._ring_end, self.plan.window_frames)

    def frame_time(self, frames: int) -> float:
        return self.spec.frames_to_seconds(frames)

    def push(self, mono: np.ndarray) -> list[Window]:
        """Mono float32 samples at `in_rate` -> the windows that became complete (usually 0 or 1)."""
        mono = np.asarray(mono, dtype=np.float32).ravel()
        self._samples_in += mono.size
        if self._same_rate:  # no resampler
            self._logmel.append(mono)
        elif self._raw_n == 0 and self.due_after(mono.size):
            self._logmel.append(self._resampler.push(mono))  # nothing pending: the piece goes to the resampler as it is
        else:
            self._buffer_raw(mono)
            if self.due_after(0):
                self._resample()  # a chunk is full, or a window could be due if everything pending were resampled
        pending = self._logmel.pending
        if pending >= EMIT_FRAMES or (pending and self._total + pending >= self._next_end):
            return self._add(pending)
        return []

    def due_after(self, samples: int) -> bool:
        """Would `samples` more input samples run any DSP: a full resampler chunk, or a window that could fall due?

        While it would not, `push` only buffers, so a caller may hold input back (undecoded bytes, see
        session.Session) and push it in one piece when this turns True: the windows are the same and come out of the
        push that completes them, as if every piece had been pushed at once (tested)."""
        if self._same_rate:
            return True
        n = self._raw_n + samples
        return n >= self._chunk or self._logmel.frames_after(self._resampler.max_output(n)) >= self._next_end

    def finish(self) -> list[Window]:
        """End of the stream: flush resampler and front end, and add a final window over the tail if it is long
        enough (at least `min_frames` new frames since the last window, and `min_frames` in all). Then reset."""
        self._resample()
        self._logmel.append(self._resampler.flush())
        out = self._add(self._logmel.pending)
        out += self._add(0, self._logmel.flush())
        new = self._total - self._last_end
        if new >= self.plan.min_frames and self._total >= self.plan.min_frames and new > 0:
            n = min(self.plan.window_frames, self._total)
            out.append(Window(self._ring[:, self._ring_end - n : self._ring_end].copy(), self.frame_time(self._total), final=True))
        self.reset()
        return out

    def _buffer_raw(self, mono: np.ndarray) -> None:
        end = self._raw_n + mono.size
        if end > self._raw.size:  # the first push, or a chunk larger than the buffer (bounded by the caller's chunk)
            grown = np.zeros(max(end, self._chunk), dtype=np.float32)
            grown[: self._raw_n] = self._raw[: self._raw_n]
            self._raw = grown
        self._raw[self._raw_n : end] = mono
        self._raw_n = end

    def _resample(self) -> None:
        if self._raw_n:
            self._logmel.append(self._resampler.push(self._raw[: self._raw_n]))
            self._raw_n = 0
            if self._raw.size > self._chunk:
                self._raw = np.zeros(self._chunk, dtype=np.float32)

    def _add(self, k: int, frames: np.ndarray | None = None) -> list[Window]:
        """Append k new frames (computed here by the front end into the ring, or given) and cut the due windows."""
        if frames is not None:
            k = frames.shape[1]
        if k <= 0:
            return []
        w = self.plan.window_frames
        if self._ring_end + k > self._ring.shape[1]:  # keep the last window's worth of frames, drop the older ones
            keep = min(w, self._ring_end)
            old = self._ring[:, self._ring_end - keep : self._ring_end]
            if keep + k > self._ring.shape[1]:  # the first frames, or more than the ring holds (a very large push)
                self._ring = np.zeros((self.spec.n_mels, max(self._ring_size, keep + k)), dtype=np.float32)
            self._ring[:, :keep] = old
            self._ring_end = keep
        dest = self._ring[:, self._ring_end : self._ring_end + k]
        if frames is None:
            self._logmel.emit(out=dest)
        else:
            dest[:] = frames
        self._ring_end += k
        self._total += k
        out = []
        while self._next_end <= self._total:
            end = self._ring_end - (self._total - self._next_end)
            out.append(Window(self._ring[:, end - w : end].copy(), self.frame_time(self._next_end)))
            self._last_end = self._next_end
            self._next_end += self.plan.hop_frames
        if self._ring.shape[1] > self._ring_size:  # back to the normal size after a very large push
            keep = min(w, self._ring_end)
            ring = np.zeros((self.spec.n_mels, self._ring_size), dtype=np.float32)
            ring[:, :keep] = self._ring[:, self._ring_end - keep : self._ring_end]
            self._ring, self._ring_end = ring, keep
        return out


def window_plan(info: Any, config: Settings) -> WindowPlan:
    """Window geometry from the config: `analysis.window_seconds` or, when null, the model's own patch length
    (`info` is the model's `ModelInfo`). The server and `analyze` both build their plans here, so they cut
    identical windows from the same audio."""
    a = config.analysis
    spec = info.frontend
    window = info.patch_frames if a.window_seconds is None else spec.seconds_to_frames(a.window_seconds)
    return WindowPlan(
        window_frames=window,
        hop_frames=spec.seconds_to_frames(a.hop_seconds),
        min_frames=spec.seconds_to_frames(a.min_seconds),
    )

"""One source's audio path: mono samples at the client's rate -> windows of log-mel frames, ready for the model.

    samples -> StreamingResampler -> StreamingLogMel -> rolling window -> Window every hop

The server (per room) and `analyze` (per file) both use this class, so they cut exactly the same windows from the
same audio whatever the chunking. Window boundaries are counted in front-end frames, never in wall-clock time:
the first window ends after `window_frames` frames, the next ones every `hop_frames` frames after it, and `finish`
adds a last window over the tail when enough new audio arrived since the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

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


class AnalysisStream:
    """Streaming resample + log-mel + rolling window for one audio stream (one room's source, or one file).

    Memory is bounded by the window: only the last `window_frames` frames are kept.
    """

    def __init__(self, spec: FrontEndSpec, in_rate: int, plan: WindowPlan) -> None:
        self.spec = spec
        self.in_rate = int(in_rate)
        self.plan = plan
        self._resampler = StreamingResampler(self.in_rate, spec.sample_rate)
        self._logmel = StreamingLogMel(spec)
        self.reset()

    def reset(self) -> None:
        """Start a new track: forget all audio and window state."""
        self._resampler.reset()
        self._logmel.reset()
        self._frames = np.zeros((self.spec.n_mels, 0), dtype=np.float32)
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
        return self._total

    def frame_time(self, frames: int) -> float:
        return self.spec.frames_to_seconds(frames)

    def push(self, mono: np.ndarray) -> list[Window]:
        """Mono float32 samples at `in_rate` -> the windows that became complete (usually 0 or 1)."""
        self._samples_in += len(mono)
        return self._add(self._logmel.push(self._resampler.push(mono)))

    def finish(self) -> list[Window]:
        """End of the stream: flush resampler and front end, and add a final window over the tail if it is long
        enough (at least `min_frames` new frames since the last window, and `min_frames` in all). Then reset."""
        frames = self._logmel.push(self._resampler.flush())
        out = self._add(np.concatenate([frames, self._logmel.flush()], axis=1))
        new = self._total - self._last_end
        if new >= self.plan.min_frames and self._total >= self.plan.min_frames and new > 0:
            n = min(self.plan.window_frames, self._total)
            out.append(Window(self._frames[:, -n:].copy(), self.frame_time(self._total), final=True))
        self.reset()
        return out

    def _add(self, frames: np.ndarray) -> list[Window]:
        if frames.shape[1] == 0:
            return []
        w = self.plan.window_frames
        self._frames = np.concatenate([self._frames, frames], axis=1)
        self._total += frames.shape[1]
        out = []
        while self._next_end <= self._total:
            end = self._frames.shape[1] - (self._total - self._next_end)
            out.append(Window(self._frames[:, end - w : end].copy(), self.frame_time(self._next_end)))
            self._last_end = self._next_end
            self._next_end += self.plan.hop_frames
        if self._frames.shape[1] > w:
            self._frames = self._frames[:, -w:].copy()
        return out


def window_plan(info: Any, config: dict[str, Any]) -> WindowPlan:
    """Window geometry from the config: `analysis.window_seconds` or, when null, the model's own patch length
    (`info` is the model's `ModelInfo`). The server and `analyze` both build their plans here, so they cut
    identical windows from the same audio."""
    a = config["analysis"]
    spec = info.frontend
    window = info.patch_frames if a["window_seconds"] is None else spec.seconds_to_frames(a["window_seconds"])
    return WindowPlan(
        window_frames=window,
        hop_frames=spec.seconds_to_frames(a["hop_seconds"]),
        min_frames=spec.seconds_to_frames(a["min_seconds"]),
    )

"""Streaming sample-rate conversion to the model's rate.

soxr's stream resampler keeps its filter state between chunks, so resampling a stream chunk by chunk gives the
same samples as resampling it whole (tested), with no clicks at chunk boundaries.
"""

from __future__ import annotations

import numpy as np
import soxr

# soxr's "MQ": the same passband as "HQ" (flat to 0.91 of the output Nyquist, 7.3 kHz at 16 kHz) with a 16-bit
# rather than 20-bit stopband (-107 dB instead of -130 dB at 8.2 kHz, far below what a log-mel frame resolves): the
# same log-mel and model outputs on real music (docs/PERFORMANCE.md) for half the per-stream memory (80 kB instead
# of 160 kB, per room) at the same CPU cost.
QUALITY = "MQ"


class StreamingResampler:
    """Mono float32 resampler; a pass-through when the rates match."""

    def __init__(self, in_rate: int, out_rate: int, quality: str = QUALITY) -> None:
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self.quality = quality
        self.reset()

    def reset(self) -> None:
        self.samples_in = 0
        self.samples_out = 0
        self._stream = (
            None
            if self.in_rate == self.out_rate
            else soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality=self.quality)
        )

    def push(self, y: np.ndarray) -> np.ndarray:
        y = np.ascontiguousarray(y, dtype=np.float32)
        self.samples_in += y.size
        if self._stream is not None:
            y = self._stream.resample_chunk(y, last=False)
        self.samples_out += y.size
        return y

    def max_output(self, more: int) -> int:
        """An upper bound on how many samples `push` would return for `more` further input samples: the stream never
        runs ahead of the ideal count (input x rate ratio); it lags it by the filter delay, which later input releases."""
        return -(-(self.samples_in + more) * self.out_rate // self.in_rate) + 1 - self.samples_out

    def flush(self) -> np.ndarray:
        """End of stream: the samples still inside the filter. The resampler is then ready for a new stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self.reset()
        return out


def resample(y: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Whole-signal resampling through the same streaming path (so offline and server audio agree)."""
    r = StreamingResampler(in_rate, out_rate)
    return np.concatenate([r.push(y), r.flush()])

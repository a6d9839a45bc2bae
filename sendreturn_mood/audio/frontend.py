"""The log-mel front end: one implementation, used offline (training, tests) and in streaming (the server).

Train/serve skew is the classic failure of systems like this one, so both paths share every transformation
below and differ only in how samples arrive. The recipe is data (`FrontEndSpec`), carried inside each model
file's metadata, so the runtime builds exactly the front end a model was trained with.

Frames follow librosa's convention with ``center=True``: frame ``t`` is centred on sample ``t * hop_length``
of the signal padded by ``n_fft // 2`` on both sides, and a signal of ``n`` samples has ``1 + n // hop_length``
frames. `StreamingLogMel` emits a frame as soon as its samples have arrived and the trailing frames (which need
the right-hand padding) on `flush`, so the concatenation of everything it emits equals `log_mel` over the
whole signal, whatever the chunking.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft

from ..errors import SendReturnError

LOG_TYPES = ("log10_scaled", "db")
PAD_MODES = ("constant", "reflect")
QUANTIZE = (None, "float16")


class FrontEndError(SendReturnError, ValueError):
    """A front-end recipe that cannot be built (unknown key, bad value)."""


@dataclass(frozen=True)
class FrontEndSpec:
    """Everything needed to turn samples at `sample_rate` into the model's log-mel input.

    log="log10_scaled":  log10(log_scale * mel + log_offset)  (musicnn's compression)
    log="db":            10 * log10(max(mel, amin))            (no top_db: it is a whole-signal operation)
    quantize="float16":  round the mel power through float16 first (what musicnn's extractor did)
    mean/std:            optional global normalisation applied last.
    """

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 256
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    n_mels: int = 96
    fmin: float = 0.0
    fmax: float | None = 8000.0
    mel_htk: bool = False
    mel_norm: str | None = "slaney"
    power: float = 2.0
    log: str = "log10_scaled"
    log_scale: float = 10000.0
    log_offset: float = 1.0
    amin: float = 1e-10
    quantize: str | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise FrontEndError(f"front end: {what}")

        need(isinstance(self.sample_rate, int) and 4000 <= self.sample_rate <= 192000, "sample_rate must be an int in 4000..192000")
        need(isinstance(self.n_fft, int) and self.n_fft >= 16, "n_fft must be an int >= 16")
        need(isinstance(self.hop_length, int) and 1 <= self.hop_length <= self.n_fft, "hop_length must be in 1..n_fft")
        need(self.window == "hann", "window must be 'hann'")
        need(self.center is True, "center must be true (streaming follows librosa's centred frames)")
        need(self.pad_mode in PAD_MODES, f"pad_mode must be one of {PAD_MODES}")
        need(isinstance(self.n_mels, int) and 8 <= self.n_mels <= 512, "n_mels must be an int in 8..512")
        need(self.power in (1.0, 2.0), "power must be 1 or 2")
        need(self.log in LOG_TYPES, f"log must be one of {LOG_TYPES}")
        need(self.quantize in QUANTIZE, f"quantize must be one of {QUANTIZE}")
        need((self.mean is None) == (self.std is None), "mean and std go together")
        need(self.std is None or self.std > 0, "std must be > 0")
        need(self.mel_norm in (None, "slaney"), "mel_norm must be null or 'slaney'")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrontEndSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FrontEndError(f"front end: unknown keys {unknown}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """A short stable hash of the recipe, for caches of computed features."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def frames_to_seconds(self, frames: int) -> float:
        return frames * self.hop_length / self.sample_rate

    def seconds_to_frames(self, seconds: float) -> int:
        return max(1, int(round(seconds * self.sample_rate / self.hop_length)))


@functools.lru_cache(maxsize=16)
def mel_filters(spec: FrontEndSpec) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32 mel filterbank (librosa's, so features match librosa's melspectrogram)."""
    import librosa  # imported here: only the filterbank comes from librosa, and its import is slow

    fb = librosa.filters.mel(
        sr=spec.sample_rate,
        n_fft=spec.n_fft,
        n_mels=spec.n_mels,
        fmin=spec.fmin,
        fmax=spec.fmax,
        htk=spec.mel_htk,
        norm=spec.mel_norm,
        dtype=np.float32,
    )
    fb.setflags(write=False)
    return fb


@functools.lru_cache(maxsize=16)
def mel_filters_sparse(spec: FrontEndSpec) -> Any:
    """The filterbank as a float64 CSR matrix. Each FFT bin lies in at most two triangles (~500 of 96 x 257 weights
    are non-zero), so the sparse product does 1/50 of the dense one's work; in float64 it gives bit-for-bit the dense
    float64 product (zeros add nothing) and, unlike float32 BLAS, does not depend on how many frames are in a call."""
    import scipy.sparse

    return scipy.sparse.csr_array(mel_filters(spec).astype(np.float64))


@functools.lru_cache(maxsize=16)
def stft_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window, as librosa/scipy use for the STFT."""
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    w.setflags(write=False)
    return w


def pad_left(y: np.ndarray, spec: FrontEndSpec) -> np.ndarray:
    """The left half of centre padding for a signal that starts with `y` (needs n_fft//2 + 1 samples for reflect)."""
    half = spec.n_fft // 2
    if spec.pad_mode == "reflect":
        return y[1 : half + 1][::-1].astype(np.float32)
    return np.zeros(half, dtype=np.float32)


def pad_right(y: np.ndarray, spec: FrontEndSpec) -> np.ndarray:
    """The right half of centre padding for a signal that ends with `y` (needs n_fft//2 + 1 samples for reflect)."""
    half = spec.n_fft // 2
    if spec.pad_mode == "reflect":
        return y[-half - 1 : -1][::-1].astype(np.float32)
    return np.zeros(half, dtype=np.float32)


def frame_signal(padded: np.ndarray, n_frames: int, spec: FrontEndSpec) -> np.ndarray:
    """[n_frames, n_fft] strided view of a padded signal, frame t starting at t * hop_length."""
    return np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, spec.n_fft),
        strides=(padded.strides[0] * spec.hop_length, padded.strides[0]),
        writeable=False,
    )


def frames_to_logmel(frames: np.ndarray, spec: FrontEndSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Frames [n, n_fft] -> log-mel [n_mels, n] float32. The one place the recipe is applied.

    `out`: a [n_mels, n] float32 array (or view) to write into instead of allocating (the streaming ring buffer)."""
    if out is None:
        out = np.empty((spec.n_mels, frames.shape[0]), dtype=np.float32)
    if frames.shape[0] == 0:
        return out
    # scipy's pocketfft build: half the cost of numpy's for float32 frames (results differ from numpy's in the last
    # bits; the same function serves training, offline and streaming, so they stay identical to each other)
    spectrum = scipy.fft.rfft(frames * stft_window(spec.n_fft), axis=-1)
    magnitude = np.abs(spectrum).astype(np.float32, copy=False)
    if spec.power == 2.0:
        magnitude *= magnitude
    # float64 product: float32 BLAS results depend on the number of frames in the call (kernel blocking), which made
    # streamed and offline frames differ by ~1 ulp and, through float16 quantisation, by up to 4e-4 (> the 1e-4 promise)
    mel = (mel_filters_sparse(spec) @ np.asarray(magnitude.T, dtype=np.float64, order="C")).astype(np.float32)
    if spec.quantize == "float16":
        mel = mel.astype(np.float16).astype(np.float32)
    if spec.log == "log10_scaled":
        mel *= np.float32(spec.log_scale)
        mel += np.float32(spec.log_offset)
    else:
        np.maximum(mel, np.float32(spec.amin), out=mel)
    np.log10(mel, out=out)
    if spec.log == "db":
        out *= np.float32(10.0)
    if spec.mean is not None:
        out -= np.float32(spec.mean)
        out /= np.float32(spec.std)
    return out


def n_frames_for(n_samples: int, spec: FrontEndSpec) -> int:
    return 1 + n_samples // spec.hop_length


def log_mel(y: np.ndarray, spec: FrontEndSpec) -> np.ndarray:
    """Offline log-mel of a whole mono float signal at spec.sample_rate -> [n_mels, 1 + len(y) // hop]."""
    y = np.asarray(y, dtype=np.float32).ravel()
    if spec.pad_mode == "reflect" and len(y) <= spec.n_fft // 2:
        raise FrontEndError(f"reflect padding needs more than {spec.n_fft // 2} samples, got {len(y)}")
    padded = np.concatenate([pad_left(y, spec), y, pad_right(y, spec)])
    return frames_to_logmel(frame_signal(padded, n_frames_for(len(y), spec), spec), spec)


class StreamingLogMel:
    """Incremental `log_mel`: push samples in any chunking, get exactly the frames the offline function gives.

    `push` = `append` + `emit`. A caller that needs frames only now and then (the analysis pipeline needs them once
    per hop) calls `append` per chunk and `emit` when it needs them: the FFT and the mel product then run once over
    many frames instead of a few per chunk, which is where the per-call overhead went. Samples live in one
    preallocated buffer (appended in place, compacted when full), not a new array per chunk.

    Memory is bounded by what the caller leaves pending: only the samples of frames not yet emitted are kept.
    """

    def __init__(self, spec: FrontEndSpec, capacity: int = 0) -> None:
        """`capacity`: samples the caller expects to leave pending at most (the buffer is allocated once at that
        size instead of growing by doubling: per room, memory is what it really needs)."""
        self.spec = spec
        self._capacity = max(4 * spec.n_fft, int(capacity))
        self.reset()

    def reset(self) -> None:
        if getattr(self, "_buf", None) is None or self._buf.size > self._capacity:
            self._buf = np.zeros(0, dtype=np.float32)  # padded-signal samples; allocated by the first samples
        self._start = 0  # _buf[_start:_end] holds the padded-signal samples from frame `_emitted` on
        self._end = 0
        self._started = False  # left padding applied
        self._head = np.zeros(0, dtype=np.float32)  # samples held until the left padding can be computed
        self._tail = np.zeros(0, dtype=np.float32)  # last samples seen, for right reflect padding
        self._n_samples = 0
        self._emitted = 0

    @property
    def frames_emitted(self) -> int:
        return self._emitted

    @property
    def pending(self) -> int:
        """Frames whose samples have all arrived and that `emit` would compute now."""
        size = self._end - self._start
        return 0 if size < self.spec.n_fft else 1 + (size - self.spec.n_fft) // self.spec.hop_length

    def frames_after(self, more: int) -> int:
        """Frames emitted plus pending if `more` further samples were appended (to decide whether to append yet)."""
        half = self.spec.n_fft // 2
        size = self._end - self._start + more
        if not self._started:
            n = self._head.size + more
            if self.spec.pad_mode == "reflect" and n <= half:
                return self._emitted
            size = half + n
        return self._emitted + (0 if size < self.spec.n_fft else 1 + (size - self.spec.n_fft) // self.spec.hop_length)

    def push(self, y: np.ndarray) -> np.ndarray:
        """Add mono samples; return the newly complete frames [n_mels, k] (k may be 0)."""
        self.append(y)
        return self.emit()

    def append(self, y: np.ndarray) -> None:
        """Add mono samples without computing frames (see `emit`)."""
        y = np.asarray(y, dtype=np.float32).ravel()
        if y.size == 0:
            return
        self._n_samples += y.size
        half = self.spec.n_fft // 2
        if self.spec.pad_mode == "reflect":
            self._tail = (y if y.size > half else np.concatenate([self._tail, y]))[-(half + 1) :].copy()
        if not self._started:
            self._head = np.concatenate([self._head, y])
            if self.spec.pad_mode == "reflect" and self._head.size <= half:
                return
            y = self._head
            self._write(pad_left(y, self.spec))
            self._head = np.zeros(0, dtype=np.float32)
            self._started = True
        self._write(y)

    def emit(self, out: np.ndarray | None = None) -> np.ndarray:
        """The frames whose samples have all arrived (`pending` of them), [n_mels, k]; written into `out` if given
        (a [n_mels, pending] float32 array or view)."""
        return self._emit(self.pending, out)

    def flush(self) -> np.ndarray:
        """End of signal: apply the right padding and return the remaining frames. The stream is then reset."""
        spec = self.spec
        if self._n_samples == 0:
            self.reset()
            return np.zeros((spec.n_mels, 0), dtype=np.float32)
        if not self._started:  # reflect padding with a signal shorter than n_fft//2 + 1: as log_mel, refuse
            n = self._n_samples
            self.reset()
            raise FrontEndError(f"reflect padding needs more than {spec.n_fft // 2} samples, got {n}")
        self._write(pad_right(self._tail, spec))
        out = self._emit(min(self.pending, n_frames_for(self._n_samples, spec) - self._emitted))
        self.reset()
        return out

    def _write(self, y: np.ndarray) -> None:
        n = y.size
        if self._end + n > self._buf.size:
            live = self._end - self._start
            if live + n > self._buf.size:
                grown = np.zeros(max(2 * self._buf.size, live + n, self._capacity), dtype=np.float32)
                grown[:live] = self._buf[self._start : self._end]
                self._buf = grown
            else:
                self._buf[:live] = self._buf[self._start : self._end]
            self._start, self._end = 0, live
        self._buf[self._end : self._end + n] = y
        self._end += n

    def _emit(self, k: int, out: np.ndarray | None = None) -> np.ndarray:
        spec = self.spec
        if k <= 0:
            return np.zeros((spec.n_mels, 0), dtype=np.float32) if out is None else out
        frames = frame_signal(self._buf[self._start : self._end], k, spec)
        result = frames_to_logmel(frames, spec, out)
        self._start += k * spec.hop_length
        self._emitted += k
        live = self._end - self._start
        if self._buf.size > max(self._capacity, 8 * live):  # grown by a very large chunk: give the memory back
            shrunk = np.zeros(max(self._capacity, 2 * live), dtype=np.float32)
            shrunk[:live] = self._buf[self._start : self._end]
            self._buf, self._start, self._end = shrunk, 0, live
        return result

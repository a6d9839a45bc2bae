"""Audio files: which files to read (folders expanded), and how to decode them so that every reader gets the same
samples: `analyze`, the HTTP analysis, training and the streaming client all decode through `AudioFile.blocks`.

Decoding goes by what the decoder actually returns. libsndfile's frame count is exact for WAV and FLAC but only an
estimate for MP3 (from the Xing/Info header, or from the file size and bit rate); soundfile's `blocks()` trusts that
count and hands out the unfilled tail of its buffer as audio when the decoder stops short: zeros in a fresh process,
whatever the heap held before in a used one (so one file gave different results from run to run). Here a read that
returns fewer frames than asked is the end, and nothing past what the decoder wrote is ever used.

When the decoder stops well before the length the file declares (a cut download, a truncated upload), that is
reported (`Truncated`: how much was decoded, where it stopped, what the file declared) rather than analysed as a
shorter or silent song. Decoder errors half-way say where they happened.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from ..errors import SendReturnError

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff")
READ_BLOCK_SECONDS = 60.0  # decoded this much at a time by every reader. Memory stays bounded, and every reader
# stops the decoder at the same places: libmpg123 (libsndfile's MP3 decoder) returns slightly different samples
# around a point where a read stopped (and prints "part2_3_length" warnings there), so equal samples need equal reads
TRUNCATION_TOLERANCE_SECONDS = 1.0  # an MP3's declared length may be off by a fraction of a second on a whole
# file (encoder padding, a header estimate); a file that ends more than this before its declared length was cut

Source = str | Path | IO[bytes]
DATA_CHUNK_RE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be \d+\)", re.M)  # libsndfile's WAV header log
BLOCK_ALIGN_RE = re.compile(r"Block Align\s*:\s*(\d+)")


class DecodeError(SendReturnError, ValueError):
    """Audio that cannot be decoded: not a format the decoder reads, corrupt, or stopped early. `decoded_seconds`
    is how much was decoded before it failed (0 when the file could not be opened at all)."""

    def __init__(self, message: str, decoded_seconds: float = 0.0) -> None:
        super().__init__(message)
        self.decoded_seconds = decoded_seconds


class Truncated(DecodeError):
    """The decoder ran out of audio well before the length the file itself declares."""

    def __init__(self, message: str, decoded_seconds: float, declared_seconds: float) -> None:
        super().__init__(message, decoded_seconds)
        self.declared_seconds = declared_seconds


SNIFF_BYTES = 12  # the start of a file that says which format it is


def sniff_format(head: bytes) -> str | None:
    """'wav', 'mp3', 'flac' or 'ogg' from a file's first SNIFF_BYTES (its magic number, not its name); None for
    anything else. MP3 is an ID3v2 tag or an MPEG audio frame sync (11 set bits, a layer other than the reserved
    one: ADTS AAC, which shares the sync, has layer 00)."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06):
        return "mp3"
    return None


def find_audio(paths: list[str | Path] | list[str] | list[Path]) -> list[Path]:
    """Files as given (any extension: the decoder decides), folders expanded recursively, sorted, to the files
    with an audio extension inside them. FileNotFoundError for a path that does not exist."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return out


def _decoder_errors() -> tuple[type[BaseException], ...]:
    import soundfile as sf

    return (sf.SoundFileError, RuntimeError, OSError, ValueError)


def decoder_reason(error: BaseException) -> str:
    """libsndfile's reason without its "Error opening 'FILE': " prefix. For an undecodable MP3 it says the file
    "does not exist", which is wrong (the file is there): that becomes what it means."""
    reason = str(error).split("': ", 1)[-1].strip()
    if "does not exist" in reason:
        return "the decoder found no audio it can read in it"
    return reason or type(error).__name__


class AudioFile:
    """An audio file opened for decoding (a path or a binary file object). DecodeError when it cannot be opened.

    `rate`, `channels`, `declared_frames` (what the file's header says: exact for WAV/FLAC, an estimate for MP3)
    and, while or after reading, `decoded_frames` (what the decoder actually returned)."""

    def __init__(self, source: Source) -> None:
        import soundfile as sf

        try:
            self._file = sf.SoundFile(source if not isinstance(source, Path) else str(source))
        except _decoder_errors() as e:
            raise DecodeError(f"corrupt or unsupported audio ({decoder_reason(e)})") from None
        self.rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self.declared_frames = max(0, int(self._file.frames))
        self.format = str(self._file.format)
        self.decoded_frames = 0
        self.ends_early = False  # the container says it was cut (an Ogg stream without its end-of-stream page)
        self._read_header_log(str(self._file.extra_info))

    def _read_header_log(self, log: str) -> None:
        """What libsndfile noticed while opening, which its frame count hides: a WAV whose data chunk declares more
        bytes than the file holds (it counts only what is there: "data : 882000 (should be 293970)"), an Ogg
        stream that ends without its end-of-stream page. Either is a cut file."""
        data = DATA_CHUNK_RE.search(log)
        align = BLOCK_ALIGN_RE.search(log)
        if data and align and int(align.group(1)) > 0:
            self.declared_frames = max(self.declared_frames, int(data.group(1)) // int(align.group(1)))
        self.ends_early = "ended unexpectedly" in log

    def __enter__(self) -> "AudioFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def seconds(self, frames: int) -> float:
        return frames / self.rate

    def blocks(self, block_frames: int, start: int = 0, strict: bool = True) -> Iterator[tuple[np.ndarray, bool]]:
        """([frames, channels] float32 block, is_last) from frame `start` on, `block_frames` at a time, until the
        decoder returns fewer frames than asked (every block holds only what the decoder wrote). A decoder error
        half-way is a DecodeError saying where; with `strict`, a file that ends more than
        TRUNCATION_TOLERANCE_SECONDS before its declared length is `Truncated` (raised after the last block)."""
        errors = _decoder_errors()
        if start:
            self._file.seek(start)
        self.decoded_frames = start
        pending: np.ndarray | None = None  # one block of look-ahead: a full block may be the last one
        while True:
            try:
                block = self._file.read(block_frames, dtype="float32", always_2d=True)
            except errors as e:  # somewhere in this block: the decoder returns nothing of a block it fails in
                at, to = self.seconds(self.decoded_frames), self.seconds(self.decoded_frames + block_frames)
                raise DecodeError(f"the decoder failed between {at:.2f} s and {to:.2f} s ({decoder_reason(e)})", at) from None
            self.decoded_frames += len(block)
            if len(block) < block_frames:  # the decoder has no more: the end, whatever the header said
                if pending is not None:
                    yield pending, not len(block)
                if len(block):
                    yield block, True
                break
            if pending is not None:
                yield pending, False
            pending = block
        if strict:
            self.check_complete()

    def check_complete(self) -> None:
        """Truncated when the decoder stopped well before the declared length (formats that declare none, or
        declare an estimate that is only ever short by less than the tolerance, pass)."""
        if self.ends_early:
            got = self.seconds(self.decoded_frames)
            raise Truncated(
                f"truncated: the {self.format} stream ends without its end-of-stream marker after {got:.2f} s; "
                "the rest is missing", got, got,
            )
        missing = self.declared_frames - self.decoded_frames
        if missing > TRUNCATION_TOLERANCE_SECONDS * self.rate:
            got, declared = self.seconds(self.decoded_frames), self.seconds(self.declared_frames)
            raise Truncated(
                f"truncated: the decoder stopped at {got:.2f} s of the {declared:.2f} s the file declares "
                f"({self.format}); the rest is missing or cannot be decoded",
                got,
                declared,
            )


def block_frames(rate: int) -> int:
    """Frames per read for audio at `rate` (READ_BLOCK_SECONDS): the one read size every reader uses."""
    return max(1024, int(rate * READ_BLOCK_SECONDS))


def to_mono(block: np.ndarray) -> np.ndarray:
    """[frames, channels] -> [frames] float32 (the mean of the channels)."""
    return block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else np.ascontiguousarray(block[:, 0])


def mono_blocks(source: Source) -> tuple[int, Iterator[np.ndarray]]:
    """(sample rate, iterator of mono float32 blocks) of a whole file. DecodeError (or Truncated) for audio that
    cannot be opened (raised here) or decoded to its end (raised by the iterator)."""
    f = AudioFile(source)

    def blocks() -> Iterator[np.ndarray]:
        with f:
            for block, _ in f.blocks(block_frames(f.rate)):
                yield to_mono(block)

    return f.rate, blocks()


def decode(source: Source, mono: bool = True) -> tuple[np.ndarray, int]:
    """A whole file -> (samples, rate): [frames] float32 when `mono`, else [frames, channels]. DecodeError (or
    Truncated) as `AudioFile.blocks` says."""
    with AudioFile(source) as f:
        parts = [to_mono(b) if mono else b for b, _ in f.blocks(block_frames(f.rate))]
    if not parts:
        return np.zeros(0 if mono else (0, f.channels), dtype=np.float32), f.rate
    return np.concatenate(parts), f.rate

#!/usr/bin/env python3
"""Stream audio files into a sendreturn-mood room as its source, and print the room's mood updates.

What it shows: the SOURCE side of wire protocol v1 (PROTOCOL.md) - open
`ws://HOST:PORT/v1/rooms/{room}?role=source&encoding=...&sample_rate=...&channels=...`, send a `track` message per
file, raw PCM binary frames paced in real time, `end` at the end, and read `welcome` / `mood` / `source` / `error`
messages from the same connection. When the connection drops it reconnects with exponential backoff and resumes the
current file where it was.

Run it (server first: `python -m sendreturn_mood serve`):

    python examples/stream_file.py song.mp3 --room lobby
    python examples/stream_file.py ~/Music/album/ --room lobby --loop          # a folder, forever
    python examples/stream_file.py a.wav b.flac --speed 4 --json               # 4x real time, raw JSON lines

and watch the same room from another terminal with `python examples/listen.py --room lobby`.

Copy it freely: it needs only `websockets`, `numpy` and `soundfile` (wav, flac, ogg, mp3 with libsndfile >= 1.1);
`--sample-rate` additionally needs `soxr` to resample.

Exit status: 0 done, 1 gave up (connection/server error) or a file could not be read (it is skipped),
2 refused (bad request, unauthorized) or bad arguments, 130 interrupted (Ctrl-C: it still sends `end` and waits for
the server's last update, so listeners see the stream end rather than a lost source).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import numpy as np
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

DEFAULT_URL = "ws://127.0.0.1:8765"
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".aif", ".aiff")
ENCODINGS = ("pcm_s16le", "pcm_f32le")
BACKOFF_START_S = 0.5  # first reconnect delay; doubles each failed attempt ...
BACKOFF_MAX_S = 10.0  # ... up to this
END_TIMEOUT_S = 30.0  # after `end`, how long to wait for the server's last update and close
READ_SECONDS = 10.0  # audio decoded per file read (then sent in --chunk-ms pieces)
FATAL_STATUS = {400, 401, 403, 404}  # refusals that retrying cannot fix (409 source_taken, 503 server_full: retry)


class Refused(Exception):
    """The server refused the handshake for a reason retrying cannot fix."""


class FatalError(Exception):
    """The server sent a fatal error message for our stream (e.g. bad_audio, unauthorized)."""


@dataclass
class Track:
    path: Path
    position: int = 0  # frames of the file already sent (resume point after a reconnect)


@dataclass
class Stats:
    updates: int = 0
    errors: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------- files


def find_audio(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) to the audio files inside them."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise SystemExit(f"error: {p} does not exist")
    if not out:
        raise SystemExit("error: no audio files found")
    return out


def stream_format(info: sf.SoundFile, args: argparse.Namespace) -> tuple[int, int]:
    """(sample_rate, channels) to announce for this file: the file's own unless overridden.

    The format is fixed per connection (protocol v1), so a file whose format differs from the previous one opens
    a new connection."""
    rate = args.sample_rate or info.samplerate
    channels = args.channels or min(info.channels, 8)
    return rate, channels


def to_channels(block: np.ndarray, channels: int) -> np.ndarray:
    """[frames, file_channels] -> [frames, channels]: downmix to mono, or duplicate mono, or keep."""
    if block.shape[1] == channels:
        return block
    mono = block.mean(axis=1, keepdims=True)
    return np.repeat(mono, channels, axis=1)


def encode(block: np.ndarray, encoding: str) -> bytes:
    """Interleaved float frames -> PCM bytes (the same conversion as sendreturn_mood.pcm.encode)."""
    if encoding == "pcm_s16le":
        return (np.clip(block, -1.0, 32767 / 32768) * 32768.0).round().astype("<i2").tobytes()
    return block.astype("<f4").tobytes()


def read_chunks(f: sf.SoundFile, start: int, chunk: int):
    """[frames, channels] float32 chunks of `chunk` frames from frame `start` on.

    Decodes READ_SECONDS at a time and slices: memory stays bounded for long files, and the MP3 decoder is not
    stopped at every chunk boundary (libmpg123 prints spurious warnings when it is)."""
    if start:
        f.seek(start)
    block_frames = max(chunk, int(f.samplerate * READ_SECONDS) // chunk * chunk)
    while True:
        block = f.read(block_frames, dtype="float32", always_2d=True)
        if len(block) == 0:
            return
        for i in range(0, len(block), chunk):
            yield block[i : i + chunk]


def track_message(path: Path) -> dict:
    """The `track` message for a file: id from the file name, title/artist from its tags when it has them."""
    msg = {"type": "track", "id": f"file:{path.name}", "title": path.stem}
    try:
        tags = sf.SoundFile(path).copy_metadata()
    except (sf.LibsndfileError, RuntimeError):
        tags = {}
    if tags.get("title"):
        msg["title"] = tags["title"]
    if tags.get("artist"):
        msg["artist"] = tags["artist"]
    return msg


# ------------------------------------------------------------------------------------------------------- printing


def number(v: object) -> str:
    """Effect values as people read them: 15983 Hz, 0.24 mix, '#ffd166' colours as they are."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"


def describe_update(msg: dict) -> str:
    """One compact line per mood update."""
    probs = " ".join(f"{k}={v:.2f}" for k, v in msg.get("probabilities", {}).items())
    effects = " ".join(f"{k}={number(v)}" for k, v in msg.get("effects", {}).items())
    genre = f" genre={msg['genre']['label']}" if msg.get("genre") else ""
    return (
        f"#{msg.get('seq')} t={msg.get('stream_time', 0):6.1f}s {msg.get('mood', '?'):>6} "
        f"({msg.get('confidence', 0):.2f}) V={msg.get('valence', 0):+.2f} A={msg.get('arousal', 0):+.2f}"
        f"{genre} | {probs} | {effects} | {msg.get('latency_ms', 0):.0f} ms"
    )


def show(raw: str, msg: dict, as_json: bool) -> None:
    if as_json:
        print(raw, flush=True)  # exactly what the server sent
        return
    kind = msg.get("type")
    if kind == "mood":
        print(describe_update(msg), flush=True)
    elif kind == "welcome":
        model = msg.get("model", {})
        print(
            f"connected to room {msg.get('room')!r} as {msg.get('role')}: model {model.get('name')} "
            f"{model.get('version')}, audio {msg.get('audio')}, hop {msg.get('analysis', {}).get('hop_seconds')} s, "
            f"preset {msg.get('preset')}",
            flush=True,
        )
    elif kind == "error":
        print(f"server error: {json.dumps(msg)}", file=sys.stderr, flush=True)
    elif kind == "source":
        print(f"source {msg.get('state')}", flush=True)
    else:
        print(json.dumps(msg), flush=True)


def refusal_text(exc: InvalidStatus) -> str:
    """The refused handshake's status and JSON body, as the person should see it."""
    body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
    return f"HTTP {exc.response.status_code} {body.strip()}"


# ------------------------------------------------------------------------------------------------------ streaming


class Streamer:
    """Streams the files in order over as few connections as possible; reconnects and resumes on drops."""

    def __init__(self, files: list[Path], args: argparse.Namespace) -> None:
        self.files = files
        self.args = args
        self.stats = Stats()
        self.unreadable: list[Path] = []
        self._ws: ClientConnection | None = None
        self._fmt: tuple[int, int] | None = None  # (rate, channels) of the open connection
        self._reader: asyncio.Task | None = None  # prints what the server sends on the open connection

    def note(self, text: str) -> None:
        """Progress for the person; on stderr with --json, so that stdout stays pure JSON lines."""
        print(text, file=sys.stderr if self.args.json else sys.stdout, flush=True)

    def url(self, rate: int, channels: int) -> str:
        params = {"role": "source", "encoding": self.args.encoding, "sample_rate": rate, "channels": channels}
        if self.args.preset:
            params["preset"] = self.args.preset
        if self.args.token:
            params["token"] = self.args.token
        return f"{self.args.url.rstrip('/')}/v1/rooms/{quote(self.args.room, safe='')}?{urlencode(params)}"

    async def run(self) -> int:
        try:
            while True:
                for path in self.files:
                    try:
                        await self.stream_track(Track(path))
                    except sf.LibsndfileError as exc:  # not audio, or a format libsndfile cannot read: skip it
                        print(f"cannot read {path}: {exc}; skipped", file=sys.stderr, flush=True)
                        self.unreadable.append(path)
                if not self.args.loop or len(set(self.unreadable)) == len(self.files):
                    break
            await self.finish()
            return 1 if self.unreadable else 0
        except Refused as exc:
            print(f"refused: {exc}", file=sys.stderr, flush=True)
            return 2
        except FatalError as exc:
            print(f"stopped by the server: {exc}", file=sys.stderr, flush=True)
            return 1
        except asyncio.CancelledError:  # Ctrl-C (asyncio.run cancels this task): end the stream cleanly, then stop
            if self._ws is not None:
                self.note("interrupted: sending `end`")
                with contextlib.suppress(Exception):
                    await self.finish()
            raise
        finally:
            if self._ws is not None:
                await self._ws.close()

    async def open(self, rate: int, channels: int) -> None:
        """Connect (again) with this format, with exponential backoff on failures that may be temporary."""
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        delay = BACKOFF_START_S
        attempt = 0
        while True:
            try:
                ws = await connect(self.url(rate, channels), compression=None, proxy=None, open_timeout=10)
                break
            except InvalidStatus as exc:
                if exc.response.status_code in FATAL_STATUS:
                    raise Refused(refusal_text(exc)) from exc
                reason = refusal_text(exc)
            except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            attempt += 1
            if self.args.retries >= 0 and attempt > self.args.retries:
                raise FatalError(f"could not connect after {attempt} attempts ({reason})")
            print(f"connect failed ({reason}); retrying in {delay:.1f} s", file=sys.stderr, flush=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
        self._ws, self._fmt = ws, (rate, channels)
        self.stats.errors.clear()  # a fatal error on the old connection must not stop the new one
        self._reader = asyncio.create_task(self.read(ws))

    async def read(self, ws: ClientConnection) -> None:
        """Print everything the server sends on this connection until it closes."""
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    continue
                msg = json.loads(raw)
                show(raw, msg, self.args.json)
                if msg.get("type") == "mood":
                    self.stats.updates += 1
                elif msg.get("type") == "error":
                    self.stats.errors.append(msg)
        except ConnectionClosed:
            pass

    async def stream_track(self, track: Track) -> None:
        """Send one file from `track.position`, reconnecting (and resuming) until it has all been sent."""
        with sf.SoundFile(track.path) as f:
            rate, channels = stream_format(f, self.args)
            self.note(f"streaming {track.path} ({f.frames / f.samplerate:.1f} s at {f.samplerate} Hz, "
                      f"{f.channels} ch) -> {rate} Hz, {channels} ch, {self.args.encoding}")
            resuming = False
            while True:
                if self._ws is not None and self._fmt != (rate, channels):
                    await self.finish()  # the format is fixed per connection: end this one properly first
                if self._ws is None or resuming:
                    await self.open(rate, channels)
                    resuming = False
                try:
                    await self._ws.send(json.dumps(track_message(track.path)))
                    await self.send_audio(f, track, rate, channels)
                    return
                except ConnectionClosed as exc:
                    if self._reader is not None:  # let the reader take the server's last messages (a fatal error?)
                        await asyncio.wait([self._reader], timeout=2.0)
                    fatal = [e for e in self.stats.errors if e.get("fatal")]
                    if fatal:
                        raise FatalError(json.dumps(fatal[-1])) from exc
                    print(f"connection lost ({exc}); resuming {track.path.name} at "
                          f"{track.position / f.samplerate:.1f} s", file=sys.stderr, flush=True)
                    resuming = True

    async def send_audio(self, f: sf.SoundFile, track: Track, rate: int, channels: int) -> None:
        """Send the file from `track.position` in chunks, paced at `speed` times real time (0 = unpaced)."""
        resampler = make_resampler(f.samplerate, rate, channels)
        chunk = max(1, round(f.samplerate * self.args.chunk_ms / 1000))
        start = time.monotonic()
        sent_s = 0.0
        for block in read_chunks(f, track.position, chunk):
            n_read = len(block)
            block = to_channels(block, channels)
            if resampler is not None:
                block = resampler.resample_chunk(block, last=track.position + n_read >= f.frames)
            if len(block):
                await self._ws.send(encode(block, self.args.encoding))
            track.position += n_read
            sent_s += n_read / f.samplerate
            if self.args.speed > 0:
                delay = start + sent_s / self.args.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
            await asyncio.sleep(0)  # unpaced: still let the reader print the updates as they come

    async def finish(self) -> None:
        """Send `end` and wait for the server's last update and its close (1000)."""
        if self._ws is None:
            return
        try:
            await self._ws.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(self._reader, END_TIMEOUT_S)
        except ConnectionClosed:
            pass
        except asyncio.TimeoutError:
            print("the server did not close the stream after `end`", file=sys.stderr, flush=True)
        await self._ws.close()
        code = self._ws.close_code
        self._ws = self._fmt = None
        self.note(f"stream ended: {self.stats.updates} mood updates so far, closed with {code}")


def make_resampler(in_rate: int, out_rate: int, channels: int):
    """A streaming resampler when --sample-rate asks for another rate (needs soxr), else None."""
    if in_rate == out_rate:
        return None
    try:
        import soxr
    except ImportError as exc:
        raise SystemExit("error: --sample-rate needs the soxr package (pip install soxr)") from exc
    return soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="audio files (wav, mp3, flac, ogg) and/or folders of them")
    p.add_argument("--room", default="lobby", help="room name (1-64 of A-Z a-z 0-9 _ . -; default lobby)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    p.add_argument("--speed", type=float, default=1.0,
                   help="pace at this many times real time (default 1; 0 = no pacing; the server rate-limits "
                        "beyond its server.rate_limit_factor)")
    p.add_argument("--loop", action="store_true", help="start again after the last file, forever")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="audio per binary message (default 100 ms)")
    p.add_argument("--encoding", choices=ENCODINGS, default="pcm_s16le", help="wire format (default pcm_s16le)")
    p.add_argument("--sample-rate", type=int, default=None,
                   help="resample to this rate before sending (default: send each file's own rate)")
    p.add_argument("--channels", type=int, default=None, help="1 = downmix to mono (default: the file's channels)")
    p.add_argument("--preset", default=None, help="effect preset for the room")
    p.add_argument("--token", default=None, help="access token when the server requires one")
    p.add_argument("--retries", type=int, default=10,
                   help="reconnect attempts in a row before giving up (default 10; -1 = forever)")
    p.add_argument("--json", action="store_true", help="print every server message as one JSON line")
    args = p.parse_args(argv)
    if args.speed < 0:
        p.error("--speed must be >= 0")
    if not 5 <= args.chunk_ms <= 1000:
        p.error("--chunk-ms must be in 5..1000")
    if args.channels is not None and not 1 <= args.channels <= 8:
        p.error("--channels must be in 1..8")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = find_audio(args.paths)
    try:
        return asyncio.run(Streamer(files, args).run())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

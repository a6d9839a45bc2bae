#!/usr/bin/env python3
"""Stream audio files into a sendreturn-mood room as its source, and print the room's mood updates.

What it shows: the SOURCE side of wire protocol v1 (PROTOCOL.md) - open
`ws://HOST:PORT/v1/rooms/{room}?role=source&encoding=...&sample_rate=...&channels=...`, send a `track` message per
file, raw PCM binary frames paced in real time, `end` at the end, and read `welcome` / `mood` / `source` / `error`
messages from the same connection. When the connection drops it reconnects with exponential backoff and resumes the
current file where it was. The protocol work is `sendreturn_mood.client.Source` (pip install the package); this
script is the command line around it.

Run it (server first: `python -m sendreturn_mood serve`):

    python examples/stream_file.py song.mp3 --room lobby
    python examples/stream_file.py ~/Music/album/ --room lobby --loop          # a folder, forever
    python examples/stream_file.py a.wav b.flac --speed 4 --json               # 4x real time, raw JSON lines

and watch the same room from another terminal with `python examples/listen.py --room lobby`.

Needs the sendreturn-mood package (`pip install .`; its client reads wav, flac, ogg and mp3 through libsndfile and
resamples with soxr). By default it sends what the model hears, mono at the model's rate (16 kHz for the shipped
models; the server's welcome says it): a sixth of the upload of 48 kHz stereo. `--as-is` sends the file's own rate
and channels.

Exit status: 0 done, 1 gave up (connection/server error) or a file could not be read (it is skipped),
2 refused (bad request, unauthorized) or bad arguments, 141 stdout closed (e.g. `| head`), 130 interrupted (Ctrl-C: it still sends `end` and waits for
the server's last update, so listeners see the stream end rather than a lost source).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

import soundfile as sf

from sendreturn_mood.audio.files import DecodeError
from sendreturn_mood.client import (
    DEFAULT_URL,
    MODEL_RATE,
    Disconnected,
    Event,
    FatalServerError,
    GaveUp,
    Mood,
    Reconnecting,
    Refused,
    ServerError,
    Source,
    SourceState,
    Welcome,
    find_audio,
)

ENCODINGS = ("pcm_s16le", "pcm_f32le")
EXIT_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


# ------------------------------------------------------------------------------------------------------- printing


def number(v: object) -> str:
    """Effect values as people read them: 15983 Hz, 0.24 mix, '#ffd166' colours as they are."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"


def describe_update(msg: Mood) -> str:
    """One compact line per mood update."""
    probs = " ".join(f"{k}={v:.2f}" for k, v in msg.probabilities.items())
    effects = " ".join(f"{k}={number(v)}" for k, v in msg.effects.items())
    genre = f" genre={msg.genre['label'] or '-'}" if msg.genre else ""
    return (
        f"#{msg.seq} t={msg.stream_time:6.1f}s {msg.mood or '-':>6} "
        f"({msg.confidence:.2f}) V={msg.valence:+.2f} A={msg.arousal:+.2f}"
        f"{genre} | {probs} | {effects} | {msg.latency_ms:.0f} ms"
    )


class Printer:
    """What the person sees: the server's messages (raw JSON lines with --json) and progress notes."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.file: Path | None = None  # the file being streamed, and how far (for the resume note)
        self.rate = 1
        self.position = 0
        self.ending = False

    def note(self, text: str) -> None:
        """Progress for the person; on stderr with --json, so that stdout stays pure JSON lines."""
        print(text, file=sys.stderr if self.as_json else sys.stdout, flush=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Reconnecting):
            print(f"connect failed ({event.reason}); retrying in {event.delay:.1f} s", file=sys.stderr, flush=True)
        elif isinstance(event, Disconnected):
            if not self.ending and self.file is not None and event.code != 1000:
                print(f"connection lost ({event.code} {event.reason}); resuming {self.file.name} at "
                      f"{self.position / self.rate:.1f} s", file=sys.stderr, flush=True)
        elif self.as_json:
            print(event.raw, flush=True)  # exactly what the server sent
        elif isinstance(event, Mood):
            print(describe_update(event), flush=True)
        elif isinstance(event, Welcome):
            print(f"connected to room {event.room!r} as {event.role}: model {event.model.get('name')} "
                  f"{event.model.get('version')}, audio {event.audio}, hop {event.analysis.get('hop_seconds')} s, "
                  f"preset {event.preset}", flush=True)
        elif isinstance(event, ServerError):
            print(f"server error: {event.raw}", file=sys.stderr, flush=True)
        elif isinstance(event, SourceState):
            print(f"source {event.state}", flush=True)
        else:
            print(event.raw, flush=True)

    def progress(self, position: int) -> None:
        self.position = position


# ------------------------------------------------------------------------------------------------------ streaming


async def finish(source: Source, out: Printer) -> None:
    """Send `end` and wait for the server's last update and its close (1000)."""
    if not source.connected:
        return
    out.ending = True
    result = await source.end()
    out.ending = False
    out.note(f"stream ended: {result.updates} mood updates so far, closed with {result.close_code}")


async def stream(files: list[Path], args: argparse.Namespace) -> int:
    out = Printer(args.json)
    source = Source(args.url, args.room, encoding=args.encoding, preset=args.preset, token=args.token,
                    retries=args.retries, on_event=out, model_format=not args.as_is)
    unreadable: set[Path] = set()
    try:
        while True:
            for path in files:
                try:
                    info = sf.info(str(path))
                except (sf.LibsndfileError, RuntimeError) as exc:  # not audio, or a format libsndfile cannot read
                    print(f"cannot read {path}: {exc}; skipped", file=sys.stderr, flush=True)
                    unreadable.add(path)
                    continue
                if args.as_is:
                    rate, channels = args.sample_rate or info.samplerate, args.channels or min(info.channels, 8)
                else:  # the model's format (its rate is known once a server's welcome said it)
                    rate, channels = args.sample_rate or source.model_rate or MODEL_RATE, args.channels or 1
                if source.connected and source.format != (rate, channels):
                    await finish(source, out)  # the format is fixed per connection: end this one properly first
                out.note(f"streaming {path} ({info.duration:.1f} s at {info.samplerate} Hz, {info.channels} ch) "
                         f"-> {rate} Hz, {channels} ch, {args.encoding}")
                out.file, out.rate, out.position = path, info.samplerate, 0
                try:
                    await source.send_file(path, speed=args.speed, chunk_ms=args.chunk_ms,
                                           sample_rate=args.sample_rate, channels=args.channels, progress=out.progress)
                except DecodeError as exc:  # corrupt half-way, or truncated: what decoded was sent
                    print(f"{path}: {exc}", file=sys.stderr, flush=True)
                    unreadable.add(path)
                out.file = None
            if not args.loop or len(unreadable) == len(files):
                break
        await finish(source, out)
        return 1 if unreadable else 0
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr, flush=True)
        return 2
    except (FatalServerError, GaveUp) as exc:
        print(f"stopped: {exc}", file=sys.stderr, flush=True)
        return 1
    except asyncio.CancelledError:  # Ctrl-C (asyncio.run cancels this task): end the stream cleanly, then stop
        if source.connected:
            out.note("interrupted: sending `end`")
            with contextlib.suppress(Exception):
                await finish(source, out)
        raise
    finally:
        await source.close()


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
                   help="resample to this rate before sending (default: the model's; with --as-is each file's own)")
    p.add_argument("--channels", type=int, default=None,
                   help="channels to send (default: 1, the model's; with --as-is the file's)")
    p.add_argument("--as-is", action="store_true",
                   help="send each file at its own rate and channels (default: mono at the model's rate)")
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
    try:
        files = find_audio(args.paths)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not files:
        raise SystemExit("error: no audio files found")
    try:
        return asyncio.run(stream(files, args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed (`| head`): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())

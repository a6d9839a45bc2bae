#!/usr/bin/env python3
"""Prepare a song for a room ahead of time, then drive the room in step with a player (a pretend one, or one that
really plays the file), and print what the room broadcasts.

What it shows: tracks known ahead (PROTOCOL.md, "Tracks known ahead"). The backend knows the song before it plays,
so instead of streaming PCM it PUTs the file once (`Source.prepare`: the server analyses it with `analyze`'s own
path), sends `play` when the player starts, and reports the player's position every few seconds
(`Source.follow_player`); the room then gets the track's whole `timeline` once and each `mood` update at its
position (`lead_seconds` early), exactly on time, with no audio upload.

Run it (server first: `python -m sendreturn_mood serve`):

    python examples/play_prepared.py song.mp3 --room lobby                 # pretend to play it (a clock)
    python examples/play_prepared.py song.mp3 --room lobby --lead 1.5      # every update 1.5 s early
    python examples/play_prepared.py song.mp3 --room lobby --audible       # really play it (needs sounddevice)

and watch the room from another terminal with `python examples/listen.py --room lobby`.

Exit status: 0 done, 1 the server refused or failed (the reason is printed), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from sendreturn_mood.client import DEFAULT_URL, ClientError, Listener, Mood, Source, Timeline, TrackChange


class PretendPlayer:
    """A player's clock: seconds into the track since `start()` (what a real player's position API returns)."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.monotonic()

    def position(self) -> float | None:
        if self.started is None:
            return None
        return min(self.duration, time.monotonic() - self.started)


class AudiblePlayer(PretendPlayer):
    """Plays the file on the default output device (sounddevice), reporting where it is by the samples played."""

    def __init__(self, path: Path) -> None:
        import soundfile as sf

        self.samples, self.rate = sf.read(str(path), dtype="float32", always_2d=True)
        super().__init__(len(self.samples) / self.rate)

    def start(self) -> None:
        import sounddevice as sd  # an optional dependency of this example only

        sd.play(self.samples, self.rate)
        super().start()


async def show(room: Listener, player: PretendPlayer) -> None:
    """Print what the room broadcasts, with where the player was when it arrived."""
    async for event in room:
        position = player.position() or 0.0
        if isinstance(event, Timeline):
            print(f"timeline: {len(event.updates)} updates over {event.duration:.1f} s, lead {event.lead_seconds:g} s", flush=True)
        elif isinstance(event, TrackChange):
            print(f"{position:7.2f}s  track change inside the file at {event.stream_time:.2f}s", flush=True)
        elif isinstance(event, Mood) and event.prepared:
            print(f"{position:7.2f}s  update for {event.stream_time:6.2f}s  seq {event.seq:4d}  "
                  f"{event.mood or '-':6s} {event.confidence:.2f}  v {event.valence:+.2f} a {event.arousal:+.2f}", flush=True)


async def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    room_name, track_id = args.room, args.id or path.stem
    async with Source(args.url, room_name, token=args.token) as src:
        described = await src.prepare(path, track_id, title=args.title or path.stem)
        print(f"prepared {track_id!r}: {described['duration']:.1f} s, {described['updates']} updates, "
              f"{len(described['track_changes'])} track changes inside (analysis {described['analysis']})", flush=True)
        player = AudiblePlayer(path) if args.audible else PretendPlayer(float(described["duration"]))
        await src.connect(16000)
        async with Listener(args.url, room_name, token=args.token) as room:
            player.start()
            await src.play(track_id, 0.0, lead_seconds=args.lead)
            reporter = asyncio.create_task(src.follow_player(player.position))
            shower = asyncio.create_task(show(room, player))
            try:
                while (player.position() or 0.0) < player.duration:  # until the player reaches the end
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)
            finally:
                reporter.cancel()
                shower.cancel()
                await src.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", help="an audio file (wav, mp3, flac, ogg)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"server (default {DEFAULT_URL})")
    p.add_argument("--room", default="lobby")
    p.add_argument("--id", default=None, help="the track's id (default: the file's name)")
    p.add_argument("--title", default=None)
    p.add_argument("--lead", type=float, default=0.0, help="lead_seconds: send each update this much early (0..10)")
    p.add_argument("--token", default=None, help="a source token for the room, when the server requires one")
    p.add_argument("--audible", action="store_true", help="really play the file (needs the sounddevice package)")
    args = p.parse_args()
    try:
        return asyncio.run(run(args))
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Listen to a sendreturn-mood room: a live one-line view of its mood and effect parameters.

What it shows: the LISTENER side of wire protocol v1 (PROTOCOL.md) - open `ws://HOST:PORT/v1/rooms/{room}` (role
listener is the default), receive `welcome`, then a `mood` message every hop while the room has a source, `source`
messages when it comes and goes, and `error` messages. This is what a SEND/RETURN client does to drive its scene:
read `effects` (and `mood`, `valence`, `arousal`) from each update. Reconnects with exponential backoff when the
connection drops. The protocol work is `sendreturn_mood.client.Listener` (pip install the package); this script is
the terminal view around it.

Run it (server: `python -m sendreturn_mood serve`; a source: `python examples/stream_file.py song.mp3`):

    python examples/listen.py --room lobby            # live view: mood, probability bars, V/A, effects
    python examples/listen.py --room lobby --json     # every message as one raw JSON line (pipe it to jq)

Exit status: 0 normal (Ctrl-C, or --until-end), 1 gave up reconnecting, 2 refused (bad request, unauthorized),
141 stdout closed (`listen.py --json | head -5` stops quietly instead of reconnecting).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys

from sendreturn_mood.client import DEFAULT_URL, Disconnected, GaveUp, Listener, Mood, Reconnecting, Refused, ServerError, SourceState, Welcome

BAR_WIDTH = 10
EXIT_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
BLOCKS = " ▏▎▍▌▋▊▉█"


def bar(p: float, width: int = BAR_WIDTH) -> str:
    """A probability as a fixed-width bar with eighth-block resolution."""
    cells = max(0.0, min(1.0, p)) * width
    full = int(cells)
    eighths = int((cells - full) * 8)
    rest = BLOCKS[eighths] if full < width and eighths else ""
    return ("█" * full + rest).ljust(width, "·")


def hex_swatch(value: str, tty: bool) -> str:
    """A '#rrggbb' effect value, with a coloured block in front of it on a terminal."""
    if not tty or len(value) != 7 or not value.startswith("#"):
        return value
    try:
        r, g, b = (int(value[i : i + 2], 16) for i in (1, 3, 5))
    except ValueError:
        return value
    return f"\x1b[38;2;{r};{g};{b}m██\x1b[0m{value}"


def format_effect(name: str, value: object, tty: bool) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} {hex_swatch(str(value), tty)}"
    return f"{name} {value:.0f}" if abs(value) >= 100 else f"{name} {value:.2f}"


def view(msg: Mood, tty: bool) -> str:
    """The one-line view of a mood update."""
    probs = "  ".join(f"{k} {bar(v)} {v:.2f}" for k, v in msg.probabilities.items())
    effects = "  ".join(format_effect(k, v, tty) for k, v in msg.effects.items())
    genre = f"  [{msg.genre['label'] or '-'}]" if msg.genre else ""
    return (
        f"#{msg.seq} {msg.stream_time:6.1f}s  {(msg.mood or '-').upper():<6} {msg.confidence:.2f}{genre}  |  "
        f"{probs}  |  V {msg.valence:+.2f} A {msg.arousal:+.2f}  |  {effects}"
    )


class Screen:
    """Prints events on their own line and the live view in place (on a terminal) or line by line (piped)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._live = False

    def live(self, text: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size((160, 20)).columns
            visible = text if len(text) <= width else text[: width - 1] + "…"
            sys.stdout.write("\r\x1b[2K" + visible)
            self._live = True
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def event(self, text: str, err: bool = False) -> None:
        if self._live:
            sys.stdout.write("\n")
            self._live = False
        stream = sys.stderr if err else sys.stdout
        stream.write(text + "\n")
        stream.flush()


async def listen(args: argparse.Namespace) -> int:
    screen = Screen()
    listener = Listener(args.url, args.room, token=args.token, retries=args.retries)
    try:
        async for event in listener:
            if isinstance(event, Reconnecting):
                screen.event(f"{event.reason}; reconnecting in {event.delay:.1f} s", err=True)
            elif isinstance(event, Disconnected):
                continue
            elif args.json:
                print(event.raw, flush=True)  # exactly what the server sent
            elif isinstance(event, Mood):
                screen.live(view(event, screen.tty))
            elif isinstance(event, Welcome):
                screen.event(
                    f"listening to room {event.room!r}: model {event.model.get('name')} {event.model.get('version')}"
                    f", moods {event.model.get('moods')}, update every {event.analysis.get('hop_seconds')} s, "
                    f"preset {event.preset}"
                )
            elif isinstance(event, SourceState):
                screen.event(f"source {event.state}")
            elif isinstance(event, ServerError):
                screen.event(f"server error: {event.raw}", err=True)
            else:
                screen.event(event.raw)
            if args.until_end and isinstance(event, SourceState) and not event.connected:
                return 0
    except Refused as exc:
        screen.event(f"refused: {exc}", err=True)
        return 2
    except GaveUp as exc:
        screen.event(str(exc), err=True)
        return 1
    finally:
        await listener.close()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--room", default="lobby", help="room name (default lobby)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    p.add_argument("--token", default=None, help="access token when the server requires one")
    p.add_argument("--json", action="store_true", help="print every message as one raw JSON line")
    p.add_argument("--until-end", action="store_true", help="exit when the room's source disconnects")
    p.add_argument("--retries", type=int, default=-1,
                   help="reconnect attempts in a row before giving up (default -1 = forever)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(listen(args))
    except KeyboardInterrupt:
        print(flush=True)
        return 0
    except BrokenPipeError:  # stdout closed (`| head`): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())

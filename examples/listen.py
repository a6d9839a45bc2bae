#!/usr/bin/env python3
"""Listen to a sendreturn-mood room: a live one-line view of its mood and effect parameters.

What it shows: the LISTENER side of wire protocol v1 (PROTOCOL.md) - open `ws://HOST:PORT/v1/rooms/{room}` (role
listener is the default), receive `welcome`, then a `mood` message every hop while the room has a source, `source`
messages when it comes and goes, and `error` messages. This is what a SEND/RETURN client does to drive its scene:
read `effects` (and `mood`, `valence`, `arousal`) from each update. Reconnects with exponential backoff when the
connection drops.

Run it (server: `python -m sendreturn_mood serve`; a source: `python examples/stream_file.py song.mp3`):

    python examples/listen.py --room lobby            # live view: mood, probability bars, V/A, effects
    python examples/listen.py --room lobby --json     # every message as one raw JSON line (pipe it to jq)

Copy it freely: it needs only `websockets`.
Exit status: 0 normal (Ctrl-C, or --until-end), 1 gave up reconnecting, 2 refused (bad request, unauthorized).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from urllib.parse import quote, urlencode

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

DEFAULT_URL = "ws://127.0.0.1:8765"
BAR_WIDTH = 10
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
FATAL_STATUS = {400, 401, 403, 404}  # refusals that retrying cannot fix
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


def view(msg: dict, tty: bool) -> str:
    """The one-line view of a mood update."""
    mood = str(msg.get("mood", "?")).upper()
    probs = "  ".join(f"{k} {bar(v)} {v:.2f}" for k, v in msg.get("probabilities", {}).items())
    effects = "  ".join(format_effect(k, v, tty) for k, v in msg.get("effects", {}).items())
    genre = f"  [{msg['genre']['label']}]" if msg.get("genre") else ""
    return (
        f"#{msg.get('seq')} {msg.get('stream_time', 0):6.1f}s  {mood:<6} {msg.get('confidence', 0):.2f}{genre}  |  "
        f"{probs}  |  V {msg.get('valence', 0):+.2f} A {msg.get('arousal', 0):+.2f}  |  {effects}"
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


def room_url(args: argparse.Namespace) -> str:
    params = {"role": "listener"}
    if args.token:
        params["token"] = args.token
    return f"{args.url.rstrip('/')}/v1/rooms/{quote(args.room, safe='')}?{urlencode(params)}"


async def listen(args: argparse.Namespace) -> int:
    screen = Screen()
    delay = BACKOFF_START_S
    failures = 0
    while True:
        try:
            async with connect(room_url(args), compression=None, proxy=None, open_timeout=10) as ws:
                delay, failures = BACKOFF_START_S, 0
                async for raw in ws:
                    if isinstance(raw, bytes):
                        continue
                    msg = json.loads(raw)
                    kind = msg.get("type")
                    if args.json:
                        print(raw, flush=True)  # exactly what the server sent
                    elif kind == "mood":
                        screen.live(view(msg, screen.tty))
                    elif kind == "welcome":
                        model = msg.get("model", {})
                        screen.event(
                            f"listening to room {msg.get('room')!r}: model {model.get('name')} {model.get('version')}"
                            f", moods {model.get('moods')}, update every "
                            f"{msg.get('analysis', {}).get('hop_seconds')} s, preset {msg.get('preset')}"
                        )
                    elif kind == "source":
                        screen.event(f"source {msg.get('state')}")
                    elif kind == "error":
                        screen.event(f"server error: {json.dumps(msg)}", err=True)
                    else:
                        screen.event(json.dumps(msg))
                    if args.until_end and kind == "source" and msg.get("state") == "disconnected":
                        return 0
            reason = f"closed by the server ({ws.close_code} {ws.close_reason})"
        except InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
            reason = f"refused: HTTP {exc.response.status_code} {body}"
            if exc.response.status_code in FATAL_STATUS:
                screen.event(reason, err=True)
                return 2
        except ConnectionClosed as exc:
            reason = f"connection lost ({exc})"
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
            reason = f"cannot connect ({type(exc).__name__}: {exc})"
        failures += 1
        if 0 <= args.retries < failures:
            screen.event(f"{reason}; giving up after {failures} attempts", err=True)
            return 1
        screen.event(f"{reason}; reconnecting in {delay:.1f} s", err=True)
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX_S)


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


if __name__ == "__main__":
    sys.exit(main())

"""`sendreturn-mood osc --url ws://HOST:PORT --room R --to HOST:PORT [--token T]`: follow a room as a listener and
send its updates as OSC to a tool on this machine or network (the bridge).

For an engine PC that cannot be reached by the server (NAT, a venue network) or a server that is not yours: the
bridge connects out through the Python client's `Listener` (reconnecting with backoff, a token if the server wants
one) and sends exactly what a server's own OSC output sends (outputs/osc.py; the address map is
schema/osc/v1.json), rebuilt from the websocket's `mood`, `source` and `track_change` messages. Effect ranges
(`/norm`) and slews (`--rate-hz`) come from the preset file (the shipped one unless --effects names another: use the
server's). Prints one line when the room is joined; connection events go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from ..client import ClientError, Disconnected, Listener, Mood, Reconnecting, SourceState, TrackChange, Welcome
from ..config import OSC_PREFIX, ConfigError, OscTargetSettings, load_config
from ..outputs.osc import OscTarget, parse_target
from ..room.effects import EffectsError, load_presets
from ..room.update import Update

EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the server, ws://HOST:PORT or wss://HOST:PORT")
    parser.add_argument("--room", required=True, help="the room to follow")
    parser.add_argument("--to", required=True, action="append", metavar="HOST:PORT", help="where to send OSC (repeatable)")
    parser.add_argument("--token", help="access token (if the server needs one): a listener token for the room")
    parser.add_argument("--prefix", default=OSC_PREFIX, help=f"OSC address prefix (default {OSC_PREFIX})")
    parser.add_argument("--rate-hz", type=float, default=0.0,
                        help="send effects, valence and arousal this many times a second, gliding between updates "
                             "(default 0: one bundle per update)")
    parser.add_argument("--effects", metavar="FILE", help="the server's preset file, for ranges and slews (default: the shipped one)")
    parser.add_argument("--config", metavar="FILE", help="configuration YAML (outputs.osc.max_rate_hz bounds --rate-hz)")


def run(args: argparse.Namespace) -> int:
    """0 when the server ends the room's stream for good; 2 for bad arguments or a refused connection."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = load_config(args.config)
        targets = [
            OscTargetSettings(**{**parse_target(spec), "rooms": (args.room,), "prefix": args.prefix, "rate_hz": args.rate_hz})
            for spec in args.to
        ]
        problems = [p for t, spec in zip(targets, args.to) for p in t.problems(f"--to {spec}", config.outputs.osc.max_rate_hz)]
        if problems:
            raise ConfigError("; ".join(problems))
        presets = load_presets(args.effects or config.effects.file, config.effects.default_preset)
    except (ConfigError, EffectsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(bridge(args.url, args.room, targets, presets, args.token))
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


async def bridge(url: str, room: str, targets: list[OscTargetSettings], presets: object, token: str | None = None) -> int:
    """Follow `room` and send it to `targets` until the server ends the stream for good or we are stopped."""
    log = logging.getLogger("sendreturn_mood.osc")
    hop = 1.5  # until the welcome says
    sinks = [OscTarget(t, presets, hop) for t in targets]  # type: ignore[arg-type]
    listener = Listener(url, room, token=token)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: loop.create_task(listener.close()))
    try:
        async for event in listener:
            if isinstance(event, Welcome):
                for sink in sinks:
                    sink.hop_seconds = float(event.analysis.get("hop_seconds", hop))
                print(f"following room {room!r} at {url}: OSC to {', '.join(t.name for t in targets)}", flush=True)
            elif isinstance(event, Mood):
                update = Update.from_message(json.loads(event.raw))
                for sink in sinks:
                    sink.deliver(room, update)
            elif isinstance(event, (SourceState, TrackChange)):
                for sink in sinks:
                    sink.deliver(room, json.loads(event.raw))
            elif isinstance(event, (Disconnected, Reconnecting)):
                log.info("%s", event)
    finally:
        for sink in sinks:
            sink.close()
    return 0

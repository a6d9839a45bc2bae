"""`python -m sendreturn_mood.bench audio | model | server | cluster | prepared | prepare | analyze | songchange | silence`: each subcommand is one module (see its --help)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "audio": "the audio path's CPU per room-second, ours against the naive per-hop recompute",
    "model": "the model's ms per window at batch 1/2/8/32 (optionally side by side with another model)",
    "server": "the whole server under load: CPU per room-second, latency, capacity, memory",
    "cluster": "rooms across 1..P server processes through Redis: updates/s, latency, server and Redis CPU, drops",
    "prepared": "prepared rooms under load (CPU per room-second against live rooms, update delay at many rooms)",
    "prepare": "wall time to prepare a track (decode + analysis), e.g. a 4-minute song",
    "analyze": "POST /v1/analyze: analyses per second per core (30 s, 4 min), live rooms' latency with analyses vs none",
    "songchange": "song-change pairs of real songs: when the room's mood follows the new song, prepared against live",
    "osc": "the OSC output alone: CPU per room-second of one OSC target per room, at 0 Hz and at rate_hz",
    "silence": "window levels of real music, white noise and silence (to choose analysis.silence_db)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sendreturn_mood.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage / the error
        return 2
    module = importlib.import_module(f"{__package__}.{argv[0]}")
    p = argparse.ArgumentParser(prog=f"python -m sendreturn_mood.bench {argv[0]}", description=module.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    return int(module.run(p.parse_args(argv[1:])))


if __name__ == "__main__":
    sys.exit(main())

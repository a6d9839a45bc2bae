"""Command line: `python -m sendreturn_mood serve | config | models [MODEL] | analyze PATH... | token --room R --role
ROLE | osc --url URL --room R --to HOST:PORT` (or `sendreturn-mood ...`, the console script pip installs).

`serve` prints two start-up lines on stdout (where it listens, which model it loaded) and flushes them, because
scripts and tests read the real port from there when started with `--port 0`. Everything else is logged.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread before numpy loads: the inference worker and the event loop share the machine's cores.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from .. import __version__  # noqa: E402

EXIT_USAGE = 2  # bad config, model or preset file


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to bind (default: server.host of the config)")
    p.add_argument("--port", type=int, help="port (0: any free port; default: server.port of the config)")
    p.add_argument("--config", metavar="FILE", help="YAML config file (only the keys it changes)")
    p.add_argument("--model", metavar="NAME|PATH", help="a shipped model's name (`models` lists them) or an ONNX file (default: the shipped model)")
    p.add_argument("--broker", metavar="URL", help="share rooms with other processes: redis://HOST:PORT/DB (default: broker.url of the config; none)")
    p.add_argument("--workers", type=int, metavar="N", help="N processes on this port sharing rooms through the broker (default: server.workers of the config, 1)")
    p.add_argument("--metrics-port", type=int, metavar="P", help="also serve /metrics and /healthz on port P (with --workers N: P, P+1, ...; default: server.metrics_port, none)")
    p.add_argument("--osc", action="append", default=[], metavar="HOST:PORT[=ROOM_GLOB]",
                   help="also send rooms' updates (those matching ROOM_GLOB, default all) as OSC bundles over UDP to "
                        "HOST:PORT; repeatable; added to outputs.osc.targets of the config (docs/PROTOCOL.md)")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set by --workers for its workers


def prog_name() -> str:
    """How the person ran us, for usage lines: the console script's name, or `python -m sendreturn_mood`."""
    return "sendreturn-mood" if Path(sys.argv[0]).name == "sendreturn-mood" else "python -m sendreturn_mood"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog_name(), description="Real-time music mood for SEND/RETURN rooms.")
    parser.add_argument("--version", action="version", version=f"sendreturn-mood {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_args(sub.add_parser("serve", help="run the websocket server (protocol v1) with HTTP /healthz and /metrics"))
    sub.add_parser("config", help="print the default configuration (YAML)")
    models = sub.add_parser("models", help="list the shipped models, or show one model's metadata (labels, front end, provenance, metrics)")
    models.add_argument("path", nargs="?", metavar="MODEL",
                        help="a shipped model's name (e.g. mood_musicnn) or an ONNX file (default: list the shipped models)")
    models.add_argument("--json", action="store_true", help="print the metadata as JSON")
    from .analyze import add_arguments

    add_arguments(sub.add_parser("analyze", help="analyse audio files with the same streaming path as the server"))
    from .token import add_arguments as add_token_arguments

    add_token_arguments(sub.add_parser("token", help="mint a signed access token for a room and role"))
    from .osc import add_arguments as add_osc_arguments

    add_osc_arguments(sub.add_parser("osc", help="follow a room on a server and send its updates as OSC (a bridge for engines and tools)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        from ..config import DEFAULT_CONFIG_TEXT

        sys.stdout.write(DEFAULT_CONFIG_TEXT)
        return 0
    if args.command == "models":
        return _models(args)
    if args.command == "analyze":
        from .analyze import run

        return int(run(args))
    if args.command == "token":
        from .token import run as run_token

        return run_token(args)
    if args.command == "osc":
        from .osc import run as run_osc

        return run_osc(args)
    return _serve(args)


# ---------------------------------------------------------------------------------------------------- models


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _models(args: argparse.Namespace) -> int:
    from ..model.contract import ModelError, MoodModel, default_model_path

    if args.path is None:
        return _list_models(args.json)
    try:
        model = MoodModel(args.path)
    except ModelError as e:
        return _fail(str(e))
    info = model.info
    if args.json:
        print(json.dumps({"path": str(model.path), "default": model.path == default_model_path(), **info.to_dict()}, indent=2, sort_keys=True))
        return 0
    print(describe_model(info, str(model.path)))
    return 0


def _list_models(as_json: bool) -> int:
    """One line per shipped model: name, version, size, what it is; the one `serve` loads by default first."""
    from ..model.contract import ModelError, MoodModel, default_model_path, shipped_models

    rows = []
    for path in shipped_models():
        try:
            info = MoodModel(path).info
        except ModelError as e:
            rows.append({"file": path.name, "path": str(path), "error": str(e)})
            continue
        rows.append({"file": path.name, "path": str(path), "name": info.name, "version": info.version,
                     "default": path == default_model_path(), "megabytes": round(path.stat().st_size / 1e6, 1),
                     "moods": info.mood_labels, "genres": list(info.genres), "about": info.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        if "error" in r:
            print(f"{r['file']:<22} unreadable: {r['error']}")
            continue
        mark = "  (default: serve and analyze use it)" if r["default"] else ""
        print(f"{Path(r['file']).stem:<16} {r['name']} {r['version']}, {r['megabytes']} MB{mark}")
        if r["about"]:
            print(f"{'':<16} {r['about']}")
    print(f"\n{prog_name()} models NAME      shows one (labels, front end, provenance, metrics); "
          f"serve --model {Path(rows[-1]['file']).stem if rows else 'FILE'} loads another")
    return 0


def describe_model(info: Any, path: str) -> str:
    """A model's metadata as readable text."""
    fe = info.frontend
    lines = [
        f"model      {info.name} {info.version}",
        f"file       {path}",
    ]
    if info.description:
        lines.append(f"about      {info.description}")
    lines.append(f"patch      {info.patch_frames} frames = {info.window_seconds:.3f} s")
    lines.append("moods      " + ", ".join(f"{m.label} (V {m.valence:+.2f}, A {m.arousal:+.2f})" for m in info.moods))
    lines.append("genres     " + (", ".join(info.genres) if info.genres else "(none)"))
    lines.append("front end  " + ", ".join(f"{k}={v}" for k, v in fe.to_dict().items()))
    for title, block in (("provenance", info.provenance), ("metrics", info.metrics)):
        if not block:
            lines.append(f"{title:<10} (none)")
            continue
        lines.append(title)
        for key, value in block.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            lines.append(f"  {key}: {text}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- serve


def _serve(args: argparse.Namespace) -> int:
    from ..broker.base import BrokerError
    from ..config import ConfigError, load_config
    from ..room.effects import EffectsError
    from ..model.contract import ModelError
    from ..outputs.osc import with_targets
    from ..server.app import MoodServer

    overrides = {
        "server.host": args.host,
        "server.port": args.port,
        "model.path": args.model,
        "broker.url": args.broker,
        "server.workers": args.workers,
        "server.reuse_port": True if args.reuse_port else None,
        "server.metrics_port": args.metrics_port,
    }
    try:
        config = with_targets(load_config(args.config, overrides), args.osc)
    except ConfigError as e:
        return _fail(str(e))
    logging.basicConfig(
        level=getattr(logging, config.logging.level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per HTTP request is noise
    s = config.server
    reuse = bool(args.reuse_port or s.reuse_port or s.workers > 1)
    if problem := port_problem(s.host, s.port, reuse):
        return _fail(problem)  # before loading the model or starting workers: a taken port is said at once
    if s.workers > 1 and not args.reuse_port:
        from ..server import workers

        passed = [(flag, value) for flag, value in (("--config", args.config), ("--host", args.host), ("--model", args.model), ("--broker", args.broker)) if value]
        passed += [("--osc", spec) for spec in args.osc]
        return workers.run(s.workers, [x for pair in passed for x in pair] + ["--workers", "1"], config)
    try:
        server = MoodServer(config)
    except (ModelError, EffectsError, ConfigError, BrokerError) as e:
        return _fail(str(e))
    from ..server import eventloop

    try:
        return eventloop.run(s.event_loop, _run(server))
    except eventloop.EventLoopError as e:
        return _fail(str(e))
    except BrokerError as e:
        return _fail(str(e))
    except OSError as e:  # e.g. the port is taken
        return _fail(f"cannot listen on {s.host}:{s.port}: {e.strerror or e}")


def port_problem(host: str, port: int, reuse_port: bool = False) -> str | None:
    """Why the server could not listen on host:port (None: it can), found by binding a socket the way the server
    will and closing it again."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot listen on {host}:{port}: {e.strerror or e}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind(address)
            except OSError as e:
                hint = f"another program (another server?) is using port {port}: stop it, or pick another port with --port (e.g. --port {port + 1}, or --port 0 for any free port)" if e.errno == 98 else "pick another address with --host or another port with --port"
                return f"cannot listen on {host}:{port}: {e.strerror or e}; {hint}"
    return None


async def _run(server: Any) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    info = server.info
    print(f"listening on {server.url} (rooms at {server.url}/v1/rooms/{{room}}, page at http{server.url[2:]}/)", flush=True)
    print(f"model {info.name} {info.version} from {server.model.path}", flush=True)
    await stop.wait()
    logging.getLogger("sendreturn_mood").info("shutting down: closing %d connection(s)", server.connections)
    await server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m sendreturn_mood.hostile fuzz|soak|uploads|prepared|cluster`: see the package docstring and docs/RELIABILITY.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="attack this running server (ws://HOST:PORT) instead of starting one")
    p.add_argument("--model", help="ONNX model for the started server (default: the shipped one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sendreturn_mood.hostile", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fuzz", help="Hypothesis protocol fuzzer with a well-behaved room streaming beside it")
    f.add_argument("--cases", type=int, default=10_000)
    f.add_argument("--seed", type=int, help="Hypothesis seed (default: derandomized, the same cases every run)")
    _server_args(f)
    s = sub.add_parser("soak", help="N rooms streaming for M minutes with churn; RSS and fd slopes")
    s.add_argument("--rooms", type=int, default=50)
    s.add_argument("--minutes", type=float, default=10.0)
    s.add_argument("--rate", type=int, default=16000, help="sample rate the sources stream (mono s16le)")
    s.add_argument("--churn-seconds", type=float, default=30.0, help="each listener reconnects and each source "
                   "starts a new track this often")
    s.add_argument("--warm-up", type=float, default=1.0, help="minutes before the RSS and fd slopes are fitted")
    s.add_argument("--samples", help="also write every (seconds, rss MB, fds) sample to this CSV file")
    _server_args(s)
    u = sub.add_parser("uploads", help="every bad POST /v1/analyze, each expecting its status, beside a good room")
    u.add_argument("--token", help="with --url: an access token with the analyze role (the started server has its own)")
    _server_args(u)
    pr = sub.add_parser("prepared", help="every bad prepared-track PUT and playback message, beside a good room")
    _server_args(pr)
    c = sub.add_parser("cluster", help="N rooms on 2-3 processes and a real Redis behind proxies, with random faults")
    c.add_argument("--processes", type=int, default=3, choices=(2, 3))
    c.add_argument("--rooms", type=int, default=6)
    c.add_argument("--minutes", type=float, default=5.0)
    c.add_argument("--seed", type=int, default=1, help="the fault schedule's random seed")
    c.add_argument("--model", help="ONNX model for the started servers (default: the shipped one)")
    return parser


def _start(args: argparse.Namespace, config: dict[str, Any]) -> tuple[Any, str, str, int]:
    from .harness import ServerProcess

    if args.url:
        host, _, port = args.url.removeprefix("ws://").rstrip("/").partition(":")
        return None, args.url.rstrip("/"), host, int(port)
    if args.model:
        config = {**config, "model": {"path": args.model}}
    server = ServerProcess(config).start()
    return server, f"ws://127.0.0.1:{server.port}", "127.0.0.1", server.port


def _fuzz(args: argparse.Namespace) -> int:
    from .fuzz import FUZZ_SERVER_CONFIG, GOOD_ROOM, fuzz
    from .harness import GoodRoom, load_audio

    server, base, host, port = _start(args, FUZZ_SERVER_CONFIG)
    try:
        before = (server.rss_mb(), server.fds()) if server else None
        good = GoodRoom(base, GOOD_ROOM, load_audio(90, 48000), 48000, {**FUZZ_SERVER_CONFIG, **({"model": {"path": args.model}} if args.model else {})}).start()
        result = fuzz(host, port, args.cases, args.seed, server_alive=(lambda: server.alive) if server else None, progress=1000)
        room = good.stop()
        after = (server.rss_mb(), server.fds()) if server else None
    finally:
        if server is not None:
            server.stop()
    report = {
        "cases run": result.cases,
        "failures": result.failures,
        "seconds": round(result.seconds, 1),
        "http statuses": dict(sorted(result.statuses.items())),
        "well-behaved room": {"updates expected": room.expected, "received": room.received, "missed": room.missed,
                              "errors": room.errors, "completed": room.done, "failure": room.failure},
        "server tracebacks": None if server is None else server.tracebacks,
        "server ERROR lines": None if server is None else server.errors,
        "server rss_mb before/after": None if before is None else [round(before[0], 1), round(after[0], 1)],  # type: ignore[index]
        "server fds before/after": None if before is None else [before[1], after[1]],  # type: ignore[index]
    }
    if result.failures:
        report["failing case"] = result.failing_case
        report["violations"] = result.violations
    print(json.dumps(report, indent=2))
    ok = not result.failures and room.done and room.missed == 0 and not (server and (server.tracebacks or server.errors))
    if server is not None and not ok:
        print("\n".join(list(server.log)[-30:]), file=sys.stderr)
    return 0 if ok else 1


def _soak(args: argparse.Namespace) -> int:
    from .harness import load_audio
    from .soak import soak, summary

    config = {"server": {"max_rooms": max(500, args.rooms + 10), "max_connections": max(1000, 4 * args.rooms)},
              "logging": {"level": "warning"}}
    server, base, _, _ = _start(args, config)
    try:
        result = asyncio.run(soak(base, server, args.rooms, args.minutes, load_audio(120, args.rate), args.rate,
                                  args.churn_seconds, warm_up_seconds=args.warm_up * 60.0))
    finally:
        if server is not None:
            server.stop()
    if args.samples:
        with open(args.samples, "w") as f:
            f.write("seconds,rss_mb,fds\n" + "".join(f"{t:.1f},{r:.2f},{n}\n" for t, r, n in result.samples))
    report = summary(result, server)
    print(json.dumps(report, indent=2))
    bad = result.seq_gaps or result.stalls or (server is not None and (server.tracebacks or server.errors))
    return 1 if bad else 0


def _uploads(args: argparse.Namespace) -> int:
    from . import uploads

    if args.url and args.token:
        uploads.TOKEN = args.token
    server, base, host, port = _start(args, uploads.UPLOAD_SERVER_CONFIG)
    try:
        result, room = uploads.run_beside_a_good_room(host, port, base, uploads.UPLOAD_SERVER_CONFIG)
    finally:
        if server is not None:
            server.stop()
    print(json.dumps({"answers": result.answers, "violations": result.violations, "good_room": vars(room),
                      "tracebacks": server.tracebacks if server else None}, indent=2, default=str))
    bad = result.violations or room.failure or room.missed or (server is not None and server.tracebacks)
    return 1 if bad else 0


def _prepared(args: argparse.Namespace) -> int:
    from . import prepared

    server, base, host, port = _start(args, prepared.PREPARED_SERVER_CONFIG)
    try:
        result, seen, room = prepared.run_beside_a_good_room(host, port, base, prepared.PREPARED_SERVER_CONFIG)
    finally:
        if server is not None:
            server.stop()
    print(json.dumps({"answers": result.answers, "websocket": seen, "violations": result.violations,
                      "good_room": vars(room), "tracebacks": server.tracebacks if server else None}, indent=2, default=str))
    bad = result.violations or room.failure or room.missed or (server is not None and server.tracebacks)
    return 1 if bad else 0


def _cluster(args: argparse.Namespace) -> int:
    from .cluster import report, run_cluster

    try:
        figures = run_cluster(args.processes, args.rooms, args.minutes, args.seed, args.model)
    except FileNotFoundError as e:  # no redis-server here
        print(e, file=sys.stderr)
        return 2
    print(json.dumps(report(figures), indent=2))
    return 1 if figures.violations else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"fuzz": _fuzz, "soak": _soak, "uploads": _uploads, "prepared": _prepared, "cluster": _cluster}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

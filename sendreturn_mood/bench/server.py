"""The whole server under load: CPU per room-second, update latency, dropped updates and memory per room.

    python -m sendreturn_mood.bench server [--rooms 200] [--seconds 30] [--listeners 1] [--procs 2] [--profile OUT]
    python -m sendreturn_mood.bench server --sources 48000:2 16000:1 --repeats 3   # what sources send, side by side
    python -m sendreturn_mood.bench server --osc off 0 30 --repeats 3   # one OSC target per room, at 0 and 30 Hz

The server runs as its own process (`python -m sendreturn_mood serve --port 0`, the shipped model, a config with
room and connection limits raised for the run; `--set KEY=VALUE` changes any other key). The load generator runs in
`--procs` other processes, each one event loop (`--osc RATE_HZ`: one OSC target per room, `rate_hz` RATE_HZ, each a
UDP socket of the benchmark process that counts what arrives; `off`: none; several: each measured in turn): per room one source streaming pre-encoded 48 kHz stereo s16le frames
of 100 ms in real time (`--sources RATE:CHANNELS ...`: other formats, each measured in turn under the same load;
16000:1 is what the clients send by default, mono at the model's rate) (rooms start spread over one hop, as independent rooms would) and `--listeners` listeners.
Every process reports its own CPU time, so it is visible whether the generator kept up (`late_frames`: frames it
sent later than one frame period behind schedule) and what it cost.

Measured while every room is streaming (from one hop after the last room started to the end of the shortest
stream): the server process's CPU seconds (user + system, all its threads) per room-second of audio it analysed
meanwhile (its own `audio_seconds_total`; `audio_analysed_fraction` < 1 says it fell behind the senders), and its RSS
growth from before the first connection, divided by the rooms. From the listeners: every `mood` update's
`latency_ms` (the server's own measure, last audio byte of a window -> update handed to the outboxes) and gaps in
`seq` (an update a listener never got: conflated or lost). `--profile OUT` records the server with py-spy during
the measurement (raw collapsed stacks in OUT) and prints where its time went.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import DEFAULTS
from .common import FRAME_SECONDS, music_like, pcm_frames

LISTEN_RE = re.compile(r"listening on ws://([0-9.]+):(\d+)")
SOURCE_FORMAT = "48000:2"  # what a source sends unless told: the device's rate, stereo, as it comes
CONNECT_CONCURRENCY = 16
READY_MARGIN_SECONDS = 1.0
AUDIO_METRIC = "sendreturn_audio_seconds_total"
AUDIO_BYTES_METRIC = "sendreturn_audio_bytes_total"


# ------------------------------------------------------------------------------------------------ the server process


def load_limits(rooms: int, listeners: int, code: Path | None = None) -> dict[str, Any]:
    """Server limits raised for a benchmark of `rooms` rooms: every benchmark client shares one address (127.0.0.1),
    so the per-address limits, which are not what is measured, must let all of them in."""
    connections = rooms * (2 + listeners) + 10
    limits = {
        "max_connections": max(1000, connections),
        "max_rooms": max(500, rooms + 10),
        "max_connections_per_address": max(100, connections),
        "max_rooms_per_address": max(50, rooms + 10),
        "room_creations_per_minute": max(120, rooms * 2),
    }
    # only the keys the server under test knows: the same benchmark then drives an older checkout side by side (a
    # server refuses unknown config keys, and older ones had no per-address limits)
    defaults = code / "sendreturn_mood" / "default_config.yaml" if code else resources.files("sendreturn_mood").joinpath("default_config.yaml")
    known = yaml.safe_load(defaults.read_text())["server"]
    return {k: v for k, v in limits.items() if k in known}


def server_config(args: argparse.Namespace, code: Path | None = None, osc: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": load_limits(args.rooms, args.listeners, code),
        "analysis": {"hop_seconds": args.hop},
        "logging": {"level": "warning"},
    }
    if osc is not None:
        config["outputs"] = {"osc": {"targets": osc, "max_targets": max(16, len(osc))}}
    for item in args.set:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = config
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)
    return config


def start_server(
    args: argparse.Namespace, tmp: Path, code: Path | None = None, osc: list[dict[str, Any]] | None = None,
) -> tuple[subprocess.Popen[str], int]:
    cfg = tmp / "bench.yaml"
    cfg.write_text(yaml.safe_dump(server_config(args, code, osc)))
    return spawn_server(cfg, args.model, code)


def spawn_server(config: Path, model: str | None = None, code: Path | None = None) -> tuple[subprocess.Popen[str], int]:
    """`python -m sendreturn_mood serve --port 0 --config FILE` as a user starts it -> (process, port).

    `code`: a checkout whose `sendreturn_mood` package is served instead of this one (for side-by-side runs); the
    server then starts in that directory, since `python -m` puts the current directory first on sys.path, and serves
    that checkout's exported_models/mood_cnn.onnx unless `model` is given."""
    cmd = [sys.executable, "-m", "sendreturn_mood", "serve", "--port", "0", "--config", str(config)]
    if model is None and code is not None:
        model = str(code / "exported_models" / "mood_cnn.onnx")
    if model:
        cmd += ["--model", model]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # its own session: on Linux with autogroup scheduling the server then has a CPU share of its own, as a deployed
    # server would, instead of sharing one with the load generator
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True, cwd=code)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    m = LISTEN_RE.search(line)
    if not m:
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    proc.stdout.readline()  # type: ignore[union-attr]  # the model line
    return proc, int(m.group(2))


def proc_cpu_seconds(pid: int, kernel_only: bool = False) -> float:
    """User + system CPU seconds of a process, all its threads (system only with kernel_only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[12]) + (0 if kernel_only else int(fields[11]))) / os.sysconf("SC_CLK_TCK")


def proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def scrape_metrics(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()  # a saturated server answers late
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                pass
    return out


def metric(metrics: dict[str, float], prefix: str) -> float:
    """Sum of every sample whose name (labels included) starts with `prefix`."""
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


# ------------------------------------------------------------------------------------------------ the load generator


def generator_process(rooms: list[int], port: int, args: dict[str, Any], start_at: float, results: Any) -> None:
    """One load-generator process: its rooms on one event loop (uvloop when installed)."""
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is optional
        run = asyncio.run
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    stats = run(_generate(rooms, port, args, start_at))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    stats["cpu_seconds"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    results.put(stats)


async def _generate(rooms: list[int], port: int, args: dict[str, Any], start_at: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    seconds, hop, n_listeners = args["seconds"], args["hop"], args["listeners"]
    frame_seconds = args["frame_ms"] / 1000
    rate, channels = parse_format(args["source"])
    frames = pcm_frames(music_like(seconds, rate, channels, seed=1), rate, "pcm_s16le", frame_seconds)
    stats: dict[str, Any] = {"latency_ms": [], "updates": 0, "gaps": 0, "late_frames": 0, "frames": 0, "errors": Counter(),
                             "failed_rooms": 0}
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    base = f"ws://127.0.0.1:{port}/v1/rooms"

    async def listen(ws: Any, record: bool) -> None:
        last = None
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "mood":
                if record:
                    stats["latency_ms"].append(msg["latency_ms"])
                    stats["updates"] += 1
                    if last is not None and msg["seq"] != last + 1:
                        stats["gaps"] += msg["seq"] - last - 1
                    last = msg["seq"]
            elif msg["type"] == "error":
                stats["errors"][msg["code"]] += 1

    async def room(k: int) -> None:
        name = f"bench{k}"
        async with gate:
            listeners = [await connect(f"{base}/{name}", proxy=None, compression=None) for _ in range(n_listeners)]
            src = await connect(f"{base}/{name}?role=source&sample_rate={rate}&channels={channels}", proxy=None,
                                compression=None, max_queue=None)
        readers = [asyncio.create_task(listen(ws, True)) for ws in listeners]
        readers.append(asyncio.create_task(listen(src, False)))
        t0 = start_at + np.random.default_rng(k).uniform(0, hop)
        loop_t0 = asyncio.get_running_loop().time() + (t0 - time.time())
        for i, frame in enumerate(frames):
            due = loop_t0 + i * frame_seconds
            delay = due - asyncio.get_running_loop().time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -frame_seconds:
                stats["late_frames"] += 1
            await src.send(frame)
            stats["frames"] += 1
        await src.send('{"type":"end"}')
        await asyncio.wait_for(readers[-1], 60)  # the server closes a source with 1000 after its last update
        for ws in listeners:
            await ws.close()
        await asyncio.gather(*readers[:-1], return_exceptions=True)

    outcomes = await asyncio.gather(*(room(k) for k in rooms), return_exceptions=True)
    stats["failed_rooms"] = sum(isinstance(o, BaseException) for o in outcomes)
    stats["failures"] = sorted({repr(o)[:200] for o in outcomes if isinstance(o, BaseException)})[:5]
    stats["errors"] = dict(stats["errors"])
    return stats


# ------------------------------------------------------------------------------------------------ OSC receivers


class OscReceivers:
    """One UDP socket per room (the rooms' OSC targets) and a thread counting the datagrams that arrive."""

    def __init__(self, rooms: int) -> None:
        import selectors
        import socket
        import threading

        self.socks = []
        for _ in range(rooms):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            self.socks.append(sock)
        self.datagrams = 0
        self._stop = False
        self._sel = selectors.DefaultSelector()
        for sock in self.socks:
            self._sel.register(sock, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def targets(self, rate_hz: float) -> list[dict[str, Any]]:
        return [{"host": "127.0.0.1", "port": s.getsockname()[1], "rooms": [f"bench{k}"], "rate_hz": rate_hz}
                for k, s in enumerate(self.socks)]

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(0.2):
                try:
                    while key.fileobj.recv(65536):  # type: ignore[union-attr]
                        self.datagrams += 1
                except BlockingIOError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for sock in self.socks:
            sock.close()


# ------------------------------------------------------------------------------------------------ profile


# waiting, not working: the event loop in epoll, the inference thread waiting for windows or for its tick
IDLE_FRAMES = ("EpollSelector.select", "_worker (concurrent/futures/thread.py", "InferenceWorker._thread_main (")


def profile_summary(raw: Path, top: int = 25) -> list[tuple[str, float]]:
    """py-spy's raw collapsed stacks -> the functions with the most samples on top of the stack (self time), as
    shares of the samples in which a thread was working (waiting in epoll or for work excluded)."""
    leaf: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        top_frame = stack.split(";")[-1]
        if not stack or top_frame.startswith(IDLE_FRAMES):
            continue
        n = int(count)
        total += n
        leaf[top_frame] += n
    return [(name, n / total) for name, n in leaf.most_common(top)] if total else []


# ------------------------------------------------------------------------------------------------ the run


def parse_format(text: str) -> tuple[int, int]:
    """"RATE:CHANNELS" (e.g. 16000:1) -> (rate, channels)."""
    try:
        rate, channels = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a source format is RATE:CHANNELS (e.g. 16000:1), got {text!r}") from None
    return rate, channels


def parse_osc(text: str) -> float | None:
    """"off" -> None, else a rate_hz."""
    if text == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--osc takes off or a rate in Hz (0: one bundle per update), got {text!r}") from None


def measure(
    args: argparse.Namespace, code: Path | None = None, source: str = SOURCE_FORMAT, osc: float | None = None,
) -> dict[str, Any]:
    rate, channels = parse_format(source)
    receivers = OscReceivers(args.rooms) if osc is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(args, Path(tmp), code, receivers.targets(osc) if receivers else None)
        try:
            time.sleep(0.5)
            rss0, ramp = proc_rss_bytes(proc.pid), max(3.0, args.rooms / 100)
            start_at = time.time() + ramp + READY_MARGIN_SECONDS
            ctx = multiprocessing.get_context("spawn")
            results = ctx.Queue()
            shares = [list(range(args.rooms))[i :: args.procs] for i in range(args.procs)]
            gen_args = {"seconds": args.seconds, "hop": args.hop, "listeners": args.listeners, "frame_ms": args.frame_ms,
                        "source": source}
            procs = [ctx.Process(target=generator_process, args=(s, port, gen_args, start_at, results)) for s in shares if s]
            for p in procs:
                p.start()
            t_begin = start_at + args.hop + 1.0  # every room streaming
            t_end = start_at + args.seconds - 0.5  # before the first stream ends
            time.sleep(max(0.0, t_begin - time.time()))
            cpu0, w0 = proc_cpu_seconds(proc.pid), time.time()
            heard0, bytes0 = (metric(scrape_metrics(port), k) for k in (AUDIO_METRIC, AUDIO_BYTES_METRIC))
            sys0 = proc_cpu_seconds(proc.pid, kernel_only=True)
            spy = None
            if args.profile:
                if shutil.which("py-spy") is None:
                    sys.exit("--profile needs py-spy (pip install py-spy)")
                spy = subprocess.Popen(["py-spy", "record", "-p", str(proc.pid), "-r", "200", "-d", str(int(t_end - w0)),
                                        "-f", "raw", "-o", args.profile, "--nonblocking"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            time.sleep(max(0.0, t_end - time.time()))
            cpu1, w1, rss1 = proc_cpu_seconds(proc.pid), time.time(), proc_rss_bytes(proc.pid)
            heard1, bytes1 = (metric(scrape_metrics(port), k) for k in (AUDIO_METRIC, AUDIO_BYTES_METRIC))
            sys1 = proc_cpu_seconds(proc.pid, kernel_only=True)
            gens = [results.get(timeout=args.seconds + 120) for _ in procs]
            for p in procs:
                p.join(30)
            if spy is not None:
                spy.wait(60)
            metrics = scrape_metrics(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
            if receivers is not None:
                receivers.close()
    lat = np.array([x for g in gens for x in g["latency_ms"]] or [np.nan])
    room_seconds = heard1 - heard0  # audio the server actually analysed meanwhile (less than sent if it fell behind)
    batches = metric(metrics, "sendreturn_batch_size_count")
    gen_cpu = sum(g["cpu_seconds"] for g in gens)
    result = {
        "rooms": args.rooms,
        "listeners_per_room": args.listeners,
        "audio": f"{rate} Hz x{channels} pcm_s16le, {args.frame_ms:g} ms frames, real time",
        "seconds_per_room": args.seconds,
        "measured_seconds": round(w1 - w0, 2),
        "server_cpu_ms_per_room_second": round(1000 * (cpu1 - cpu0) / room_seconds, 3),
        # PCM payload the server received per second of audio (websocket framing adds ~8 bytes per frame)
        "upload_bytes_per_room_second": round((bytes1 - bytes0) / room_seconds),
        "server_kernel_cpu_share": round((sys1 - sys0) / max(cpu1 - cpu0, 1e-9), 3),  # sockets, page faults
        "audio_analysed_fraction": round(room_seconds / (args.rooms * (w1 - w0)), 3),  # < 1: the server fell behind
        "server_cores_busy": round((cpu1 - cpu0) / (w1 - w0), 3),
        "server_rss_mb_before": round(rss0 / 2**20, 1),
        "server_rss_mb_during": round(rss1 / 2**20, 1),
        "rss_growth_mb_per_room": round((rss1 - rss0) / 2**20 / args.rooms, 3),
        "updates_at_listeners": int(sum(g["updates"] for g in gens)),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 2),
        "latency_ms_max": round(float(np.max(lat)), 2),
        "seq_gaps_at_listeners": int(sum(g["gaps"] for g in gens)),
        "server_dropped_messages": int(metric(metrics, "sendreturn_dropped_messages_total")),
        "batch_size_mean": round(metric(metrics, "sendreturn_batch_size_sum") / batches, 2) if batches else None,
        "inference_ms_per_batch_mean": round(1000 * metric(metrics, "sendreturn_inference_duration_seconds_sum") / batches, 2) if batches else None,
        "errors": {k: v for g in gens for k, v in g["errors"].items()},
        "failed_rooms": int(sum(g["failed_rooms"] for g in gens)),
        "generator_processes": len(gens),
        "generator_cpu_cores": round(gen_cpu / (args.seconds + args.hop), 3),
        "generator_late_frames": int(sum(g["late_frames"] for g in gens)),
        "generator_frames": int(sum(g["frames"] for g in gens)),
        "machine_load_average_1min": round(os.getloadavg()[0], 2),  # on a shared machine: what else wanted the cores
        "osc_rate_hz": osc,
    }
    if receivers is not None:
        result["osc_bundles_sent"] = int(metric(metrics, "sendreturn_osc_bundles_sent_total"))
        result["osc_send_errors"] = int(metric(metrics, "sendreturn_osc_send_errors_total"))
        result["osc_datagrams_received"] = receivers.datagrams
    failures = [f for g in gens for f in g.get("failures", [])]
    if failures:
        result["failures"] = failures[:5]
    if args.profile and Path(args.profile).is_file():
        result["profile_top_self"] = [(name, round(share, 4)) for name, share in profile_summary(Path(args.profile))]
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rooms", type=int, default=200, help="rooms, each one source (default 200)")
    p.add_argument("--listeners", type=int, default=1, help="listeners per room besides the source (default 1)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of audio each source streams (default 30)")
    p.add_argument("--hop", type=float, default=DEFAULTS["analysis"]["hop_seconds"], help="analysis.hop_seconds (default: the server's)")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument("--frame-ms", type=float, default=1000 * FRAME_SECONDS,
                   help="milliseconds of audio per websocket frame a source sends (default 100, what the README's numbers use; "
                        "protocol v1 allows larger frames, and each frame costs the server a websocket message)")
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a server config key for this run, e.g. --set analysis.max_batch=8 (repeatable)")
    p.add_argument("--profile", default=None, metavar="OUT", help="py-spy the server during the measurement")
    p.add_argument("--against", default=None, metavar="DIR",
                   help="a checkout of other code (e.g. `git worktree add DIR COMMIT`): its server runs alternately with "
                        "this one under the same load, and the medians and their ratio are printed")
    p.add_argument("--repeats", type=int, default=1, help="runs (of each server with --against); medians reported")
    p.add_argument("--sources", nargs="+", default=[SOURCE_FORMAT], metavar="RATE:CHANNELS",
                   help=f"what each source sends (default {SOURCE_FORMAT}); several: each measured in turn, medians "
                        "and CPU ratios to the first printed")
    p.add_argument("--osc", nargs="+", default=["off"], metavar="off|RATE_HZ",
                   help="one OSC target per room at this rate_hz (0: one bundle per update; off: no OSC, the default); "
                        "several: each measured in turn, CPU ratios to the first printed")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")


SUMMARY_KEYS = ("server_cpu_ms_per_room_second", "upload_bytes_per_room_second", "latency_ms_p50", "latency_ms_p95", "rss_growth_mb_per_room",
                "audio_analysed_fraction", "seq_gaps_at_listeners", "batch_size_mean", "machine_load_average_1min")


def run(args: argparse.Namespace) -> int:
    from .common import write_json

    for source in args.sources:
        parse_format(source)
    oscs = [parse_osc(x) for x in args.osc]
    if args.against is None and args.repeats <= 1 and len(args.sources) == 1 and len(oscs) == 1:
        res = measure(args, None, args.sources[0], oscs[0])
        print(json.dumps({k: v for k, v in res.items() if k != "profile_top_self"}, indent=1))
        for name, share in res.get("profile_top_self", []):
            print(f"  {100 * share:5.1f}%  {name}")
        write_json(args.json, res)
        return 0
    codes: list[Path | None] = [None] if args.against is None else [None, Path(args.against).resolve()]
    if args.against is not None and not (codes[1] / "sendreturn_mood" / "__main__.py").is_file():  # type: ignore[operator]
        sys.exit(f"--against {args.against}: no sendreturn_mood package there (a checkout of this repository)")
    def variant(code: Path | None, source: str, osc: float | None = oscs[0]) -> str:
        name = "this" if code is None else "against"
        name = name if len(args.sources) == 1 else f"{name} {source}"
        return name if len(oscs) == 1 else f"{name} osc {'off' if osc is None else f'{osc:g} Hz'}"

    runs: dict[str, list[dict[str, Any]]] = {}
    for i in range(args.repeats):  # alternating, so every variant sees the same moments of a noisy machine
        for code in codes:
            for source in args.sources:
                for osc in oscs:
                    name = variant(code, source, osc)
                    res = measure(args, code, source, osc)
                    runs.setdefault(name, []).append(res)
                    print(f"run {i + 1} {name:8s} " + " ".join(f"{k}={res[k]}" for k in SUMMARY_KEYS), flush=True)
    medians = {name: {k: _median([r[k] for r in rs]) for k in SUMMARY_KEYS} for name, rs in runs.items() if rs}
    out: dict[str, Any] = {"rooms": args.rooms, "repeats": args.repeats, "against": args.against, "sources": args.sources,
                           "medians": medians, "runs": runs}
    cpu = {name: m["server_cpu_ms_per_room_second"] for name, m in medians.items()}
    if args.against is not None:
        this, other = cpu[variant(None, args.sources[0])], cpu[variant(codes[1], args.sources[0])]
        out["cpu_ratio_against_over_this"] = round(other / this, 3) if this and other else None
    if len(args.sources) > 1:
        first = cpu[variant(None, args.sources[0])]
        out["cpu_ratio_over_first_source"] = {
            s: round(cpu[variant(None, s)] / first, 3) if first and cpu[variant(None, s)] else None for s in args.sources
        }
    if len(oscs) > 1:
        first = cpu[variant(None, args.sources[0], oscs[0])]
        out["cpu_ratio_over_first_osc"] = {
            name: round(cpu[name] / first, 3) if first and cpu[name] else None
            for name in (variant(None, args.sources[0], o) for o in oscs)
        }
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
    write_json(args.json, out)
    return 0


def _median(values: list[Any]) -> float | None:
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    return round(float(np.median(xs)), 3) if xs else None

"""Rooms across processes through a real Redis: three `serve --broker redis://...` processes, real clients, audio.

A room's source may connect to any process and its listeners to any others; every listener gets every update of its
room, byte for byte the same, with the same seq; one source per room across the cluster; a killed process's rooms
are taken over; Redis may go away and come back."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sendreturn_mood import contract
from sendreturn_mood.audio.pcm import encode
from tests.cluster_support import RedisServer, ServerProcess, write_config
from tests.server_support import checked, tone

pytestmark = pytest.mark.slow
LEASE = 1.5  # seconds: short, so the crash tests are quick


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def cluster(tmp_path, tiny_model_path, redis_server):
    """Three server processes A, B, C sharing rooms through one Redis."""
    config = write_config(tmp_path, **{"broker.lease_seconds": LEASE, "broker.reconnect_max_seconds": 0.5})
    procs: list[ServerProcess] = []
    try:
        for _ in range(3):
            procs.append(ServerProcess(config, tiny_model_path, redis_server.url))
        yield procs
    finally:
        for p in procs:
            p.stop()


def sample(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def two_free_ports() -> int:
    """A port P such that P and P + 1 are both free now."""
    from tests.cluster_support import free_port

    for _ in range(50):
        p = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def url(server: ServerProcess, room: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{server.url}/v1/rooms/{room}" + (f"?{query}" if query else "")


@asynccontextmanager
async def join(server: ServerProcess, room: str, **params: Any) -> AsyncIterator[ClientConnection]:
    """A connected client whose welcome has been read (a source's own `source: connected` too)."""
    async with connect(url(server, room, **params), proxy=None, compression=None) as ws:
        welcome = checked(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert welcome["type"] == "welcome"
        if params.get("role") == "source":
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "source", "state": "connected"}
        yield ws


async def texts_until(ws: ClientConnection, done: Any, timeout: float = 20.0) -> list[str]:
    """Raw text messages up to and including the first for which done(parsed) is true."""
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        text = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        out.append(text)
        if done(checked(json.loads(text))):  # what crossed processes keeps to schema/v1/ too
            return out


def is_source_state(state: str) -> Any:
    return lambda m: m["type"] == "source" and m["state"] == state


async def stream(ws: ClientConnection, seconds: float, pace: float = 0.0, seed: int = 0) -> None:
    audio = tone(seconds, 16000, seed=seed)
    for i in range(0, audio.size, 1600):
        await ws.send(encode(audio[i : i + 1600], "pcm_s16le"))
        if pace:
            await asyncio.sleep(pace)


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_listeners_on_every_process_get_identical_updates(cluster):
    a, b, c = cluster
    async with join(a, "jam") as la, join(b, "jam") as lb, join(c, "jam") as lc:
        async with join(a, "jam", role="source", sample_rate=16000) as src:
            collectors = [asyncio.ensure_future(texts_until(lis, is_source_state("disconnected"))) for lis in (la, lb, lc)]
            await stream(src, 3.2)
            await texts_until(src, lambda m: m["type"] == "mood" and m["stream_time"] > 2.9)  # analysed, then a new track
            await src.send(json.dumps({"type": "track", "id": "t2", "title": "Second"}))
            await stream(src, 1.2, seed=1)
            await src.send(json.dumps({"type": "end"}))
            got = await asyncio.gather(*collectors)
    assert got[0] == got[1] == got[2]  # byte-identical, same order, wherever the listener is
    assert json.loads(got[0][0]) == {"type": "source", "state": "connected"}  # everyone heard the source arrive
    moods = [json.loads(t) for t in got[0] if json.loads(t)["type"] == "mood"]
    assert [m["seq"] for m in moods] == list(range(1, len(moods) + 1)) and len(moods) == 6
    assert moods[-1]["track"] == {"id": "t2", "title": "Second"}


async def test_one_source_per_room_across_processes(cluster):
    a, b, c = cluster
    async with join(a, "solo", role="source", sample_rate=16000):
        for other in (b, c, a):
            with pytest.raises(InvalidStatus) as e:
                async with connect(url(other, "solo", role="source"), proxy=None):
                    pass
            assert e.value.response.status_code == 409
            assert json.loads(e.value.response.body)["error"]["code"] == "source_taken"
    # The slot is released as the source leaves: another process may take the room straight after.
    await wait_for(lambda: b.http("/v1/rooms/solo")[0] == 404, 5, "the room to empty")
    async with join(b, "solo", role="source", sample_rate=16000):
        pass


async def test_room_state_health_and_metrics_tell_the_truth_across_processes(cluster):
    a, b, c = cluster
    async with join(a, "state", role="source", sample_rate=16000, preset="subtle") as src, join(b, "state") as lb, join(c, "state") as lc:
        welcome_on_c_again = None
        async with connect(url(c, "state"), proxy=None) as late:
            welcome_on_c_again = json.loads(await late.recv())
        assert welcome_on_c_again["preset"] == "subtle"  # the preset set by a source on another process
        await src.send(json.dumps({"type": "track", "id": "x1", "artist": "Someone"}))
        await stream(src, 1.5)
        await texts_until(lb, lambda m: m["type"] == "mood")
        await texts_until(lc, lambda m: m["type"] == "mood")

        def room_seen() -> bool:
            status, body = c.http("/v1/rooms/state")
            return status == 200 and body["listeners"] == 2 and body["seq"] >= 1

        await wait_for(room_seen, 10, "the room's state on C")
        status, body = b.http("/v1/rooms/state")
        assert status == 200
        contract.validate("room-info", body, strict=True)  # the cluster's HTTP bodies keep to schema/v1/
        assert body["source"] is True and body["listeners"] == 2 and body["preset"] == "subtle"
        assert body["track"] == {"id": "x1", "artist": "Someone"}
        status, health = b.http("/healthz")
        contract.validate("healthz", health, strict=True)
        assert status == 200 and health["status"] == "ok" and health["broker"]["connected"] is True
        assert health["broker"]["cluster"]["nodes"] == 3
        _, metrics = a.http("/metrics")
        assert sample(metrics, "sendreturn_broker_up") == 1 and re.search(r'sendreturn_node_info\{[^}]*node="', metrics)
    assert c.http("/v1/rooms/nobody")[0] == 404


async def test_a_killed_process_loses_its_rooms_and_the_source_takes_them_back_elsewhere(cluster):
    a, b, _ = cluster
    async with join(b, "crash") as lb:
        ws = await connect(url(a, "crash", role="source", sample_rate=16000), proxy=None, compression=None)
        try:
            await asyncio.wait_for(ws.recv(), 10)
            await stream(ws, 2.5)
            before = [json.loads(t) for t in await texts_until(lb, lambda m: m["type"] == "mood" and m["seq"] >= 3)]
            last_seq = max(m["seq"] for m in before if m["type"] == "mood")
            t0 = time.monotonic()
            a.kill()
            await texts_until(lb, is_source_state("disconnected"), timeout=LEASE * 4)
            assert time.monotonic() - t0 < LEASE * 3
        finally:
            await ws.close()
        # The source reconnects to B: it may take the room as soon as the dead process's slot has expired.
        async with join(b, "crash", role="source", sample_rate=16000) as src:
            await texts_until(lb, is_source_state("connected"))
            await stream(src, 1.5)
            after = json.loads((await texts_until(lb, lambda m: m["type"] == "mood"))[-1])
    assert after["seq"] > last_seq  # seq continues upward, never repeats


async def test_redis_going_away_and_coming_back(cluster, redis_server):
    a, b, _ = cluster
    async with join(a, "flaky") as la, join(b, "flaky") as lb, join(a, "flaky", role="source", sample_rate=16000) as src:
        await stream(src, 1.5)
        await texts_until(lb, lambda m: m["type"] == "mood")
        redis_server.stop()
        await wait_for(lambda: a.http("/healthz")[1]["status"] == "degraded", 10, "A to notice Redis is gone")
        _, health = a.http("/healthz")
        assert health["broker"]["connected"] is False
        assert sample(a.http("/metrics")[1], "sendreturn_broker_up") == 0
        # A keeps serving what it can locally: its own listener still gets updates.
        await stream(src, 1.0, seed=2)
        local = json.loads((await texts_until(la, lambda m: m["type"] == "mood" and m["stream_time"] > 2.0))[-1])
        redis_server.start()
        await wait_for(lambda: all(p.http("/healthz")[1]["broker"]["connected"] for p in (a, b)), 20, "both to reconnect")
        await stream(src, 1.0, seed=3)
        remote = json.loads((await texts_until(lb, lambda m: m["type"] == "mood" and m["seq"] > local["seq"]))[-1])
        assert remote["seq"] > local["seq"]
        assert a.proc.poll() is None and b.proc.poll() is None  # nobody crashed
        assert sample(a.http("/metrics")[1], "sendreturn_broker_reconnects_total") == 1
        # The cluster behaviour is back: the room is one room again.
        with pytest.raises(InvalidStatus) as e:
            async with connect(url(b, "flaky", role="source"), proxy=None):
                pass
        assert e.value.response.status_code == 409


async def test_serve_workers_share_one_port(tmp_path, tiny_model_path, redis_server):
    config = write_config(tmp_path)
    metrics_port = two_free_ports()
    proc = ServerProcess(config, tiny_model_path, redis_server.url, "--workers", "2", "--metrics-port", str(metrics_port))
    try:
        await wait_for(lambda: proc.http("/healthz")[1]["broker"]["cluster"]["nodes"] == 2, 20, "two workers")
        listeners = [await connect(url(proc, "shared"), proxy=None) for _ in range(6)]
        try:
            for ws in listeners:
                await ws.recv()
            async with join(proc, "shared", role="source", sample_rate=16000) as src:
                await stream(src, 1.5)
                await src.send(json.dumps({"type": "end"}))
                got = await asyncio.gather(*(texts_until(ws, lambda m: m["type"] == "mood") for ws in listeners))
            assert len({tuple(g[-1:]) for g in got}) == 1  # the same first update on both processes
        finally:
            for ws in listeners:
                await ws.close()
        nodes = {proc.http("/healthz")[1]["broker"]["node"] for _ in range(20)}
        assert len(nodes) == 2  # connections really are spread over two processes
        # Each worker can be scraped on its own metrics port (a scrape of the shared port reaches either one).
        scraped = set()
        for port in (metrics_port, metrics_port + 1):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            scraped |= set(re.findall(r'sendreturn_node_info\{[^}]*node="([^"]+)"', text))
        assert scraped == nodes
    finally:
        assert proc.stop() == 0


async def test_unreachable_redis_is_a_clear_start_up_error(tmp_path, tiny_model_path):
    from tests.cluster_support import free_port

    config = write_config(tmp_path, **{"broker.connect_timeout_seconds": 1.0})
    with pytest.raises(RuntimeError) as e:
        ServerProcess(config, tiny_model_path, f"redis://127.0.0.1:{free_port()}/0")
    assert "cannot reach Redis at redis://127.0.0.1:" in str(e.value)


def test_workers_without_a_broker_are_refused_with_the_reason():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "sendreturn_mood", "serve", "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "needs a broker" in run.stderr


def test_the_deployment_files_run_real_commands():
    """compose.yaml and the Dockerfile start the server with flags the CLI really has, and a valid config."""
    import re

    import yaml

    from sendreturn_mood.cli.main import build_parser
    from sendreturn_mood.config import load_config
    from tests.cluster_support import REPO

    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    servers = [s for s in compose["services"].values() if "build" in s]
    assert len(servers) == 2 and any("redis-server" in " ".join(s.get("command", [])) for s in compose["services"].values())
    cmd = re.search(r'^CMD (\[.*\])$', (REPO / "Dockerfile").read_text(), re.M)
    for argv in [s["command"] for s in servers] + [json.loads(cmd.group(1))]:
        args = build_parser().parse_args(argv)
        config = load_config(None, {"server.host": args.host, "server.port": args.port, "broker.url": args.broker, "server.workers": args.workers})
        assert config.server.host == "0.0.0.0"


@dataclass
class Heard:
    """Everything one client received, parsed, with the time it arrived."""

    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    closed: int | None = None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m["type"] == kind]

    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.of("mood")]


async def hear(ws: ClientConnection, into: Heard) -> None:
    try:
        async for text in ws:
            into.messages.append((time.monotonic(), checked(json.loads(text))))
    except ConnectionClosed:
        pass
    into.closed = ws.close_code


def assert_rising_and_told(heard: Heard) -> None:
    """seq only goes up at this listener, and every gap in it was announced by a `resync` just before."""
    last = 0
    for _, m in heard.messages:
        if m["type"] == "resync":
            assert m["from_seq"] == last + 1 and m["to_seq"] >= m["from_seq"], (last, m)
            last = m["to_seq"]
        elif m["type"] == "mood":
            assert m["seq"] > last, f"seq went from {last} to {m['seq']}"
            assert last == 0 or m["seq"] == last + 1, f"seq jumped from {last} to {m['seq']} without a resync"
            last = m["seq"]


def source_states(heard: Heard) -> list[str]:
    return [m["state"] for m in heard.of("source")]


async def refused(server: ServerProcess, room: str, **params: Any) -> Any:
    with pytest.raises(InvalidStatus) as e:
        async with connect(url(server, room, **params), proxy=None):
            pass
    return e.value.response


async def test_no_second_source_while_redis_is_away_and_seq_keeps_rising(cluster, redis_server):
    """Room r's source on A, listeners on A and B; Redis stops. A second source for r on B is refused (503
    cluster_unavailable with Retry-After), and so is a source for a room B does not hold; A's room keeps running for
    A's listener; when Redis is back B's listener hears A's source again. At no listener does seq go down (a gap is
    announced by `resync`), the source is never closed, and B's listener never hears it leave."""
    a, b, _ = cluster
    heard = {name: Heard() for name in ("la", "lb", "src")}
    async with join(a, "r") as la, join(b, "r") as lb, join(a, "r", role="source", sample_rate=16000) as src:
        tasks = [asyncio.ensure_future(hear(ws, heard[n])) for n, ws in (("la", la), ("lb", lb), ("src", src))]
        streaming = asyncio.ensure_future(stream(src, 60, pace=0.1))  # real time
        try:
            await wait_for(lambda: len(heard["lb"].of("mood")) >= 2, 20, "B's listener to hear the room")
            redis_server.stop()
            await wait_for(lambda: b.http("/healthz")[1]["status"] == "degraded", 10, "B to notice Redis is gone")
            for room in ("r", "elsewhere"):
                response = await refused(b, room, role="source", sample_rate=16000)
                assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
                assert json.loads(response.body)["error"]["code"] == "cluster_unavailable"
                contract.validate("http-error", json.loads(response.body), strict=True)
            assert (await refused(a, "r", role="source")).status_code == 409  # A holds r: one source there already
            outage = len(heard["la"].of("mood"))
            await wait_for(lambda: len(heard["la"].of("mood")) >= outage + 2, 20, "A's room to keep running alone")
            redis_server.start()
            await wait_for(lambda: all(p.http("/healthz")[1]["broker"]["connected"] for p in (a, b)), 20, "both to reconnect")
            top = max(heard["la"].seqs())
            await wait_for(lambda: max(heard["lb"].seqs()) > top, 20, "B's listener to hear A's source again")
        finally:
            streaming.cancel()
            await src.close()
            await asyncio.sleep(0.5)
            for t in tasks:
                t.cancel()
    for name in ("la", "lb"):
        assert_rising_and_told(heard[name])
    assert heard["lb"].of("resync"), "B's listener missed the outage's updates without being told"
    assert not heard["src"].of("error")  # the source was never refused or closed
    assert "disconnected" not in source_states(heard["lb"])[:-1]  # only when the source finally left


async def test_after_kill_9_listeners_elsewhere_hear_the_source_leave_then_come_back_elsewhere(cluster):
    """Sources of several rooms on A, listeners on B and C; A is killed (-9) and every source reconnects to B as soon
    as B lets it. Every listener hears `source: disconnected` within about a lease of the kill, before the source's
    `connected` from B, and seq goes on rising."""
    a, b, c = cluster
    rooms = [f"k{i}" for i in range(6)]
    heard = {(r, p): Heard() for r in rooms for p in "bc"}
    listeners = []
    for r in rooms:
        for p, server in (("b", b), ("c", c)):
            ws = await connect(url(server, r), proxy=None, compression=None)
            assert json.loads(await ws.recv())["type"] == "welcome"
            listeners.append((ws, asyncio.ensure_future(hear(ws, heard[(r, p)]))))
    sources = [await connect(url(a, r, role="source", sample_rate=16000), proxy=None, compression=None) for r in rooms]
    try:
        await asyncio.gather(*(stream(ws, 1.6) for ws in sources))
        await wait_for(lambda: all(h.of("mood") for h in heard.values()), 30, "every listener to hear its room")
        killed = time.monotonic()
        a.kill()

        async def come_back(room: str) -> ClientConnection:
            while True:
                try:
                    ws = await connect(url(b, room, role="source", sample_rate=16000), proxy=None, compression=None)
                except InvalidStatus as e:
                    assert e.response.status_code == 409  # A's lease holds until it expires
                    await asyncio.sleep(0.05)
                    continue
                await stream(ws, 1.6, seed=1)
                return ws

        sources += await asyncio.gather(*(come_back(r) for r in rooms))
        await wait_for(lambda: all(source_states(h)[-2:] == ["disconnected", "connected"] and len(h.of("mood")) >= 2
                                   for h in heard.values()), 30, "every listener to hear the source come back")
    finally:
        for ws, task in listeners:
            await ws.close()
            task.cancel()
        for ws in sources:
            await ws.close()
    for (room, where), h in heard.items():
        told = next(t for t, m in h.messages if m["type"] == "source" and m["state"] == "disconnected")
        assert told - killed < LEASE + 1.5, f"{room} on {where}: told {told - killed:.1f} s after the kill"
        assert source_states(h) == ["connected", "disconnected", "connected"] or source_states(h) == ["disconnected", "connected"]
        assert_rising_and_told(h)


async def test_a_process_cut_off_from_redis_is_fenced_and_hands_the_room_over(tmp_path, tiny_model_path, redis_server):
    """A reaches Redis through a proxy, B directly. A's Redis traffic stalls for longer than a lease: B's listener
    hears A's source leave, and a new source for the room is accepted on B. A's room keeps running for A's own
    listener meanwhile, but nothing more of A's lease reaches B. When A's traffic flows again A learns it lost the
    room: its source is closed with an error, and A's listener follows B's source, seq still rising."""
    from sendreturn_mood.hostile.proxy import FaultProxy

    proxy = await FaultProxy(redis_server.port).start()
    config = write_config(tmp_path, **{"broker.lease_seconds": LEASE, "broker.reconnect_max_seconds": 0.5})
    # started (and stopped) from threads: the proxy forwards A's Redis traffic in this loop meanwhile
    a = await asyncio.to_thread(ServerProcess, config, tiny_model_path, f"redis://127.0.0.1:{proxy.port}/0")
    b = await asyncio.to_thread(ServerProcess, config, tiny_model_path, redis_server.url)
    heard = {n: Heard() for n in ("la", "lb", "src_a")}
    try:
        async with join(a, "cut") as la, join(b, "cut") as lb, join(a, "cut", role="source", sample_rate=16000) as src_a:
            tasks = [asyncio.ensure_future(hear(ws, heard[n])) for n, ws in (("la", la), ("lb", lb), ("src_a", src_a))]
            streaming = asyncio.ensure_future(stream(src_a, 60, pace=0.1))
            try:
                await wait_for(lambda: len(heard["lb"].of("mood")) >= 2, 20, "B's listener to hear A's source")
                proxy.stall()
                await wait_for(lambda: "disconnected" in source_states(heard["lb"]), LEASE * 4, "B to hear A's source leave")
                async with join(b, "cut", role="source", sample_rate=16000) as src_b:
                    await src_b.send(json.dumps({"type": "track", "id": "b"}))
                    streaming_b = asyncio.ensure_future(stream(src_b, 60, pace=0.1, seed=1))
                    await wait_for(lambda: len(heard["la"].of("mood")) >= 6, 20, "A's room to keep running alone")
                    proxy.resume()
                    await wait_for(lambda: heard["src_a"].closed is not None, 20, "A to close its source")
                    await wait_for(lambda: any(m.get("track") == {"id": "b"} for m in heard["la"].of("mood")), 20,
                                   "A's listener to follow B's source")
                    streaming_b.cancel()
            finally:
                streaming.cancel()
                await asyncio.sleep(0.3)
                for t in tasks:
                    t.cancel()
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
        await proxy.close()
    assert heard["src_a"].closed == 1008 and heard["src_a"].of("error")[-1]["code"] == "not_allowed"
    for name in ("la", "lb"):
        assert_rising_and_told(heard[name])
    # B's listener: once B's source connected, nothing of A's lease (its updates have no track) reached it
    # Both listeners heard A's source come, leave, and B's come (then leave as the test ended).
    for name in ("la", "lb"):
        assert source_states(heard[name])[:3] == ["connected", "disconnected", "connected"], name
    # B's listener: once B's source connected, nothing of A's lease (its updates have no track) reached it
    states = [i for i, (_, m) in enumerate(heard["lb"].messages) if m["type"] == "source"]
    after_b = [m for _, m in heard["lb"].messages[states[2]:] if m["type"] == "mood"]
    assert after_b and all(m.get("track") == {"id": "b"} for m in after_b)


async def test_a_reserved_source_slot_holds_on_every_process(tmp_path, tiny_model_path, redis_server):
    """A reserving token's source drops from A: no other client can take the room on B while the slot is held, and
    the same source may come back through B."""
    from sendreturn_mood.server.auth import Authenticator
    from sendreturn_mood.config import load_config

    secret = "s" * 40
    config = write_config(tmp_path, **{"broker.lease_seconds": LEASE, "server.auth.secret": secret, "server.auth.reserve_seconds": 30})
    auth = Authenticator.from_config(load_config(config))
    dj = auth.mint("stage", ["source"], 600, subject="dj", reserve=True)
    intruder = auth.mint("*", ["source", "listener"], 600, subject="intruder")
    a, b = ServerProcess(config, tiny_model_path, redis_server.url), ServerProcess(config, tiny_model_path, redis_server.url)
    try:
        async with join(a, "stage", role="source", sample_rate=16000, token=dj):
            with pytest.raises(InvalidStatus) as e:  # taken while connected, from the other process
                async with connect(url(b, "stage", role="source", token=intruder), proxy=None):
                    pass
            assert e.value.response.status_code == 409
        await wait_for(lambda: b.http(f"/v1/rooms/stage?token={dj}")[0] == 404, 5, "the room to empty")
        with pytest.raises(InvalidStatus) as e:  # the DJ dropped: the slot is still held for it, on every process
            async with connect(url(b, "stage", role="source", token=intruder), proxy=None):
                pass
        assert e.value.response.status_code == 409 and "reserved" in json.loads(e.value.response.body)["error"]["message"]
        async with join(b, "stage", role="source", sample_rate=16000, token=dj):  # the DJ comes back through B
            pass
    finally:
        a.stop()
        b.stop()


async def test_per_address_limits_count_over_every_process(tmp_path, tiny_model_path, redis_server):
    """One client address may hold `server.max_connections_per_address` connections and
    `server.max_rooms_per_address` rooms in the whole cluster, not that many on each process; room creations and
    room-state requests are rate-limited over the cluster too."""
    config = write_config(tmp_path, **{"server.max_connections_per_address": 3, "server.max_rooms_per_address": 2,
                                       "server.room_creations_per_minute": 4, "server.http_requests_per_second": 2})
    a, b = ServerProcess(config, tiny_model_path, redis_server.url), ServerProcess(config, tiny_model_path, redis_server.url)
    held: list[ClientConnection] = []
    try:
        await wait_for(lambda: a.http("/healthz")[1]["broker"]["cluster"]["nodes"] == 2, 20, "both processes")
        for server, room in ((a, "one"), (a, "two"), (b, "one")):
            held.append(await connect(url(server, room), proxy=None))
        response = await refused(b, "one")  # a fourth connection, on the process that has only one of them
        assert response.status_code == 429 and "3 connections" in json.loads(response.body)["error"]["message"]
        await held.pop().close()
        await asyncio.sleep(0.5)  # the close reaches B, which records it in Redis
        response = await refused(b, "three")  # a third room, though B has none of this address's rooms
        assert response.status_code == 429 and "2 rooms" in json.loads(response.body)["error"]["message"]
        for ws in held:
            await ws.close()
        held.clear()
        # room creations: a burst of 4 per minute over both processes; three were used above (a room new to a
        # process counts: "one" on A and on B, "two" on A)
        opened = []
        for i, server in enumerate((a, b, a, b)):
            try:
                async with connect(url(server, f"new{i}"), proxy=None):
                    opened.append(i)
            except InvalidStatus as e:
                assert e.response.status_code == 429
        assert len(opened) == 1
        statuses = [server.http("/v1/rooms/nobody")[0] for server in (a, b, a, b, a, b)]
        assert statuses.count(429) == 2 and statuses.count(404) == 4  # a burst of 4 (2 s at 2/s) over both
    finally:
        for ws in held:
            await ws.close()
        a.stop()
        b.stop()


def test_hostile_cluster_short_run_keeps_every_invariant(tiny_model_path):
    """`python -m sendreturn_mood.hostile cluster`, shortened: 2 processes, 3 rooms, 40 s of random Redis stops,
    stalled and dropped broker connections, kill -9 and source reconnects (the schedule of seed 1); every invariant
    holds and the figures come out."""
    import subprocess
    import sys

    from tests.cluster_support import REPO

    run = subprocess.run(
        [sys.executable, "-m", "sendreturn_mood.hostile", "cluster", "--processes", "2", "--rooms", "3",
         "--minutes", "0.67", "--seed", "1", "--model", str(tiny_model_path)],
        capture_output=True, text=True, timeout=150, cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(run.stdout)
    assert figures["violations"] == 0 and sum(figures["faults"].values()) >= 3
    assert figures["updates published"] > 40 and figures["deliveries owed (published while the broker was reachable, listener connected throughout)"] > 20


async def test_after_redis_restarts_empty_holders_take_their_rooms_back_first(tmp_path, tiny_model_path, redis_server):
    """Redis restarts with nothing in it: every lease is gone. For a grace period (a lease plus the reconnect backoff)
    no new source is accepted (503 cluster_unavailable, Retry-After) while the processes that held rooms take them
    back; the room's source streams on throughout, and its listener elsewhere hears it again with seq still rising."""
    config = write_config(tmp_path, **{"broker.lease_seconds": LEASE, "broker.reconnect_max_seconds": 4.0})
    a, b = ServerProcess(config, tiny_model_path, redis_server.url), ServerProcess(config, tiny_model_path, redis_server.url)
    heard = {n: Heard() for n in ("lb", "src")}
    try:
        async with join(b, "held") as lb, join(a, "held", role="source", sample_rate=16000) as src:
            tasks = [asyncio.ensure_future(hear(ws, heard[n])) for n, ws in (("lb", lb), ("src", src))]
            streaming = asyncio.ensure_future(stream(src, 60, pace=0.1))
            try:
                await wait_for(lambda: len(heard["lb"].of("mood")) >= 1, 20, "B's listener to hear the room")
                redis_server.stop()
                redis_server.start()
                statuses = []
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        async with connect(url(b, "fresh", role="source", sample_rate=16000), proxy=None):
                            statuses.append(101)
                            break
                    except InvalidStatus as e:
                        statuses.append(e.response.status_code)
                        if e.response.status_code == 503:
                            assert json.loads(e.response.body)["error"]["code"] == "cluster_unavailable"
                            assert int(e.response.headers["Retry-After"]) >= 1
                    await asyncio.sleep(0.1)
                assert statuses[-1] == 101 and 503 in statuses and set(statuses) <= {101, 503}
                top = max(heard["lb"].seqs())
                await wait_for(lambda: max(heard["lb"].seqs()) > top, 20, "B's listener to hear A's source again")
            finally:
                streaming.cancel()
                await src.close()
                await asyncio.sleep(0.3)
                for t in tasks:
                    t.cancel()
    finally:
        a.stop()
        b.stop()
    assert not heard["src"].of("error")
    assert_rising_and_told(heard["lb"])

"""OSC output, end to end with real parts: a real server streams a real song (a clip from ../shared/data, or audio
made here when it is absent) while a real python-osc UDP server receives its bundles; the bridge command follows a
room over the websocket with a JWT; dead targets leave the room alone. What a bundle must hold is read from the
address map (schema/osc/v1.json) and from the websocket messages the same run received, never from outputs/osc.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import statistics
import sys
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import numpy as np
import pytest
from pythonosc import osc_packet
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import AsyncIOOSCUDPServer
from pythonosc.parsing import osc_types

from sendreturn_mood.config import ConfigError, OscTargetSettings, Settings, load_config
from sendreturn_mood.model.contract import MoodModel, Prediction
from sendreturn_mood.outputs.osc import OscOutputs, parse_target, with_targets
from sendreturn_mood.room.effects import load_presets, parse_colour
from sendreturn_mood.server.app import MoodServer
from sendreturn_mood.server.auth import Authenticator
from tests.conftest import REPO, SHARED_DATA
from tests.server_support import TEST_SETTINGS, client, http_get, metric_value, read_until_closed, send_audio, tone

PRESETS = load_presets()
PARAMETERS = {p.name: p for p in PRESETS.parameters}
SECRET = "osc-bridge-test-secret-of-at-least-32-bytes"
RATE = 16000


def address_map() -> dict[str, Any]:
    return json.loads((REPO / "schema/osc/v1.json").read_text())


# ------------------------------------------------------------------------------------------------ a real OSC server


class Recorder(Dispatcher):
    """python-osc's dispatcher, keeping each datagram's bundle whole: [(arrival, [(address, type tags, args)])]."""

    def __init__(self) -> None:
        super().__init__()
        self.packets: list[tuple[float, list[tuple[str, str, tuple[Any, ...]]]]] = []
        self.datagrams: list[bytes] = []

    def call_handlers_for_packet(self, data: bytes, client_address: tuple[str, int]) -> list[Any]:
        msgs = [(m.message.address, type_tags(m.message.dgram), tuple(m.message.params)) for m in osc_packet.OscPacket(data).messages]
        self.packets.append((time.monotonic(), msgs))
        self.datagrams.append(data)
        return super().call_handlers_for_packet(data, client_address)

    def bundles(self, having: str) -> list[tuple[float, dict[str, tuple[str, tuple[Any, ...]]]]]:
        """Bundles with a message whose address ends with `having`, as (arrival, {address: (tags, args)})."""
        return [(t, {a: (tags, args) for a, tags, args in msgs}) for t, msgs in self.packets if any(a.endswith(having) for a, _, _ in msgs)]


def type_tags(dgram: bytes) -> str:
    _, index = osc_types.get_string(dgram, 0)
    tags, _ = osc_types.get_string(dgram, index)
    return tags[1:]


@asynccontextmanager
async def osc_server() -> AsyncIterator[tuple[int, Recorder]]:
    recorder = Recorder()
    server = AsyncIOOSCUDPServer(("127.0.0.1", 0), recorder, asyncio.get_running_loop())
    transport, _ = await server.create_serve_endpoint()
    try:
        yield transport.get_extra_info("sockname")[1], recorder
    finally:
        transport.close()


# ------------------------------------------------------------------------------------------------ audio, server


def song() -> tuple[np.ndarray, bool]:
    """A happy clip, 10 s of silence, a sad clip and a classical excerpt (16 kHz mono float32), and whether it is
    real music; audio made here when ../shared/data is absent (then no track change is promised)."""
    files = [SHARED_DATA / "moods-4q/Q1/MT0000040632.mp3", SHARED_DATA / "moods-4q/Q3/MT0015510419.mp3",
             SHARED_DATA / "emotify/classical/12.mp3"]
    silence = np.zeros(RATE * 10, np.float32)
    if all(f.is_file() for f in files):
        import soundfile as sf

        a, b, c = (sf.read(str(f), dtype="float32")[0] for f in files)
        return np.concatenate([a, silence, b, c]), True
    return np.concatenate([tone(30, RATE, freq=330), silence, tone(30, RATE, freq=880, amp=0.1, seed=1)]), False


def config(targets: list[dict[str, Any]], **settings: Any) -> Settings:
    """The model's own window and hop (as served), a high rate limit (the tests stream faster than real time)."""
    base = {k: v for k, v in TEST_SETTINGS.items() if not k.startswith(("analysis.", "smoothing."))}
    return load_config(None, {**base, "outputs.osc.targets": targets, **settings})


@asynccontextmanager
async def serving(cfg: Settings) -> AsyncIterator[MoodServer]:
    server = MoodServer(cfg, MoodModel())
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def play(server: MoodServer, audio: np.ndarray, room: str = "lobby", realtime: bool = False, **params: Any) -> list[dict[str, Any]]:
    """Stream `audio` as a room's source (with a listener in the room throughout); the listener's messages."""
    async with client(server, room, **params.get("listener", {})) as (listener, _):
        async with client(server, room, role="source", sample_rate=RATE, channels=1, encoding="pcm_s16le",
                          **params.get("source", {})) as (source, _):
            if realtime:
                for i in range(0, audio.size, RATE // 10):
                    await send_audio(source, audio[i : i + RATE // 10], RATE, 1, "pcm_s16le")
                    await asyncio.sleep(0.1)
            else:
                await send_audio(source, audio, RATE, 1, "pcm_s16le")
            await source.send(json.dumps({"type": "end"}))
            await read_until_closed(source, 60)
        messages = []
        while not messages or messages[-1] != {"type": "source", "state": "disconnected"}:
            messages.append(json.loads(await asyncio.wait_for(listener.recv(), 10)))
        await asyncio.sleep(params.get("linger", 0.3))  # the last UDP datagrams, and the stream's last values
    return messages


# ------------------------------------------------------------------------------------------------ what a bundle holds


def expected_values(msg: dict[str, Any], prefix: str = "/sendreturn") -> dict[str, tuple[str, tuple[Any, ...]]]:
    """Every address of the map, expanded for this `mood` message, with its types and the message's values."""
    base = f"{prefix}/{msg['room']}"
    f32 = lambda x: float(np.float32(x))  # noqa: E731 - OSC floats are float32
    genre = msg.get("genre") or {"label": None, "probabilities": {}}
    floats = {k: v for k, v in msg["effects"].items() if isinstance(v, (int, float))}
    colours = {k: tuple(c / 255 for c in parse_colour(v)) for k, v in msg["effects"].items() if isinstance(v, str)}
    one = lambda template, *args: [(template, args)]  # noqa: E731 - a template that expands to itself
    values: dict[str, Callable[[str], list[tuple[str, tuple[Any, ...]]]]] = {
        "seq": lambda t: one(t, msg["seq"]),
        "stream_time": lambda t: one(t, f32(msg["stream_time"])),
        "mood": lambda t: one(t, msg["mood"]),
        "confidence": lambda t: one(t, f32(msg["confidence"])),
        "mood/{mood}": lambda t: [(f"mood/{k}", (f32(v),)) for k, v in msg["probabilities"].items()],
        "genre": lambda t: one(t, genre["label"]) if genre["label"] else [],
        "genre/{genre}": lambda t: [(f"genre/{k}", (f32(v),)) for k, v in genre["probabilities"].items()],
        "state": lambda t: one(t, {"music": 1, "silent": 0}[msg["state"]]),
        "level_db": lambda t: one(t, f32(msg["level_db"])),
        "preset": lambda t: one(t, msg["preset"]),
        "valence": lambda t: one(t, f32(msg["valence"])),
        "arousal": lambda t: one(t, f32(msg["arousal"])),
        "effects/{effect}": lambda t: [(f"effects/{k}", (f32(v),)) for k, v in floats.items()],
        "effects/{effect}/norm": lambda t: [
            (f"effects/{k}/norm", (f32((v - PARAMETERS[k].low) / (PARAMETERS[k].high - PARAMETERS[k].low)),)) for k, v in floats.items()],
        "effects/{colour}": lambda t: [(f"effects/{k}", tuple(f32(c) for c in rgb)) for k, rgb in colours.items()],
        "effects/{colour}/rgba": lambda t: [
            (f"effects/{k}/rgba", ((round(rgb[0] * 255) << 24) | (round(rgb[1] * 255) << 16) | (round(rgb[2] * 255) << 8) | 255,))
            for k, rgb in colours.items()],
    }
    out = {}
    for entry in address_map()["addresses"]:
        if entry["when"] in ("update", "stream"):
            template = entry["address"].removeprefix("{prefix}/{room}/")
            for rel, args in values[template](template):
                out[f"{base}/{rel}"] = (entry["types"], args)
    return out


def slew_of(address: str) -> float | None:
    """The default preset's max rate for an effect address, in the address's units per second (None: no slew)."""
    if "/effects/" not in address:
        return None
    name, _, unit = address.split("/effects/")[1].partition("/")
    mapping = next(m for m in PRESETS["default"].mappings if m.parameter.name == name)
    rate, p = PRESETS["default"].max_rate(mapping), mapping.parameter
    if rate is None:
        return None
    return rate / 255 if p.type == "colour" else rate / (p.high - p.low) if unit == "norm" else rate


def check_update_bundles(messages: list[dict[str, Any]], recorder: Recorder) -> None:
    """One bundle per `mood` message, holding exactly the map's addresses with the message's values."""
    moods = [m for m in messages if m["type"] == "mood"]
    bundles = {b["/sendreturn/lobby/seq"][1][0]: b for _, b in recorder.bundles("/seq")}
    assert sorted(bundles) == [m["seq"] for m in moods]
    for m in moods:
        assert bundles[m["seq"]] == expected_values(m), m["seq"]


# ------------------------------------------------------------------------------------------------ tests


async def test_every_update_arrives_as_one_bundle_with_every_address_of_the_map() -> None:
    audio, real = song()
    async with osc_server() as (port, recorder):
        async with serving(config([{"host": "127.0.0.1", "port": port}])) as server:
            messages = await play(server, audio)
            status, _, body = await asyncio.to_thread(http_get, server, "/metrics")
    check_update_bundles(messages, recorder)
    moods = [m for m in messages if m["type"] == "mood"]
    assert {m["state"] for m in moods} == {"music", "silent"}  # both values of /state were checked
    seen = {a for _, msgs in recorder.packets for a, _, _ in msgs}
    templates = {e["address"].replace("{prefix}", "/sendreturn").replace("{room}", "lobby") for e in address_map()["addresses"]}
    for t in templates:  # every address of the map arrived (the labels' and effects' expansions checked above)
        head = t.split("/{")[0]
        assert any(a == t or (("{" in t) and a.startswith(head + "/")) for a in seen), t
    # triggers: the source came and went; the track change heard in the audio, at the stream time the websocket said
    sources = [args[0] for _, msgs in recorder.packets for a, tags, args in msgs if a == "/sendreturn/lobby/source"]
    assert sources[-2:] == [1, 0]
    changes = [args[0] for _, msgs in recorder.packets for a, tags, args in msgs if a == "/sendreturn/lobby/track_change"]
    assert changes == [float(np.float32(m["stream_time"])) for m in messages if m["type"] == "track_change"]
    if real:
        assert len(changes) >= 1
    assert status == 200 and metric_value(body.decode(), 'sendreturn_osc_bundles_sent_total{target="127.0.0.1:%d"}' % port) == len(recorder.packets)


async def test_rate_hz_streams_the_values_continuously_at_the_preset_slew() -> None:
    audio, _ = song()
    async with osc_server() as (port, recorder):
        target = {"host": "127.0.0.1", "port": port, "rate_hz": 30, "rooms": ["lob*"]}
        async with serving(config([target], **{"analysis.window_seconds": 1.0, "analysis.hop_seconds": 0.5})) as server:
            messages = await play(server, audio[: RATE * 6], realtime=True, linger=1.5)
    moods = [m for m in messages if m["type"] == "mood"]
    updates = recorder.bundles("/seq")
    stream = [(t, b) for t, b in recorder.bundles("/valence") if "/sendreturn/lobby/seq" not in b]
    assert len(moods) >= 8 and len(updates) == len(moods)
    assert all("/sendreturn/lobby/valence" not in b for _, b in updates)  # the stream carries those values
    # rate: 30 bundles a second while updates arrive (2 cores shared with other work: 25 % slack)
    t0, t1 = updates[0][0], updates[-1][0]
    during = [t for t, _ in stream if t0 <= t <= t1]
    assert 30 * 0.75 <= len(during) / (t1 - t0) <= 30 * 1.25
    # continuity: a value with a slew in the preset never moves faster than it (in wall time, between arrivals, with
    # 20 ms for the scheduling of sender and receiver); the others (valence, arousal) glide over the hop: no step is
    # a third of the largest jump between two updates
    full = [expected_values(m) for m in moods]
    keys = [a for a, (tags, _) in full[0].items() if "/effects/" in a or a.endswith(("/valence", "/arousal"))]
    for key in keys:
        if full[0][key][0] == "r":
            continue
        jumps = [max(abs(x - y) for x, y in zip(a[key][1], b[key][1])) for a, b in zip(full, full[1:])]
        steps = [max(abs(x - y) for x, y in zip(a[key][1], b[key][1])) for (_, a), (_, b) in zip(stream, stream[1:])]
        slew = slew_of(key)
        if slew is not None:
            gaps = [t1 - t0 for (t0, _), (t1, _) in zip(stream, stream[1:])]
            assert all(step <= slew * (gap + 0.02) + 1e-4 for step, gap in zip(steps, gaps)), key
        else:
            assert max(steps) <= max(jumps) / 3 + 1e-6, key
    # the stream ends on the last update's values
    last = stream[-1][1]
    for key in keys:
        assert last[key][1] == pytest.approx(full[-1][key][1], abs=1e-5), key


async def test_one_clock_streams_every_room_of_every_target_as_python_osc_builds_the_bundles() -> None:
    """Three rooms (names of different lengths) on two targets of one rate: every stream bundle is byte for byte
    the bundle python-osc's own builders make of what python-osc decoded from it; both targets get the same values
    (one clock ticks them together), and every stream settles on its room's last update."""
    from sendreturn_mood.room.rooms import Room
    from sendreturn_mood.room.tracker import tracker_from_config

    model = MoodModel()
    rng = np.random.default_rng(7)
    rooms = {name: Room(name, tracker_from_config(model.info, load_config(), PRESETS)) for name in ("a", "stage-7", "a-much-longer-room-name")}
    async with osc_server() as (port1, rec1), osc_server() as (port2, rec2):
        outputs = OscOutputs.from_settings(
            [OscTargetSettings("127.0.0.1", port, rate_hz=30) for port in (port1, port2)], PRESETS, hop_seconds=0.25)
        last = {}
        for k in range(6):
            for name, room in rooms.items():
                genres = rng.dirichlet(np.ones(len(model.info.genres))) if model.info.genres else None
                for update in room.on_window(room.generation, Prediction(rng.dirichlet(np.ones(len(model.info.moods))), genres), 1.0 + k, 1.0):
                    if not isinstance(update, dict):
                        last[name] = {"state": "music", "level_db": 0.0, **update.to_message()}  # (no level given here)
                        for target in outputs.targets:
                            target.deliver(name, update)
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)  # the streams reach their last values (the slowest slew is well under a second)
        outputs.close()
        await asyncio.sleep(0.1)
    streams = {}
    for port, rec in ((port1, rec1), (port2, rec2)):
        for data, (_, msgs) in zip(rec.datagrams, rec.packets):
            if any(a.endswith("/seq") for a, _, _ in msgs):
                continue
            bundle = OscBundleBuilder(IMMEDIATELY)
            for address, tags, args in msgs:
                message = OscMessageBuilder(address)
                for t, a in zip(tags, args):
                    message.add_arg(a, t)
                bundle.add_content(message.build())
            assert bundle.build().dgram == data
            room = msgs[0][0].split("/")[2]
            streams.setdefault(room, {}).setdefault(port, []).append(msgs)
    assert set(streams) == set(rooms)
    for name, by_target in streams.items():
        one, two = by_target[port1], by_target[port2]
        assert len(one) >= 30 and abs(len(one) - len(two)) <= 1
        assert one[-1] == two[-1]
        got = {a: args for a, _, args in one[-1]}
        want = expected_values(last[name])
        for address, args in got.items():
            assert args == want[address][1], address


async def test_ten_dead_targets_leave_the_rooms_updates_alone(caplog: pytest.LogCaptureFixture) -> None:
    audio = tone(40, RATE)
    closed = []
    for _ in range(9):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        closed.append(s.getsockname()[1])
        s.close()
    dead = [{"host": "127.0.0.1", "port": p} for p in closed] + [{"host": "osc-target.invalid", "port": 9000}]
    runs = {}
    caplog.set_level(logging.WARNING, "sendreturn_mood.outputs.osc")
    for name, targets in (("none", []), ("dead", dead), ("none again", [])):
        async with serving(config(targets)) as server:
            messages = await play(server, audio)
            _, _, body = await asyncio.to_thread(http_get, server, "/metrics")
        runs[name] = [m for m in messages if m["type"] == "mood"]
        if name == "dead":
            for t in dead:
                assert metric_value(body.decode(), 'sendreturn_osc_send_errors_total{target="%s:%d"}' % (t["host"], t["port"])) > 0
    assert [m["seq"] for m in runs["dead"]] == [m["seq"] for m in runs["none"]] == list(range(1, len(runs["none"]) + 1))
    latency = {k: statistics.median(m["latency_ms"] for m in v) for k, v in runs.items()}
    assert latency["dead"] <= 2 * max(latency["none"], latency["none again"]) + 20.0, latency
    for t in dead:  # logged at most once a minute per target
        assert sum(f"{t['host']}:{t['port']}" in r.getMessage() for r in caplog.records) <= 1


async def test_the_bridge_command_follows_a_room_with_a_token_and_sends_the_same_bundles() -> None:
    audio, _ = song()
    audio = audio[: RATE * 30]
    cfg = config([], **{"server.auth.secret": SECRET})
    auth = Authenticator.from_config(cfg)
    async with osc_server() as (port, recorder):
        async with serving(cfg) as server:
            cmd = [sys.executable, "-m", "sendreturn_mood", "osc", "--url", server.url, "--room", "lobby",
                   "--to", f"127.0.0.1:{port}"]
            refused = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE, cwd=REPO)
            _, err = await asyncio.wait_for(refused.communicate(), 60)
            assert refused.returncode == 2 and b"401" in err  # no token: refused, said so, exit 2
            bridge = await asyncio.create_subprocess_exec(
                *cmd, "--token", auth.mint("lobby", ["listener"], 600), stdout=asyncio.subprocess.PIPE, cwd=REPO,
                env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
            assert bridge.stdout is not None
            line = await asyncio.wait_for(bridge.stdout.readline(), 60)
            assert b"following room 'lobby'" in line
            token = {"token": auth.mint("lobby", ["listener", "source"], 600)}
            messages = await play(server, audio, listener=token, source=token, linger=1.0)
            bridge.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(bridge.wait(), 30) == 0
    check_update_bundles(messages, recorder)
    sources = [args[0] for _, msgs in recorder.packets for a, _, args in msgs if a == "/sendreturn/lobby/source"]
    assert sources == [1, 0]


def test_osc_targets_are_checked_and_bounded() -> None:
    assert parse_target("[::1]:9000=stage-*") == {"host": "::1", "port": 9000, "rooms": ["stage-*"]}
    for bad in ("localhost", "a:b:c", "host:"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_target(bad)
    got = load_config(None, {"outputs.osc.targets": [{"host": "h", "port": 9, "rooms": ["a*"]}]}).outputs.osc.targets
    assert got == (OscTargetSettings("h", 9, ("a*",), "/sendreturn", 0.0),) and got[0].matches("ab") and not got[0].matches("b")
    for target, where in (({"host": "h", "port": 9, "rate_hz": 61}, "rate_hz"), ({"host": "h", "port": 9, "prefix": "x"}, "prefix"),
                          ({"host": "h", "port": 9, "room": "a"}, "unknown key 'room'"), ({"port": 9}, "'host' is required"),
                          ({"host": "h", "port": 70000}, "port")):
        with pytest.raises(ConfigError, match=where):
            load_config(None, {"outputs.osc.targets": [target]})
    with pytest.raises(ConfigError, match="max_targets allows 2"):
        load_config(None, {"outputs.osc.targets": [{"host": "h", "port": 9}] * 3, "outputs.osc.max_targets": 2})


def test_serve_osc_flags_add_to_the_configured_targets_and_are_checked_with_them() -> None:
    config = load_config(None, {"outputs.osc.targets": [{"host": "h", "port": 9, "rooms": ["a*"], "rate_hz": 30}],
                                "outputs.osc.max_targets": 2})
    assert with_targets(config, []) is config
    got = with_targets(config, ["127.0.0.1:9000=stage-*"]).outputs.osc.targets
    assert got == (OscTargetSettings("h", 9, ("a*",), "/sendreturn", 30.0), OscTargetSettings("127.0.0.1", 9000, ("stage-*",)))
    with pytest.raises(ConfigError, match="max_targets allows 2"):
        with_targets(config, ["127.0.0.1:9000", "127.0.0.1:9001"])


def test_serve_refuses_a_bad_osc_flag_before_loading_anything(capsys: pytest.CaptureFixture[str]) -> None:
    from sendreturn_mood.cli.main import main

    assert main(["serve", "--osc", "nowhere"]) == 2
    assert "HOST:PORT[=ROOM_GLOB]" in capsys.readouterr().err


def test_a_rooms_sinks_get_every_broadcast_in_order_and_one_failing_sink_costs_the_others_nothing() -> None:
    from sendreturn_mood.room.rooms import Outgoing, RoomRegistry
    from sendreturn_mood.room.tracker import tracker_from_config
    from tests.tiny_model import tiny_info

    cfg = load_config()
    got: dict[str, list[str]] = {"stage-1": [], "lobby": [], "after": []}

    class Member:
        role = "listener"

        def __init__(self, room: str) -> None:
            self.room = room

        def deliver(self, text: str, kind: str) -> None:
            got[self.room].append(text)

    class Broken:
        def send(self, room: Any, out: Outgoing) -> None:
            raise RuntimeError("a sink's bug")

        def room_closed(self, room: Any) -> None:
            pass

    class After:
        closed: list[str] = []

        def send(self, room: Any, out: Outgoing) -> None:
            got["after"].append(out.text)

        def room_closed(self, room: Any) -> None:
            self.closed.append(room.name)

    after = After()
    reg = RoomRegistry(lambda preset: tracker_from_config(tiny_info(), cfg, PRESETS), 4,
                       make_sinks=lambda name: [Broken(), after] if name.startswith("stage-") else [])
    member = Member("stage-1")
    stage, lobby = reg.join("stage-1", member, False), reg.join("lobby", Member("lobby"), False)
    [update] = stage.on_window(stage.generation, Prediction(np.array([0.7, 0.1, 0.1, 0.1])), 3.0, 1.0)
    reg.publish(stage, update)
    reg.publish(stage, {"type": "source", "state": "connected"})
    reg.publish(lobby, {"type": "source", "state": "connected"})  # a room the sink's glob does not match
    assert got["stage-1"] == got["after"] and [json.loads(t)["type"] for t in got["after"]] == ["mood", "source"]
    assert got["lobby"] == ['{"type":"source","state":"connected"}']
    assert json.loads(got["after"][0]) == update.to_message()  # the update's websocket view, encoded once
    reg.leave(stage, member)
    assert after.closed == ["stage-1"]

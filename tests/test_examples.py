"""The example clients against a real server: `python -m sendreturn_mood serve` in a subprocess (port 0, the tiny
test model, fast streaming allowed, short hops), `examples/stream_file.py` streaming real songs from ../shared/data,
and `examples/listen.py` in other processes seeing the same updates. Everything runs as a developer would run it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO, shared_data_or_skip
from tests.server_support import checked

EXAMPLES = REPO / "examples"
HOP_SECONDS = 0.5
SPEED = 20.0  # 30 s songs in 1.5 s: the server's default rate limit (8x) is raised in the test config
START_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 60.0
CONFIG = f"""
server:
  rate_limit_factor: 1000.0
  rate_limit_burst_seconds: 600.0
analysis:
  hop_seconds: {HOP_SECONDS}
"""
LISTENING = re.compile(r"listening on (ws://[\d.]+:\d+)")


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Proc:
    """A child process whose stdout lines are collected by a thread, so tests can wait for a line."""

    def __init__(self, *args: str | Path) -> None:
        self.args = [str(a) for a in args]
        self.popen = subprocess.Popen(
            [sys.executable, *self.args], cwd=REPO, env=child_env(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.out, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.err, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink: list[str], queue_it: bool) -> None:
        with stream:
            for line in stream:
                sink.append(line.rstrip("\n"))
                if queue_it:
                    self.lines.put(sink[-1])

    def _drain(self) -> None:
        """After exit: wait for the pump threads to read the last lines (and close the pipes)."""
        for t in self._threads:
            t.join(5)

    def wait_line(self, pattern: re.Pattern | str, timeout: float = START_TIMEOUT_S) -> re.Match:
        """Block until a stdout line matches; fail with the process's output if it never comes."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.popen.poll() is not None and self.lines.empty():
                    break
                continue
            if m := rx.search(line):
                return m
        pytest.fail(f"no line matching {rx.pattern!r} from {self.args}: {self.report()}")

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.args} did not finish in {timeout} s: {self.report()}")
        self._drain()
        return code

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._drain()

    def json_lines(self) -> list[dict]:
        """The server messages the example printed with --json, each validated against the protocol's schema."""
        return [checked(json.loads(line)) for line in self.out if line.startswith("{")]

    def report(self) -> str:
        return f"exit={self.popen.poll()}\nstdout:\n" + "\n".join(self.out[-30:]) + "\nstderr:\n" + "\n".join(self.err[-30:])


def start_server(model: Path, config: Path, port: int = 0) -> tuple[Proc, str]:
    proc = Proc("-m", "sendreturn_mood", "serve", "--port", port, "--model", model, "--config", config)
    return proc, proc.wait_line(LISTENING).group(1)


@pytest.fixture(scope="module")
def server_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("server") / "server.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, server_config: Path):
    """One server for the tests that use different rooms (starting one takes a few seconds)."""
    proc, url = start_server(tiny_model_path, server_config)
    yield url
    proc.stop()


def songs(n: int) -> list[Path]:
    """The first n clips of 4Q (sorted, so the test is reproducible), skipping the short one."""
    folder = shared_data_or_skip("moods-4q")
    files = [f for f in sorted(folder.glob("Q*/*.mp3")) if sf.info(f).duration >= 25]
    return files[:n]


def listener(url: str, room: str, *extra: str) -> Proc:
    proc = Proc(EXAMPLES / "listen.py", "--url", url, "--room", room, *extra)
    proc.wait_line(r"welcome|listening to room")
    return proc


def moods_of(msgs: list[dict]) -> list[dict]:
    return [m for m in msgs if m.get("type") == "mood"]


def test_stream_file_and_listeners_see_the_same_updates(server: str) -> None:
    song = songs(1)[0]
    raw = listener(server, "walk", "--json", "--until-end")
    view = listener(server, "walk", "--until-end")
    src = Proc(EXAMPLES / "stream_file.py", song, "--url", server, "--room", "walk", "--speed", SPEED, "--json")
    assert src.wait() == 0, src.report()
    assert raw.wait() == 0, raw.report()
    assert view.wait() == 0, view.report()

    got = src.json_lines()
    heard = raw.json_lines()
    welcome = got[0]
    assert welcome["type"] == "welcome" and welcome["role"] == "source" and welcome["room"] == "walk"
    assert welcome["audio"] == {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1}
    window, hop = welcome["analysis"]["window_seconds"], welcome["analysis"]["hop_seconds"]
    labels = [m if isinstance(m, str) else m["label"] for m in welcome["model"]["moods"]]

    updates = moods_of(heard)
    duration = sf.info(song).duration
    # one update per hop after the first window, plus possibly the tail window at `end`. Updates the server
    # conflated away (its per-client queue keeps the newest few when a batch brings many at once) still count in seq.
    expected = int((duration - window) / hop) + 1
    seqs = [u["seq"] for u in updates]
    assert expected <= seqs[-1] - seqs[0] + 1 <= expected + 1, (seqs, expected)
    assert seqs == sorted(set(seqs)) and len(updates) >= min(expected, 8), seqs
    times = [u["stream_time"] for u in updates]
    for u in updates[:-1]:  # stream_time advances by exactly one hop per seq (the last may be the tail window)
        assert u["stream_time"] == pytest.approx(window + (u["seq"] - seqs[0]) * hop, abs=0.05), u["seq"]
    assert window < times[-1] <= duration + 0.05
    for u in updates:
        assert u["room"] == "walk"
        assert u["track"]["id"] == f"file:{song.name}"
        assert u["mood"] in labels
        assert sum(u["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert -1 <= u["valence"] <= 1 and -1 <= u["arousal"] <= 1
        assert u["effects"], "every update carries effect parameters"
    assert [m["state"] for m in heard if m["type"] == "source"] == ["connected", "disconnected"]

    # the source got the room's updates too: the same messages, seq for seq
    by_seq = {u["seq"]: u for u in updates}
    mine = moods_of(got)
    assert mine and mine[-1]["seq"] == seqs[-1]
    assert len(mine) >= 0.5 * len(updates), (len(mine), len(updates))
    for u in mine:
        if u["seq"] in by_seq:
            assert u == by_seq[u["seq"]]
    assert any("closed with 1000" in line for line in src.err), src.report()

    # the human view shows one line per update (not a terminal: no carriage returns), with bars and V/A
    lines = [line for line in view.out if line.startswith("#")]
    assert len(lines) >= 0.5 * len(updates)
    last = updates[-1]
    assert lines[-1].startswith(f"#{last['seq']} ")
    assert last["mood"].upper() in lines[-1] and "█" in lines[-1] and f"V {last['valence']:+.2f}" in lines[-1]
    assert any(line == "source disconnected" for line in view.out)


def test_stream_file_folder_of_mixed_formats(server: str, tmp_path: Path) -> None:
    """A folder of files in different formats sent as they are (--as-is), resampled on the client: a `track` per
    file, and a new connection when the format changes. (By default every file is sent mono at the model's rate,
    one connection for all: tests/test_client.py.)"""
    song = songs(1)[0]
    audio, rate = sf.read(song, dtype="float32")
    clip = audio[: rate * 6]
    folder = tmp_path / "album"
    folder.mkdir()
    sf.write(folder / "a_stereo.wav", np.stack([clip, 0.5 * clip], axis=1), rate, subtype="FLOAT")
    sf.write(folder / "b_mono.flac", clip, rate)
    sf.write(folder / "c_mono.ogg", clip, rate)
    raw = listener(server, "album", "--json")
    src = Proc(EXAMPLES / "stream_file.py", folder, "--url", server, "--room", "album", "--speed", 10,
               "--encoding", "pcm_f32le", "--chunk-ms", 50, "--sample-rate", 22050, "--as-is")
    assert src.wait() == 0, src.report()
    raw.wait_line(r'"state":\s*"disconnected"')
    time.sleep(0.3)
    raw.stop()
    heard = raw.json_lines()
    tracks = [u["track"]["id"] for u in moods_of(heard)]
    assert sorted(set(tracks)) == ["file:a_stereo.wav", "file:b_mono.flac", "file:c_mono.ogg"]
    assert tracks == sorted(tracks), "files are streamed in order"
    # stereo -> mono is a format change: one connection for the WAV, one for the FLAC and OGG (same format)
    assert [m["state"] for m in heard if m["type"] == "source"] == ["connected", "disconnected"] * 2
    assert sum(line.startswith("streaming ") for line in src.out) == 3
    assert "-> 22050 Hz, 2 ch, pcm_f32le" in src.out[0]  # resampled on the client, announced as such


def test_stream_file_refusal_shows_the_server_json(server: str, tmp_path: Path) -> None:
    wav = tmp_path / "tone.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440), 16000)
    src = Proc(EXAMPLES / "stream_file.py", wav, "--url", server, "--room", "no spaces allowed")
    assert src.wait() == 2
    err = "\n".join(src.err)
    assert "refused: HTTP 400" in err and '"bad_request"' in err, src.report()

    bad_listener = Proc(EXAMPLES / "listen.py", "--url", server, "--room", "no spaces allowed")
    assert bad_listener.wait() == 2
    assert any("refused: HTTP 400" in line and '"bad_request"' in line for line in bad_listener.err), bad_listener.report()

    occupied = listener(server, "busy", "--json")
    first = Proc(EXAMPLES / "stream_file.py", wav, "--url", server, "--room", "busy", "--loop")
    occupied.wait_line(r'"state":\s*"connected"')
    second = Proc(EXAMPLES / "stream_file.py", wav, "--url", server, "--room", "busy", "--retries", 1)
    assert second.wait() == 1
    err = "\n".join(second.err)
    assert "HTTP 409" in err and "source_taken" in err and "retrying" in err, second.report()
    first.stop(signal.SIGINT)
    occupied.stop()


def test_stream_file_skips_an_unreadable_file(server: str, tmp_path: Path) -> None:
    bad = tmp_path / "a_not_audio.mp3"
    bad.write_text("this is not audio")
    good = tmp_path / "b_tone.wav"
    sf.write(good, 0.1 * np.sin(np.arange(4 * 16000) / 16000 * 2 * np.pi * 440), 16000)
    src = Proc(EXAMPLES / "stream_file.py", tmp_path, "--url", server, "--room", "skip", "--speed", 0)
    assert src.wait() == 1, src.report()  # the readable file was streamed; the exit status reports the other
    assert any(line.startswith(f"cannot read {bad}") for line in src.err), src.report()
    assert any(line.startswith("#") for line in src.out), "updates for the readable file"
    assert "closed with 1000" in src.out[-1]


def test_clients_reconnect_and_resume_when_the_server_restarts(tiny_model_path: Path, server_config: Path) -> None:
    song = songs(2)[1]
    first, url = start_server(tiny_model_path, server_config)
    port = url.rsplit(":", 1)[1]
    raw = listener(url, "phoenix", "--json")
    src = Proc(EXAMPLES / "stream_file.py", song, "--url", url, "--room", "phoenix", "--speed", 4, "--json")
    raw.wait_line(r'"type":\s*"mood"')  # the stream is under way
    first.stop()  # SIGTERM: clients get 1001
    second, url2 = start_server(tiny_model_path, server_config, port=int(port))
    try:
        assert url2 == url
        assert src.wait() == 0, src.report()
        raw.wait_line(r'"state":\s*"disconnected"')
        time.sleep(0.2)
    finally:
        raw.stop()
        second.stop()
    err = "\n".join(src.err)
    resumed = re.search(r"resuming \S+ at ([\d.]+) s", err)
    assert resumed, src.report()
    at = float(resumed.group(1))
    assert 3.0 <= at <= 25.0
    heard = raw.json_lines()
    assert [m["type"] for m in heard].count("welcome") == 2, "the listener reconnected to the new server"
    after = moods_of(heard[[i for i, m in enumerate(heard) if m["type"] == "welcome"][1] :])
    assert after and all(u["track"]["id"] == f"file:{song.name}" for u in after)
    # the new server heard only the rest of the song (stream_time restarts with the new connection)
    assert max(u["stream_time"] for u in after) <= sf.info(song).duration - at + 0.6


def test_stream_file_ends_the_stream_on_ctrl_c(server: str) -> None:
    """Ctrl-C (SIGINT) mid-song: the client still sends `end`, gets the server's last update and its 1000 close."""
    song = songs(1)[0]
    src = Proc(EXAMPLES / "stream_file.py", song, "--url", server, "--room", "ctrlc", "--speed", 1)
    src.wait_line(r"^#")  # a mood update: the stream is under way (real time, so the song is far from over)
    src.popen.send_signal(signal.SIGINT)
    assert src.wait() == 130, src.report()
    assert any("interrupted: sending `end`" in line for line in src.out), src.report()
    assert "closed with 1000" in src.out[-1], src.report()


@pytest.mark.parametrize("script", ["listen.py", "stream_file.py"])
def test_a_closed_stdout_stops_the_example_quietly(server: str, tmp_path: Path, script: str) -> None:
    """`listen.py --json | head -3`: when the reader goes away the example stops at once, quietly (exit 141 like
    other tools killed by SIGPIPE): no traceback, no reconnect loop. The same for stream_file.py."""
    wav = tmp_path / "tone.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(60 * 16000) / 16000 * 2 * np.pi * 440), 16000)
    room = f"pipe-{script[:-3]}"
    feeder = None
    if script == "listen.py":
        feeder = Proc(EXAMPLES / "stream_file.py", wav, "--url", server, "--room", room, "--speed", 2, "--loop")
        args = [EXAMPLES / script, "--url", server, "--room", room, "--json"]
    else:
        args = [EXAMPLES / script, wav, "--url", server, "--room", room, "--speed", 2, "--json"]
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert all(line.startswith("{") for line in lines), lines
        proc.stdout.close()  # what `head -3` does after its third line
        code = proc.wait(20)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        if feeder is not None:
            feeder.stop(signal.SIGINT)
    assert code == 141, err
    assert "Traceback" not in err and "reconnecting" not in err and "Exception ignored" not in err, err


def test_play_prepared_drives_a_room_in_step_with_a_player(server: str, tmp_path: Path) -> None:
    """examples/play_prepared.py: the file is PUT, played by a pretend player whose clock is reported, and every
    prepared update it prints arrives when the player is at its position (lead 0.5 s: up to that much early)."""
    wav = tmp_path / "short.wav"
    rate = 16000
    t = np.arange(6 * rate) / rate
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)
    watcher = listener(server, "prepared-walk", "--json")
    src = Proc(EXAMPLES / "play_prepared.py", wav, "--url", server, "--room", "prepared-walk", "--lead", "0.5")
    assert src.wait() == 0, src.report()
    watcher.stop()
    assert re.match(r"prepared 'short': 6\.0 s, \d+ updates", src.out[0]), src.report()
    assert any(line.startswith("timeline: ") and "lead 0.5 s" in line for line in src.out), src.report()
    steps = [re.match(r"\s*([\d.]+)s  update for\s+([\d.]+)s", line) for line in src.out]
    steps = [(float(m.group(1)), float(m.group(2))) for m in steps if m]
    assert len(steps) >= 5, src.report()
    for at, position in steps:
        assert position - 0.5 - 0.15 <= at <= position + 0.25, (at, position)
    heard = [m for m in watcher.json_lines() if m.get("type") == "mood"]
    assert heard and all(m.get("prepared") for m in heard)

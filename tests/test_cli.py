"""The command line: `config`, `models`, and `serve` as a real subprocess (start-up lines, signals, close 1001)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from websockets.asyncio.client import connect

from sendreturn_mood.config import DEFAULT_CONFIG_TEXT, DEFAULTS
from sendreturn_mood.model.contract import default_model_path
from tests.conftest import REPO
from tests.tiny_model import build_tiny_model

START_TIMEOUT = 90  # seconds: start-up imports librosa (slow on a busy 2-core machine)
LISTEN_RE = re.compile(r"listening on ws://([0-9.]+):(\d+)")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "sendreturn_mood", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def test_config_prints_the_defaults():
    out = run_cli("config")
    assert out.returncode == 0
    assert out.stdout == DEFAULT_CONFIG_TEXT
    assert yaml.safe_load(out.stdout) == DEFAULTS


def test_models_shows_metadata(tiny_model_path):
    out = run_cli("models", str(tiny_model_path))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "tiny-test-model 0.0.1" in text
    assert "happy (V +0.70, A +0.50)" in text and "calm (V +0.50, A -0.60)" in text
    assert "classical, electronic, pop, rock" in text
    assert "187 frames = 2.992 s" in text
    assert "sample_rate=16000" in text and "n_mels=96" in text
    assert "built by tests/tiny_model.py" in text  # provenance
    as_json = json.loads(run_cli("models", str(tiny_model_path), "--json").stdout)
    assert as_json["name"] == "tiny-test-model" and as_json["patch_frames"] == 187


def test_models_refuses_a_file_without_metadata(tmp_path):
    bare = build_tiny_model(tmp_path / "bare.onnx", metadata=False)
    out = run_cli("models", str(bare))
    assert out.returncode == 2
    assert "no 'sendreturn_mood' entry in the ONNX metadata_props" in out.stderr
    out = run_cli("models", str(tmp_path / "missing.onnx"))
    assert out.returncode == 2 and "no such model file" in out.stderr


def test_serve_refuses_bad_config_and_model(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("server:\n  prot: 1\n")
    out = run_cli("serve", "--config", str(cfg))
    assert out.returncode == 2 and "unknown key 'server.prot'" in out.stderr
    bare = build_tiny_model(tmp_path / "bare.onnx", metadata=False)
    out = run_cli("serve", "--model", str(bare), "--port", "0")
    assert out.returncode == 2 and "metadata" in out.stderr


class ServeProcess:
    """`python -m sendreturn_mood serve` in a subprocess; reads the real port from its first line."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sendreturn_mood", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
        )
        self.lines: list[str] = []

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        first = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), START_TIMEOUT)  # type: ignore[union-attr]
        second = await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), 10)  # type: ignore[union-attr]
        self.lines = [first, second]
        m = LISTEN_RE.search(first)
        assert m, f"unexpected first line {first!r}; stderr: {self.proc.stderr.read() if self.proc.poll() is not None else ''}"  # type: ignore[union-attr]
        return int(m.group(2))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_prints_and_stops_cleanly_on_signal(tiny_model_path, sig):
    server = ServeProcess("--model", str(tiny_model_path))
    try:
        port = await server.start()
        assert server.lines[1].startswith("model tiny-test-model 0.0.1 from ") and str(tiny_model_path) in server.lines[1]
        async with connect(f"ws://127.0.0.1:{port}/v1/rooms/sig?role=source&sample_rate=16000", proxy=None) as src, connect(
            f"ws://127.0.0.1:{port}/v1/rooms/sig", proxy=None
        ) as lis:
            assert json.loads(await src.recv())["type"] == "welcome"
            assert json.loads(await lis.recv())["type"] == "welcome"
            server.proc.send_signal(sig)
            for ws in (src, lis):
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                except Exception:
                    pass
                assert ws.close_code == 1001
        rc = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, server.proc.wait), 15)
        assert rc == 0
    finally:
        server.stop()


async def test_serve_with_the_shipped_model():
    path = default_model_path()
    if not path.is_file():
        pytest.skip(f"the trained model is not shipped yet ({path})")
    server = ServeProcess()
    try:
        port = await server.start()
        assert str(path) in server.lines[1]
        async with connect(f"ws://127.0.0.1:{port}/v1/rooms/shipped", proxy=None) as lis:
            welcome = json.loads(await lis.recv())
            assert welcome["type"] == "welcome" and len(welcome["model"]["moods"]) >= 2
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, server.proc.wait), 15) == 0
    finally:
        server.stop()


def test_help_lists_the_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("serve", "config", "models", "analyze"):
        assert cmd in out.stdout
    out = run_cli("serve", "--help")
    for flag in ("--host", "--port", "--config", "--model"):
        assert flag in out.stdout
    assert Path(REPO / "sendreturn_mood" / "__main__.py").is_file()


def test_analyze_is_dispatched(tiny_model_path, capsys):
    from sendreturn_mood.cli.main import main
    from tests.conftest import shared_data_or_skip

    song = sorted((shared_data_or_skip("moods-4q") / "Q4").glob("*.mp3"))[0]
    assert main(["analyze", str(song), "--model", str(tiny_model_path), "--json"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    result = json.loads(line)
    assert result["file"] == str(song) and result["timeline"] and result["mood"] in result["probabilities"]


def test_models_lists_every_shipped_model_and_shows_one_by_name():
    shipped = sorted(p.stem for p in default_model_path().parent.glob("*.onnx"))
    if not shipped:
        pytest.skip("no shipped models")
    out = run_cli("models")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines() if line and not line.startswith((" ", "\n")) and "models NAME" not in line]
    assert sorted(listed) == shipped and listed[0] == default_model_path().stem
    assert "(default" in out.stdout.splitlines()[0]
    as_json = json.loads(run_cli("models", "--json").stdout)
    assert sorted(Path(m["file"]).stem for m in as_json) == shipped and sum(m["default"] for m in as_json) == 1
    one = run_cli("models", shipped[-1])
    assert one.returncode == 0 and f"file       {default_model_path().parent / (shipped[-1] + '.onnx')}" in one.stdout
    missing = run_cli("models", "no_such_model")
    assert missing.returncode == 2 and "shipped models: " in missing.stderr and shipped[0] in missing.stderr


def test_serve_says_the_port_is_taken_before_loading_the_model(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # a model path that does not exist: the port is checked first, so its error is the one reported
        out = run_cli("serve", "--port", str(port), "--model", str(tmp_path / "never_loaded.onnx"))
    assert out.returncode == 2, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "--port" in out.stderr and "never_loaded" not in out.stderr


def test_usage_names_the_console_script(tmp_path):
    script = tmp_path / "sendreturn-mood"  # what pip's console script is called
    script.write_text("import sys\nfrom sendreturn_mood.cli.main import main\nsys.exit(main())\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: sendreturn-mood "), out.stdout[:200]
    assert run_cli("--help").stdout.startswith("usage: python -m sendreturn_mood ")

"""POST /v1/analyze against a real server: the answer is `analyze --json`'s object plus `features`; every bad input
gets its status and a message saying what was wrong; the limits hold before the body is read; websockets keep
working on the same port.

Clients: the package's own `analyze_file` (h11 over asyncio) and raw sockets for what a well-behaved client never
sends (a huge Content-Length with no body, a body that never ends, a chunked body).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml

from sendreturn_mood.cli.analyze import main as analyze_main
from sendreturn_mood.client import Refused, analyze_file
from sendreturn_mood.hostile.uploads import exchange
from sendreturn_mood.room.trackfeatures import NOT_COMPUTED
from tests.server_support import TEST_SETTINGS, checked_body, client, running_server
from tests.test_decoding import RATE, cut, music

SECRET = "an-hs256-secret-that-is-at-least-32-bytes-long"


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "song.mp3"
    sf.write(path, music(12.0), RATE, format="MP3")
    return path


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    """Send `head` (+ `body`) on a plain socket, read the answer until the server closes (JSON body parsed)."""
    return exchange("127.0.0.1", port, head.encode() + body, timeout=10.0)


def post_head(length: int, path: str = "/v1/analyze", extra: str = "") -> str:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n{extra}\r\n"


def refusal(e: pytest.ExceptionInfo[Refused]) -> tuple[int, str]:
    checked_body("http-error", e.value.body)
    return e.value.status, e.value.code


async def test_the_answer_is_analyze_json_plus_features(song: Path, tiny_model_path: Path, tmp_path: Path, capsys) -> None:
    async with running_server(tiny_model_path) as server:
        result = await analyze_file(server.url, song)
        async with client(server, "live") as (ws, welcome):  # the websocket still opens on the same port
            assert welcome["type"] == "welcome"
    config = tmp_path / "config.yaml"
    nested: dict = {}
    for key, value in TEST_SETTINGS.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    config.write_text(yaml.safe_dump(nested))
    assert analyze_main(["--json", "--model", str(tiny_model_path), "--config", str(config), str(song)]) == 0
    printed = json.loads(capsys.readouterr().out)
    checked_body("analysis", json.dumps(result))
    checked_body("analysis", json.dumps(printed))
    features = result.pop("features")
    assert len(result.pop("analysis")) == 32  # the id a prepared track's PUT may refer to
    assert result.pop("file") == "song.mp3" and printed.pop("file") == str(song)
    assert result == printed  # one code path: the same decoding, windows, model, smoothing and summary

    assert 0 <= features["valence"] <= 1 and 0 <= features["energy"] <= 1
    assert features["valence"] == pytest.approx((printed["valence"] + 1) / 2, abs=1e-3)
    assert features["mood"] == printed["mood"] and features["mood_probabilities"] == printed["probabilities"]
    assert features["genre"] == printed["genre"]["label"]
    assert features["duration_ms"] == pytest.approx(12000, abs=60)
    assert features["loudness"] < 0 and features["tempo"] > 0 and -1 <= features["key"] <= 11
    spotify = features["spotify_compatible"]
    assert all(spotify[name] is None for name in NOT_COMPUTED)
    assert {"valence", "energy", "tempo", "key", "mode", "loudness", "duration_ms"} <= set(spotify)


async def test_bad_input_gets_its_status_and_says_what_failed(song: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "short.mp3", music(6.0), RATE, format="MP3")
    truncated = cut(tmp_path / "short.mp3", tmp_path / "cut.mp3", 0.3)
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 200)
    async with running_server(tiny_model_path, analyze__max_bytes=400_000, analyze__max_seconds=10) as server:
        port = server.port
        with pytest.raises(Refused) as e:
            await analyze_file(server.url, b"this is a text file, not audio", name="notes.mp3")
        assert refusal(e) == (415, "unsupported_media_type") and "wav, mp3, flac and ogg" in e.value.message
        with pytest.raises(Refused) as e:
            await analyze_file(server.url, b"")
        assert refusal(e) == (400, "bad_request") and "empty" in e.value.message
        with pytest.raises(Refused) as e:
            await analyze_file(server.url, truncated)
        assert refusal(e) == (422, "bad_audio") and "truncated: the decoder stopped at" in e.value.message
        with pytest.raises(Refused) as e:
            await analyze_file(server.url, corrupt)
        assert refusal(e) == (422, "bad_audio") and "corrupt.mp3" in e.value.message
        with pytest.raises(Refused) as e:  # 12 s of audio, 10 s allowed
            await analyze_file(server.url, song)
        assert refusal(e) == (413, "too_big") and "the limit is 10 s" in e.value.message

        # too big: answered from Content-Length alone, before (and without) the body
        started = time.monotonic()
        status, _, body = await asyncio.to_thread(raw_request, port, post_head(10**9))
        assert status == 413 and "the limit is 400000 bytes" in body["error"]["message"]
        assert time.monotonic() - started < 5
        # a chunked body is counted as it arrives, and refused as soon as it passes the limit
        chunk = b"ID3" + b"\x00" * 99_997
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"
        head = "POST /v1/analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        status, _, body = await asyncio.to_thread(raw_request, port, head, chunked)
        assert status == 413 and "more than 400000 bytes" in body["error"]["message"]
        # Expect: 100-continue: the server says go on only when it wants the body (after the checks)
        def expect_continue() -> tuple[bytes, bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(post_head(9, extra="Expect: 100-continue\r\n").encode())
                interim = s.recv(1024)
                s.sendall(b"not audio")
                return interim, s.recv(65536)
        interim, final = await asyncio.to_thread(expect_continue)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n" and final.startswith(b"HTTP/1.1 415")
        # other methods and paths
        status, headers, _ = await asyncio.to_thread(raw_request, port, post_head(3, "/healthz"), b"abc")
        assert status == 405 and headers["allow"] == "GET"


async def test_tokens(song: Path, tiny_model_path: Path) -> None:
    from sendreturn_mood.server.auth import Authenticator

    async with running_server(tiny_model_path, server__auth__secret=SECRET, server__auth_tokens=["static-one"]) as server:
        mint = Authenticator.from_config(server.config).mint
        for token in (None, "wrong", mint("*", ["listener"], 60)):
            with pytest.raises(Refused) as e:
                await analyze_file(server.url, song, token=token)
            assert e.value.status == 401 and e.value.code == "unauthorized"
        assert (await analyze_file(server.url, song, token=mint("*", ["analyze"], 60)))["features"]
        assert (await analyze_file(server.url, song, token="static-one"))["windows"] > 0


async def test_concurrency_is_bounded_and_a_slow_analysis_times_out(song: Path, tiny_model_path: Path) -> None:
    async with running_server(tiny_model_path, analyze__max_concurrent=1, analyze__timeout_seconds=0.02,
                              analyze__upload_timeout_seconds=3) as server:
        port = server.port
        # one upload admitted and still arriving: the next one is refused at once, with Retry-After
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(post_head(50_000).encode() + b"ID3")
        await asyncio.sleep(0.3)
        with pytest.raises(Refused) as e:
            await analyze_file(server.url, song)
        assert refusal(e) == (429, "rate_limited") and e.value.retry_after is not None and e.value.retry_after >= 1
        # the slow upload itself runs out of time (408), which frees the slot
        slow.settimeout(10)
        answer = await asyncio.to_thread(slow.recv, 65536)  # (the server runs on this loop)
        slow.close()
        assert answer.startswith(b"HTTP/1.1 408")
        # an analysis longer than the limit: 504, and the next request gets a fresh worker
        with pytest.raises(Refused) as e:
            await analyze_file(server.url, song)
        assert refusal(e) == (504, "timeout")
        server.analyze.pool.timeout = 60.0
        assert (await analyze_file(server.url, song))["windows"] > 0
        m = server.metrics
        assert (m.analyses.get(code="rate_limited"), m.analyses.get(code="request_timeout")) == (1, 1)
        assert (m.analyses.get(code="timeout"), m.analyses.get(code="ok"), m.analysis_seconds.count()) == (1, 1, 1)


async def test_js_analyze_file_against_a_real_server(song: Path, tiny_model_path: Path, tmp_path: Path) -> None:
    from tests.test_js_client import JS, node_or_skip, run_node_tests

    node = node_or_skip()
    received = tmp_path / "analyses.jsonl"
    async with running_server(tiny_model_path) as server:
        env = dict(os.environ, SENDRETURN_URL=server.url, SENDRETURN_AUDIO=str(song), SENDRETURN_RECV_LOG=str(received))
        code, out = await run_node_tests(node, [JS / "test" / "analyze.test.js"], env, websocket=False)
    assert code == 0, out
    assert re.search(r"pass 2\b", out) and re.search(r"fail 0\b", out), out
    for line in received.read_text().splitlines():
        checked_body("analysis", line)

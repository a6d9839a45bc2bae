"""The JS client (clients/js) under Node's own test runner, against a real server started here, so the README's
one test command covers it: `node --test` runs clients/js/test/ with SENDRETURN_URL pointing at the server; every
text message the JS client sent and received (logged by the tests) is then validated against the JSON Schemas.
Skips with the reason when `node` is missing (.ci/run installs Debian's nodejs)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from sendreturn_mood import contract
from tests.conftest import REPO
from tests.server_support import checked, running_server

JS = REPO / "clients" / "js"
NODE_TIMEOUT_S = 120


def node_or_skip() -> str:
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        pytest.skip("node is not installed (apt-get install nodejs; .ci/run installs it)")
    return node


async def node_flags(node: str, websocket: bool) -> list[str]:
    """Flags for this Node; skip when it is too old: the tests need Node 18's test runner, and a global WebSocket
    (Node 22, or 20 with --experimental-websocket) when they connect. Debian 12's nodejs is 18: the type check runs
    there, the connecting tests skip."""
    proc = await asyncio.create_subprocess_exec(node, "--version", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    version = out.decode().strip()
    major = int(re.match(r"v(\d+)", version).group(1))
    if major < 18 or (websocket and major < 20):
        pytest.skip(f"Node {version} has no {'global WebSocket' if major >= 18 else 'test runner'} (needs Node >= {20 if websocket else 18})")
    return ["--experimental-websocket"] if websocket and major < 22 else []


async def run_node_tests(node: str, files: list[Path], env: dict[str, str], websocket: bool = True) -> tuple[int, str]:
    flags = await node_flags(node, websocket)
    proc = await asyncio.create_subprocess_exec(
        node, *flags, "--test", "--test-reporter=spec", *map(str, files), cwd=JS, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"node --test did not finish in {NODE_TIMEOUT_S} s")
    return proc.returncode or 0, out.decode(errors="replace")


async def test_js_client_against_a_real_server(tiny_model_path, tmp_path):
    node = node_or_skip()
    sent_log, recv_log = tmp_path / "sent.jsonl", tmp_path / "received.jsonl"
    async with running_server(tiny_model_path) as server:
        env = dict(os.environ, SENDRETURN_URL=server.url, SENDRETURN_SENT_LOG=str(sent_log), SENDRETURN_RECV_LOG=str(recv_log),
                   SENDRETURN_SCHEMA_DIR=str(contract.schema_dir() / "v1"))
        code, out = await run_node_tests(node, [JS / "test" / "client.test.js"], env)
    assert code == 0, out
    assert re.search(r"pass 7\b", out) and re.search(r"fail 0\b", out), out
    sent = [json.loads(line) for line in sent_log.read_text().splitlines()]
    received = [json.loads(line) for line in recv_log.read_text().splitlines()]
    assert {m["type"] for m in sent} >= {"track", "preset", "end"}
    assert {m["type"] for m in received} >= {"welcome", "mood", "source"}
    for msg in sent:
        checked(msg, contract.CLIENT_MESSAGE)
    for msg in received:
        checked(msg)


async def test_js_types_cover_the_schema():
    node = node_or_skip()
    env = dict(os.environ, SENDRETURN_SCHEMA_DIR=str(contract.schema_dir() / "v1"))
    code, out = await run_node_tests(node, [JS / "test" / "types.test.js"], env, websocket=False)
    assert code == 0, out
    assert re.search(r"pass 4\b", out) and re.search(r"fail 0\b", out), out


async def test_js_capture_resamples_to_the_model_rate():
    """The capture worklet's downmix + resampler (its DSP runs in Node; the worklet itself in test_browser.py)."""
    node = node_or_skip()
    code, out = await run_node_tests(node, [JS / "test" / "resample.test.js"], dict(os.environ), websocket=False)
    assert code == 0, out
    assert re.search(r"pass 4\b", out) and re.search(r"fail 0\b", out), out


def test_js_package_has_no_runtime_dependencies():
    package = json.loads((JS / "package.json").read_text())
    assert not package.get("dependencies") and not package.get("peerDependencies")
    assert package["type"] == "module" and package["exports"]["."]["types"] == "./index.d.ts"
    for rel in ("src/index.js", "src/worklet.js", "index.d.ts"):
        assert (JS / rel).is_file(), rel
    assert not re.search(r"^\s*import .* from \"(?!\.)", (JS / "src" / "index.js").read_text(), re.M), "imports only itself"

"""The hostile-client suite in the default run: a few hundred fuzz cases against a real `serve` process with a
well-behaved room streaming beside them (it must miss no update), and a short soak. The full runs are commands:
`python -m sendreturn_mood.hostile fuzz --cases 10000` and `... soak --rooms 50 --minutes 10` (docs/RELIABILITY.md)."""

from __future__ import annotations

import asyncio

import pytest

from sendreturn_mood.hostile.fuzz import FUZZ_SERVER_CONFIG, GOOD_ROOM, check_frames, check_response, fuzz
from sendreturn_mood.hostile.harness import GoodRoom, ServerProcess, load_audio
from sendreturn_mood.hostile.soak import soak
from sendreturn_mood.hostile.wire import Reply

pytest.importorskip("hypothesis")

FUZZ_CASES = 300


@pytest.fixture(scope="module")
def server(tiny_model_path):
    config = {**FUZZ_SERVER_CONFIG, "model": {"path": str(tiny_model_path)}}
    srv = ServerProcess(config).start()
    yield srv, config
    srv.stop()


@pytest.mark.slow
def test_fuzz_a_few_hundred_cases_while_a_room_misses_nothing(server):
    srv, config = server
    good = GoodRoom(f"ws://127.0.0.1:{srv.port}", GOOD_ROOM, load_audio(30, 16000, songs=1), 16000, config).start()
    result = fuzz("127.0.0.1", srv.port, FUZZ_CASES, seed=None, server_alive=lambda: srv.alive)
    room = good.stop()
    assert result.failures == 0, (result.failing_case, result.violations)
    assert result.cases == FUZZ_CASES and result.statuses.get(101, 0) > FUZZ_CASES // 4
    assert room.done and room.failure is None and room.expected > 0
    assert room.missed == 0 and room.received == room.expected and not room.errors
    assert srv.alive and srv.tracebacks == 0 and srv.errors == 0, list(srv.log)[-20:]


def test_the_invariants_catch_what_issue_13_found():
    """The checker itself: a 500, an unbounded echo, NaN on the wire and a 1011 are all violations."""
    assert check_response(Reply(status=500, head=b"HTTP/1.1 500", body=b"Internal Server Error"))
    huge = b'{"error": {"code": "bad_message", "message": "' + b"x" * 5000 + b'"}}'
    assert check_response(Reply(status=400, head=b"HTTP/1.1 400\r\nContent-Type: application/json", body=huge))
    assert check_frames(Reply(status=101, frames=[(1, b'{"type": "mood", "valence": NaN}')]))
    assert check_frames(Reply(status=101, frames=[(1, b'{"type": "error", "code": "server_error", "message": "' + b"e" * 400 + b'"}')]))
    assert check_frames(Reply(status=101, close_code=1011))
    assert not check_frames(Reply(status=101, frames=[(1, b'{"type": "error", "code": "bad_message", "message": "m", "fatal": false}')], close_code=1000))


@pytest.mark.slow
def test_short_soak_has_no_gaps_or_stalls(server):
    srv, _ = server
    result = asyncio.run(soak(f"ws://127.0.0.1:{srv.port}", srv, rooms=4, minutes=0.25, audio=load_audio(20, 16000, songs=1),
                              rate=16000, churn_seconds=5, sample_seconds=2))
    assert result.updates > 4 * 5 and result.seq_gaps == 0 and result.stalls == 0 and result.reconnects >= 4
    assert not {k: v for k, v in result.errors.items()} and len(result.samples) >= 3
    assert srv.tracebacks == 0 and srv.errors == 0

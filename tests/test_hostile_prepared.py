"""The hostile suite's prepared-track attack in the default run: every bad PUT of a prepared track and every bad
playback message against a real `serve` process gets its own answer (415, 413, 400, 404, 507; unknown_track,
not_allowed, bad_message, rate_limited), the attacked room still follows its track, a live room streaming beside it
misses no update, and the server logs no traceback (`python -m sendreturn_mood.hostile prepared` is the same)."""

from __future__ import annotations

from sendreturn_mood.hostile.harness import ServerProcess
from sendreturn_mood.hostile.prepared import PREPARED_SERVER_CONFIG, run_beside_a_good_room


def test_every_bad_prepared_request_gets_its_answer_while_rooms_carry_on(tiny_model_path):
    config = {**PREPARED_SERVER_CONFIG, "model": {"path": str(tiny_model_path)}}
    server = ServerProcess(config).start()
    try:
        result, seen, room = run_beside_a_good_room("127.0.0.1", server.port, f"ws://127.0.0.1:{server.port}", config)
    finally:
        server.stop()
    assert not result.violations, (result.answers, seen)
    assert {status for _, status, _ in result.answers.values()} >= {200, 400, 404, 413, 415, 429, 507}
    assert len(seen["checks"]) >= 10 and all(seen["checks"].values()), seen
    assert room.done and room.failure is None and room.expected > 0 and room.missed == 0 and not room.errors
    assert server.tracebacks == 0, list(server.log)[-20:]

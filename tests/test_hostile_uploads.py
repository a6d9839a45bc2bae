"""The hostile suite's uploads attack in the default run: every bad POST /v1/analyze against a real `serve`
process gets its own status and a JSON body saying what was wrong, a room streaming beside it misses no update, and
the server logs no traceback (`python -m sendreturn_mood.hostile uploads` is the same attack as a command)."""

from __future__ import annotations

from sendreturn_mood.hostile.harness import ServerProcess
from sendreturn_mood.hostile.uploads import UPLOAD_SERVER_CONFIG, run_beside_a_good_room


def test_every_bad_upload_gets_its_status_while_a_room_misses_nothing(tiny_model_path):
    config = {**UPLOAD_SERVER_CONFIG, "model": {"path": str(tiny_model_path)}}
    server = ServerProcess(config).start()
    try:
        result, room = run_beside_a_good_room("127.0.0.1", server.port, f"ws://127.0.0.1:{server.port}", config)
    finally:
        server.stop()
    assert not result.violations, result.answers
    assert {status for _, status, _ in result.answers.values()} >= {200, 400, 401, 408, 413, 415, 422, 429}
    assert room.done and room.failure is None and room.expected > 0 and room.missed == 0 and not room.errors
    assert server.tracebacks == 0, list(server.log)[-20:]

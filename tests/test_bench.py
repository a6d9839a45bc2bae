"""The benchmark commands run and report what they promise (tiny sizes; what they measure is never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sendreturn_mood.bench.__main__ import main


def test_audio_bench_reports_both_paths_and_the_stages(tmp_path) -> None:
    out = tmp_path / "audio.json"
    assert main(["audio", "--seconds", "4", "--repeats", "1", "--stages", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["cpu_ms_per_room_second"]) == {"ours", "naive"}
    assert res["windows"]["ours"] == res["windows"]["naive"] > 0  # both cut the same windows
    assert set(res["stages_cpu_ms_per_room_second"]) == {"decode", "resample", "log-mel", "rest of ours"}


def test_model_bench_compares_models_per_batch(tmp_path, tiny_model_path) -> None:
    out = tmp_path / "model.json"
    assert main(["model", str(tiny_model_path), "--compare", str(tiny_model_path), "--batch", "1", "4", "--runs", "10",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["batches"]) == {"1", "4"}
    assert len(res["batches"]["4"]["cpu_ms_per_window"]) == 2


@pytest.mark.slow
def test_server_bench_drives_a_real_server(tmp_path, tiny_model_path) -> None:
    out = tmp_path / "server.json"
    assert main(["server", "--rooms", "3", "--seconds", "5", "--hop", "1.0", "--procs", "1", "--model", str(tiny_model_path),
                 "--frame-ms", "250", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "250 ms frames" in res["audio"] and res["generator_frames"] == 3 * 20
    assert res["failed_rooms"] == 0 and res["updates_at_listeners"] > 0
    assert res["seq_gaps_at_listeners"] == 0
    for key in ("server_cpu_ms_per_room_second", "latency_ms_p95", "rss_growth_mb_per_room", "generator_cpu_cores"):
        assert key in res


@pytest.mark.slow
def test_server_bench_runs_another_checkout_side_by_side(tmp_path, tiny_model_path) -> None:
    import shutil

    import sendreturn_mood

    other = tmp_path / "other"
    shutil.copytree(Path(sendreturn_mood.__file__).parent, other / "sendreturn_mood", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "ab.json"
    assert main(["server", "--rooms", "2", "--seconds", "4", "--hop", "1.0", "--procs", "1", "--model", str(tiny_model_path),
                 "--against", str(other), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    # the ratio itself is not asserted: two tiny rooms can use less than one clock tick of CPU in the measured span
    assert set(res["medians"]) == {"this", "against"} and "cpu_ratio_against_over_this" in res
    for name in ("this", "against"):
        run = res["runs"][name][0]
        assert run["failed_rooms"] == 0 and run["updates_at_listeners"] > 0


def test_server_bench_hands_an_older_checkout_only_the_limits_it_knows(tmp_path) -> None:
    """Code from before the per-address limits refuses config keys it does not know: the benchmark leaves them out."""
    import yaml

    from sendreturn_mood.bench.server import load_limits

    old = tmp_path / "old" / "sendreturn_mood"
    old.mkdir(parents=True)
    (old / "default_config.yaml").write_text(yaml.safe_dump({"server": {"max_connections": 1000, "max_rooms": 500}}))
    assert set(load_limits(100, 1, tmp_path / "old")) == {"max_connections", "max_rooms"}
    assert "max_connections_per_address" in load_limits(100, 1)


def test_server_bench_against_needs_a_checkout(tmp_path) -> None:
    with pytest.raises(SystemExit, match="no sendreturn_mood package"):
        main(["server", "--rooms", "1", "--against", str(tmp_path)])


def test_unknown_subcommand_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["nope"])
    assert e.value.code == 2


def test_cluster_bench_drives_processes_sharing_rooms_through_redis(tmp_path, tiny_model_path) -> None:
    """Two real server processes and a redis-server: every update crosses Redis to a listener on the other process."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")
    out = tmp_path / "cluster.json"
    assert main(["cluster", "--rooms", "2", "--processes", "2", "--seconds", "3", "--model", str(tiny_model_path), "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["processes"] == 2 and row["broker"] == "redis" and row["redis_cpu"] is not None
    assert row["updates_received"] >= 2 and row["updates_missing_at_listeners"] == 0 and row["dropped_messages"] == 0


@pytest.mark.slow
def test_prepared_bench_compares_prepared_and_live_rooms(tmp_path, tiny_model_path) -> None:
    out = tmp_path / "prepared.json"
    code = main(["prepared", "--rooms", "3", "--seconds", "9", "--song-seconds", "12", "--live", "--procs", "1",
                 "--model", str(tiny_model_path), "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    prepared, live = result["prepared"], result["live"]
    assert prepared["failed_rooms"] == 0 and live["failed_rooms"] == 0
    assert prepared["updates_at_listeners"] > 0 and prepared["delay_ms_p95"] >= 0 and prepared["seq_gaps_at_listeners"] == 0
    assert result["prepared_cpu_over_live"] is not None and result["command"].startswith("python -m sendreturn_mood.bench prepared")


@pytest.mark.slow
def test_prepare_bench_times_a_track(tmp_path) -> None:
    out = tmp_path / "prepare.json"
    assert main(["prepare", "--minutes", "0.25", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["prepare_seconds_median"] > 0 and result["cpu_seconds_median"] > 0

"""`python -m training trackchange-eval` on a few real songs: it runs the streaming path, scores every condition
and sensitivity, chooses a default on the tune half only, and writes the JSON and the report it says it writes."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, SHARED_DATA, shared_data_or_skip


def test_trackchange_eval_quick_run(tmp_path):
    shared_data_or_skip("moods-4q")
    shared_data_or_skip("emotify")
    out, report = tmp_path / "tc.json", tmp_path / "tc.md"
    cmd = [
        sys.executable, "-m", "training", "trackchange-eval", "--limit", "24", "--songs-per-stream", "6",
        "--sensitivities", "0.3,0.6", "--data", str(SHARED_DATA), "--out", str(out), "--report", str(report),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={"OPENBLAS_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert set(result["songs"]) == {"tune", "test"} and sum(result["songs"].values()) == 24
    for half in ("tune", "test"):
        assert set(result[half]) == {"embedding", "embedding_alone", "logmel"}
        for row in result[half]["embedding"].values():
            for condition in ("cut", "gap", "crossfade"):
                r = row[condition]
                assert r["boundaries"] > 0 and 0 <= r["detection_rate"] <= 1 and r["false_alarms_per_hour"] >= 0
    assert result["chosen_sensitivity"] in (None, "0.3", "0.6")
    assert result["command"].startswith("python -m training trackchange-eval --limit 24")
    text = report.read_text()
    assert "Held-out half" in text and result["command"] in text


def test_the_command_imports_no_other_command_module():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(REPO, "training", "trackchange.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    commands = {"features", "train", "evaluate", "export", "bench", "baselines", "ceiling", "spotify", "datasets"}
    assert not {m.rsplit(".", 1)[-1] for m in imported} & commands

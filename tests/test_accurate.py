"""The accurate variant (exported_models/mood_musicnn.onnx): its SVM genre head as ONNX ops agrees with scikit-learn,
the shipped file keeps the runtime's contract, and the server and `analyze` run it on real music (skipped with a
reason when the file or ../shared/data is absent)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_data_or_skip

REPO = Path(__file__).resolve().parent.parent
ACCURATE = REPO / "exported_models" / "mood_musicnn.onnx"
GENRES = ("classical", "electronic", "pop", "rock")


def accurate_or_skip() -> Path:
    if not ACCURATE.is_file():
        pytest.skip(f"{ACCURATE} is not built (python -m training.accurate)")
    return ACCURATE


def test_svm_head_as_onnx_ops_is_sklearns_decision_function():
    """Standardise -> RBF kernel -> one-vs-one decisions -> sklearn's ovr votes + confidences, as ONNX ops."""
    pytest.importorskip("sklearn")
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from training.svm import SoftmaxSVC, onnx_head, ovr_from_pairs, pairwise_decisions, svm_parts

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    X = rng.normal(size=(400, 12)).astype(np.float32)
    X[np.arange(400), y] += 1.5
    svc = SoftmaxSVC().fit(X, y)
    parts = svm_parts(svc)
    want = svc.decision_function(X)
    np.testing.assert_allclose(ovr_from_pairs(parts, pairwise_decisions(parts, X)), want, atol=1e-6)
    nodes, inits = onnx_head(parts, "x", "out")
    graph = helper.make_graph(nodes, "svm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 12])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    near_tie = np.abs(pairwise_decisions(parts, X)).min(axis=1) < 1e-3
    np.testing.assert_allclose(got[~near_tie], want[~near_tie], atol=1e-4)
    p = svc.predict_proba(X)
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert (p.argmax(1) == want.argmax(1)).all()


def test_shipped_accurate_model_keeps_the_contract():
    from sendreturn_mood.model.contract import MoodModel

    model = MoodModel(accurate_or_skip())
    info = model.info
    assert info.name == "mood_musicnn"
    assert tuple(info.genres) == GENRES
    assert model.has_embedding
    outputs = {o.name: o.shape for o in model.session.get_outputs()}
    assert set(outputs) >= {"mood_logits", "genre_logits", "embedding"}
    assert outputs["embedding"][1] == 200  # the MSD embedding, what the track-change detector compares
    assert info.provenance["teachers"] == ["msd", "mtt"]
    decision = info.provenance["evaluation"]["decision"]
    assert decision["ships"] and all(c["holds"] for c in decision["conditions"].values())
    pred = model.predict(np.zeros((2, 96, 40), np.float32))  # a short window is accepted
    assert pred.moods.shape == (2, 4) and pred.genres.shape == (2, 4)


def emotify_clip(genre: str) -> Path:
    files = sorted((shared_data_or_skip("emotify") / genre).glob("*.mp3"))
    if not files:
        pytest.skip(f"no {genre} clips in ../shared/data/emotify")
    return files[0]


async def test_server_runs_the_accurate_model_on_real_music():
    """A real Emotify clip streamed into a room of a server running the accurate variant: mood and genre per hop.
    The clip is one the heads were fitted on, so its genre being right is a sanity check, not an accuracy figure."""
    from sendreturn_mood.room.offline import read_blocks
    from tests.server_support import client, read_until_closed, running_server, send_audio

    path = emotify_clip("classical")
    rate, blocks = read_blocks(path)
    y = np.concatenate(list(blocks)).astype(np.float32)
    async with running_server(accurate_or_skip()) as server:
        async with client(server, "accurate", role="source", sample_rate=rate, channels=1) as (src, _):
            async def stream():
                await send_audio(src, y, rate, 1, "pcm_s16le", chunk_seconds=0.5)
                await src.send(json.dumps({"type": "end"}))

            _, got = await asyncio.gather(stream(), read_until_closed(src, timeout=180))
    moods = [m for m in got if m["type"] == "mood"]
    assert len(moods) >= int((y.size / rate - 3.0) / 1.5)
    for m in moods:
        assert sum(m["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert set(m["genre"]["probabilities"]) == set(GENRES)
    genre = np.array([[m["genre"]["probabilities"][g] for g in GENRES] for m in moods]).mean(0)
    assert GENRES[int(genre.argmax())] == "classical"


def test_analyze_cli_runs_the_accurate_model():
    path = emotify_clip("rock")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "sendreturn_mood", "analyze", str(path), "--json", "--model",
                        str(accurate_or_skip())], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[0])
    assert result["model"]["name"] == "mood_musicnn"
    assert result["mood"] in ("happy", "angry", "sad", "calm")
    assert set(result["genre"]["probabilities"]) == set(GENRES)
    assert result["windows"] >= 10


def test_bench_counts_both_teachers_multiply_adds():
    """The MTT graph's convolutions sit behind computed pads (no inferred shapes): bench reads them from a run."""
    from training.bench import multiply_adds

    unknown: list[str] = []
    macs = multiply_adds(accurate_or_skip(), 96, 187, unknown)
    assert unknown == []
    assert macs["mood_logits"] > 1.9 * macs["embedding"]  # mood reads both teachers; `embedding` is the MSD one alone

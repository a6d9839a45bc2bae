"""A tiny ONNX mood model with valid metadata, built with onnx.helper (no torch), for tests that need a model.

It averages each mel band over time and applies a fixed linear map, so different music gives different moods and
every output is a deterministic function of the audio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sendreturn_mood.audio.frontend import FrontEndSpec
from sendreturn_mood.model.contract import GENRE_OUTPUT, INPUT_NAME, MOOD_OUTPUT, ModelInfo, MoodLabel, write_metadata

MOODS = (
    MoodLabel("happy", 0.7, 0.5),
    MoodLabel("angry", -0.6, 0.7),
    MoodLabel("sad", -0.6, -0.5),
    MoodLabel("calm", 0.5, -0.6),
)
GENRES = ("classical", "electronic", "pop", "rock")


def tiny_info(spec: FrontEndSpec | None = None, patch_frames: int = 187, genres: bool = True) -> ModelInfo:
    return ModelInfo(
        name="tiny-test-model",
        version="0.0.1",
        description="fixed linear map over time-averaged log-mel; for tests only",
        frontend=spec or FrontEndSpec(),
        patch_frames=patch_frames,
        moods=MOODS,
        genres=GENRES if genres else (),
        provenance={"data": "none", "note": "built by tests/tiny_model.py"},
        metrics={},
    )


def build_tiny_model(path: str | Path, info: ModelInfo | None = None, metadata: bool = True) -> Path:
    """Write the tiny model to `path` and return it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    info = info or tiny_info()
    n_mels = info.frontend.n_mels
    rng = np.random.default_rng(1234)
    # Low bands push towards calm/sad, high bands towards angry/happy: loud bright music reads as high arousal.
    ramp = np.linspace(-1.0, 1.0, n_mels, dtype=np.float32)
    w_mood = np.stack([ramp * 0.8, ramp * 1.2, -ramp, -ramp * 0.6], axis=1).astype(np.float32)
    w_mood += 0.05 * rng.standard_normal(w_mood.shape).astype(np.float32)
    b_mood = np.zeros(len(info.moods), dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME, "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w_mood"], ["mood_mm"]),
        helper.make_node("Add", ["mood_mm", "b_mood"], [MOOD_OUTPUT]),
    ]
    inits = [
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axes"),
        numpy_helper.from_array(w_mood[:, : len(info.moods)], "w_mood"),
        numpy_helper.from_array(b_mood, "b_mood"),
    ]
    outputs = [helper.make_tensor_value_info(MOOD_OUTPUT, TensorProto.FLOAT, ["batch", len(info.moods)])]
    if info.genres:
        w_genre = (0.3 * rng.standard_normal((n_mels, len(info.genres)))).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["pooled", "w_genre"], [GENRE_OUTPUT]))
        inits.append(numpy_helper.from_array(w_genre, "w_genre"))
        outputs.append(helper.make_tensor_value_info(GENRE_OUTPUT, TensorProto.FLOAT, ["batch", len(info.genres)]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", n_mels, "frames"])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = Path(path)
    onnx.save(model, str(path))
    if metadata:
        write_metadata(path, info)
    return path

"""Static int8 quantisation of an exported model, checked against the float model on windows calibration never saw.

    python -m training quantize [MODEL] --out OUT.onnx [--data 4q emotify] [--calibration-clips 60]
    python -m sendreturn_mood.bench model OUT.onnx --compare MODEL          # what it costs, side by side

onnxruntime's `quantize_static` (QDQ format by default, per-channel int8 weights, uint8 activations, min-max
calibration) after its pre-processing. Calibration windows come from `--calibration-clips` clips drawn (seeded)
from the datasets; every window of every other clip is the check set: the float and the int8 model both score it
and the report gives mood and genre argmax agreement and the absolute probability difference (mean, max), plus each
model's window accuracy against the clip labels of its own task (4Q moods, Emotify genres). The shipped heads were
fitted on all labelled clips, so those accuracies are not cross-validated numbers: the agreement is the point (the
cross-validated evaluation of a student is `python -m training evaluate`). The int8 file keeps the float model's
metadata, its description saying how it was made, so the runtime loads it like any other model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from training.manifest import GENRES_EMOTIFY, MOODS_4Q

SEED = 0


def load_windows(data: list[str], spec, patch: int, hop: int, cache) -> list[tuple[str, str, np.ndarray]]:
    """(dataset, label, [n, n_mels, patch] windows) per clip, cut on the runtime's grid."""
    from training.cache import dataset_logmels, resolve_dataset
    from training.heads import windows

    clips = []
    for name in data:
        items = resolve_dataset(name)
        per_clip, _ = windows(dataset_logmels(items, spec, cache), patch, hop)
        clips += [(name, it.label, w) for it, w in zip(items, per_clip) if len(w)]
    return clips


def quantize(model: Path, out: Path, calibration: np.ndarray, fmt: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from sendreturn_mood.model.contract import INPUT_NAME, MoodModel, write_metadata

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration[:, None])

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

    info = MoodModel(model).info
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    note = (f"int8 static quantisation ({fmt.upper()}, per-channel weights, {len(calibration)} calibration windows) of "
            f"{model.name}; `python -m training quantize` made it")
    write_metadata(out, dataclasses.replace(info, description=f"{info.description} [{note}]".strip()))


def compare(model: Path, out: Path, clips: list[tuple[str, str, np.ndarray]]) -> dict:
    from sendreturn_mood.model.contract import MoodModel

    fm, qm = MoodModel(model), MoodModel(out)
    rows = {"mood_agree": [], "genre_agree": [], "mood_abs": [], "genre_abs": [], "float_correct": [], "int8_correct": []}
    for dataset, label, w in clips:
        f, q = fm.predict(w), qm.predict(w)
        rows["mood_agree"] += list(f.moods.argmax(1) == q.moods.argmax(1))
        rows["mood_abs"] += list(np.abs(f.moods - q.moods).ravel())
        if f.genres is not None and q.genres is not None:
            rows["genre_agree"] += list(f.genres.argmax(1) == q.genres.argmax(1))
            rows["genre_abs"] += list(np.abs(f.genres - q.genres).ravel())
        labels, probs = (MOODS_4Q, (f.moods, q.moods)) if dataset == "4q" else (GENRES_EMOTIFY, (f.genres, q.genres))
        if label in labels and probs[0] is not None:
            truth = labels.index(label)
            rows["float_correct"] += list(probs[0].argmax(1) == truth)
            rows["int8_correct"] += list(probs[1].argmax(1) == truth)
    mean = lambda v: round(float(np.mean(v)), 4) if v else None  # noqa: E731
    return {
        "check_windows": sum(len(w) for _, _, w in clips),
        "mood_argmax_agreement": mean(rows["mood_agree"]),
        "genre_argmax_agreement": mean(rows["genre_agree"]),
        "mood_prob_abs_diff_mean": mean(rows["mood_abs"]),
        "mood_prob_abs_diff_max": round(float(np.max(rows["mood_abs"])), 4),
        "genre_prob_abs_diff_mean": mean(rows["genre_abs"]),
        "window_accuracy_float": mean(rows["float_correct"]),
        "window_accuracy_int8": mean(rows["int8_correct"]),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, help="float ONNX model (default: the shipped one)")
    parser.add_argument("--out", required=True, help="int8 ONNX file to write")
    parser.add_argument("--data", nargs="+", default=["4q", "emotify"], help="datasets for calibration and the check")
    parser.add_argument("--calibration-clips", type=int, default=60, help="clips whose windows calibrate (default 60)")
    parser.add_argument("--format", choices=["qdq", "qoperator"], default="qdq", help="onnxruntime quantisation format")
    parser.add_argument("--cache", default=None, help="feature cache folder (default: training's)")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from sendreturn_mood.model.contract import MoodModel
    from training.cache import cache_dir
    from training.teacher import HOP_FRAMES

    model = Path(args.model) if args.model else MoodModel().path
    info = MoodModel(model).info
    clips = load_windows(args.data, info.frontend, info.patch_frames, HOP_FRAMES, cache_dir(args.cache))
    order = np.random.default_rng(SEED).permutation(len(clips))
    calib = [clips[i] for i in order[: args.calibration_clips]]
    held_out = [clips[i] for i in order[args.calibration_clips :]]
    calibration = np.concatenate([w for _, _, w in calib]).astype(np.float32)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize(model, out, calibration, args.format)
    report = {"model": str(model), "int8_model": str(out), "format": args.format, "calibration_clips": len(calib),
              "calibration_windows": len(calibration), "check_clips": len(held_out), **compare(model, out, held_out)}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

"""Build the "accurate" variant: the musicnn teacher itself plus linear mood/genre heads, as one ONNX file.

About 30x the default model's cost per window (so not the default), but it is the most accurate thing we have on
4Q (the teacher + LR baseline of the evaluation report). The graph is the teacher's ONNX graph, unchanged, with a
transpose in front (the runtime feeds [batch, n_mels, frames]; musicnn wants time first) and two Gemm heads behind
its concatenated embedding + tag logits; the heads are the same logistic regressions as in the evaluation, fitted
on every labelled window. The ISC notice of musicnn ships beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from training.manifest import GENRES_EMOTIFY, MOOD_COORDINATES, MOODS_4Q, REPO

DEFAULT_OUT = REPO / "exported_models" / "mood_musicnn.onnx"
VERIFY_ATOL = 1e-3


def compose(teacher_path: Path, heads: dict[str, tuple[np.ndarray, np.ndarray]], out: Path) -> None:
    """teacher graph + transpose in front + Gemm heads on concat(embedding, logits) -> `out`."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(teacher_path))
    g = m.graph
    old_in = g.input[0].name
    g.input[0].name = "logmel"
    g.input[0].type.tensor_type.shape.Clear()
    for d in ("batch", 96, "frames"):
        dim = g.input[0].type.tensor_type.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d
    g.node.insert(0, helper.make_node("Transpose", ["logmel"], [old_in], perm=[0, 2, 1], name="to_time_first"))
    nodes = [helper.make_node("Concat", ["embedding:0", "logits:0"], ["head_features"], axis=1, name="head_concat")]
    outputs = []
    for name, (W, b) in heads.items():
        g.initializer.extend([numpy_helper.from_array(W.astype(np.float32), f"{name}_W"),
                              numpy_helper.from_array(b.astype(np.float32), f"{name}_b")])
        nodes.append(helper.make_node("Gemm", ["head_features", f"{name}_W", f"{name}_b"], [name], transB=1, name=f"{name}_head"))
        outputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", len(b)]))
    nodes.append(helper.make_node("Identity", ["embedding:0"], ["embedding"], name="embedding_out"))
    outputs.append(helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", 200]))
    g.node.extend(nodes)
    del g.output[:]
    g.output.extend(outputs)
    onnx.checker.check_model(m)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out))


def write_card(path: Path, info, report: dict, diff: float) -> Path:
    """A short card; every number is read from the evaluation report's teacher_lr rows (`training evaluate`)."""
    s = report.get("summary", {})

    def row(task: str, label: str) -> str:
        p = f"{task}_teacher_lr"
        if f"{p}_window_accuracy" not in s:
            return f"| {label} | not evaluated | | | |"
        return (f"| {label} | {s[f'{p}_window_accuracy']:.3f} ± {s[f'{p}_window_accuracy_std']:.3f} | "
                f"{s[f'{p}_window_macro_f1']:.3f} | {s[f'{p}_clip_accuracy']:.3f} ± {s[f'{p}_clip_accuracy_std']:.3f} | "
                f"{s[f'{p}_clip_macro_f1']:.3f} ± {s[f'{p}_clip_macro_f1_std']:.3f} |")

    prov = info.provenance
    lines = [
        f"# Model card: {info.name} {info.version} (accurate variant)", "",
        info.description + ". Not the default: `serve --model exported_models/mood_musicnn.onnx` to use it.", "",
        "- Backbone: musicnn MSD model (J. Pons and X. Serra, \"musicnn: pre-trained convolutional neural networks for "
        "music audio tagging\", ISMIR 2019 LBD), unchanged; **ISC licence, notice in `msd_musicnn.LICENSE.md` beside this "
        "file** (Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019).",
        "- Heads: logistic regression (C by inner grouped CV) on the concatenated 200-d embedding and 50 tag logits of "
        f"every 3 s window: mood on all 676 4Q clips, genre on all 300 Emotify clips ({json.dumps(prov.get('heads'))}).",
        "- Data: 4Q (Panda, Malheiro & Paiva, IEEE Trans. Affective Computing, 2018) and Emotify (Aljanaki, Wiering & "
        "Veltkamp, Information Processing & Management, 2016); research use, audio not redistributed.",
        f"- Front end: the same as mood_cnn (musicnn's recipe, float16-rounded mel power); {info.patch_frames}-frame windows.",
        "", "## Metrics (artist-grouped 5-fold CV, heads refitted per fold; from docs/evaluation/report.md, `teacher_lr`)", "",
        "| | window acc | window macro-F1 | clip acc | clip macro-F1 |", "|---|---|---|---|---|",
        row("mood", "mood (4Q)"), row("genre", "genre (Emotify)"), "",
        "Cost: musicnn's own README measured ~29 ms per 3 s window on one thread, tens of times mood_cnn's cost; measure "
        "on your machine with `python -m training bench exported_models/mood_musicnn.onnx`.",
        "", "## Reproduce", "", "```sh", "python -m training features 4q emotify --teacher",
        prov.get("export_command", ""), "```", "",
        f"Check at export: the composed graph matches teacher + heads computed separately to {diff:.1e}; the runtime's "
        "`MoodModel` loads it and accepts a 40-frame window.", "",
        "## Known limits", "", "Same as mood_cnn: sad vs calm is the main confusion; pop vs rock for genres; "
        "4Q/Emotify are Western commercial music; there is no 'no music' class.", "",
    ]
    path.write_text("\n".join(lines))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="ONNX file to write")
    parser.add_argument("--mood-data", default="4q", help="labelled mood clips for the mood head")
    parser.add_argument("--genre-data", default="emotify", help="labelled genre clips for the genre head")
    parser.add_argument("--report", default=str(REPO / "docs" / "evaluation" / "report.json"),
                        help="evaluation report whose teacher_lr rows go into the card")
    parser.add_argument("--cache", default=None, help="feature cache folder (None: $SENDRETURN_CACHE, else cache/)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from sendreturn_mood.model import ModelInfo, MoodLabel, MoodModel, write_metadata
    from training.cache import cache_dir, clip_logmel, resolve_dataset
    from training.commandline import git_commit
    from training.cv import LinearHead, groups_of
    from training.recipe import FRONTEND, PATCH_FRAMES
    from training.teacher import (CITATION, TEACHER_LICENSE, TEACHER_PATH, cut_patches, dataset_teacher_outputs,
                                  teacher_features)

    cache = cache_dir(args.cache)
    heads, counts, check_x = {}, {}, None
    for out_name, data, labels in (("mood_logits", args.mood_data, MOODS_4Q), ("genre_logits", args.genre_data, GENRES_EMOTIFY)):
        items = resolve_dataset(data)
        outs = dataset_teacher_outputs(items, cache)
        X = teacher_features(items, cache)
        y = np.concatenate([[labels.index(it.label)] * len(o["starts"]) for it, o in zip(items, outs)])
        groups = np.concatenate([[g] * len(o["starts"]) for g, o in zip(groups_of(items), outs)])
        head = LinearHead(len(labels)).fit([X], y, groups)
        heads[out_name] = head.weights[0]
        counts[out_name] = {"clips": len(items), "windows": int(len(X)), "C": head.record()}
        if check_x is None:
            check_x = (cut_patches(clip_logmel(items[0].file, FRONTEND, cache), outs[0]["starts"][:2]), X[:2])
    out = Path(args.out)
    compose(TEACHER_PATH, heads, out)
    report = json.loads(Path(args.report).read_text()) if args.report and Path(args.report).is_file() else {}
    s = report.get("summary", {})
    metrics = {k.replace("teacher_lr", "model"): v for k, v in s.items() if "teacher_lr" in k}
    info = ModelInfo(
        name="mood_musicnn", version="1.0.0",
        description="musicnn (MSD) teacher + logistic-regression mood and genre heads on its embedding and tag logits "
        "(accurate variant, ~30x the default model's cost)",
        frontend=FRONTEND, patch_frames=PATCH_FRAMES,
        moods=tuple(MoodLabel(m, *MOOD_COORDINATES[m]) for m in MOODS_4Q), genres=GENRES_EMOTIFY,
        provenance={"data": ["moods-4q", "emotify"], "heads": counts, "git_commit": git_commit(),
                    "export_command": "python -m training.accurate " + " ".join(sys.argv[1:]),
                    "licences": {"backbone": "musicnn MSD model, ISC (msd_musicnn.LICENSE.md)"},
                    "citations": [CITATION]},
        metrics=metrics,
    )
    write_metadata(out, info)
    model = MoodModel(out)
    got = model.session.run(["mood_logits"], {"logmel": check_x[0]})[0]
    W, b = heads["mood_logits"]
    ref = check_x[1] @ W.T + b
    diff = float(np.abs(got - ref).max())
    if diff > VERIFY_ATOL:
        raise RuntimeError(f"{out}: composed graph differs from teacher + heads by {diff:.2e}")
    short = model.predict(check_x[0][:1, :, :40])
    shutil.copyfile(TEACHER_LICENSE, out.parent / TEACHER_LICENSE.name)
    write_card(out.with_suffix(".md"), info, report, diff)
    print(f"{out}: verified (max diff {diff:.1e} vs teacher + heads; {short.moods.shape} on a 40-frame window); "
          f"{TEACHER_LICENSE.name} copied beside it")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

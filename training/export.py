"""Export a trained student to one ONNX file with the runtime's metadata, verify it, and write its model card.

Steps: load the checkpoint; fit the mood head (logistic regression on the student's window embeddings of every
labelled mood clip) and the genre head (same on the genre clips) and fold them into the network's last layers;
export `logmel [batch, n_mels, frames] -> mood_logits, genre_logits, embedding` with dynamic batch and frames;
embed the `ModelInfo` JSON (front end, patch length, moods with valence/arousal, genres, provenance, metrics);
then check it: onnxruntime vs torch on the same inputs (a full patch and a short tail window) and
`sendreturn_mood.model.MoodModel` loads it and predicts. The card is generated from the evaluation report, so every
number in it comes from a command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

from training.manifest import GENRES_EMOTIFY, MOOD_COORDINATES, MOODS_4Q, REPO

DEFAULT_OUT = REPO / "exported_models" / "mood_cnn.onnx"
OPSET = 18
VERIFY_ATOL = 1e-3
DEFAULT_NAME = "mood_cnn"
NUMBER_WORDS = {2: "Two", 3: "Three", 4: "Four", 5: "Five"}  # for the description; larger counts are written as digits
ORDINALS = {2: "second", 3: "third", 4: "fourth", 5: "fifth"}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fit_heads(net, mood_items, genre_items, cache, C: float | None, head_input: str = "embedding", genre_net=None) -> dict:
    """Fit and install the linear heads; returns counts for the provenance. With `genre_net` (a genre branch) the
    genre head is fitted on that student's embedding instead of `net`'s; a `MoodEnsemble` gets one mood head per
    member, each fitted on its own member's embedding (as `evaluate` scores it)."""
    from training.features import dataset_logmels
    from training.heads import embed, fit_linear, per_member, select_C, set_linear, torch_embedder, windows
    from training.net import MoodEnsemble
    from training.teacher import TEACHER_SPEC

    info: dict = {}
    members = list(net.members) if isinstance(net, MoodEnsemble) else [net]
    jobs = [("mood", mood_items, MOODS_4Q, m) for m in members]
    jobs.append(("genre", genre_items, GENRES_EMOTIFY, genre_net if genre_net is not None else members[0]))
    for name, items, labels, owner in jobs:
        layer = owner.mood if name == "mood" else owner.genre
        if not items or layer is None:
            continue
        per_clip, clip_idx = windows(dataset_logmels(items, TEACHER_SPEC, cache))
        X = embed(torch_embedder(owner, head_input), per_clip)
        y = np.array([labels.index(items[i].label) for i in clip_idx])
        groups = np.array([items[i].group or items[i].file for i in clip_idx])
        c = C if C is not None else select_C(X, y, groups, len(labels))
        W, b = fit_linear(X, y, len(labels), c)
        set_linear(layer, W, b, owner.distill if head_input == "distill" else None)
        info.setdefault(name, {"clips": len(items), "windows": int(len(X)), "head_input": head_input, "C": []})["C"].append(c)
    for head in info.values():
        head["C"] = per_member(head["C"])
    if genre_net is not None and "genre" in info:
        info["genre"]["branch"] = "separate genre student (see provenance.genre_branch)"
    return info


def export_onnx(net, path: Path, n_mels: int, patch: int) -> None:
    import torch

    from training.net import ExportWrapper

    wrapper = ExportWrapper(net).eval()
    example = torch.randn(2, n_mels, patch)
    names = ["mood_logits", "genre_logits", "embedding"] if net.genre is not None else ["mood_logits", "embedding"]
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    frames = torch.export.Dim("frames", min=1, max=100000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices from torch's own exporter internals, not from this code
        torch.onnx.export(
            wrapper, (example,), str(path), input_names=["logmel"], output_names=names, opset_version=OPSET,
            dynamo=True, external_data=False, dynamic_shapes={"logmel": {0: batch, 2: frames}}, verbose=False,
        )


def verify(net, path: Path, n_mels: int, patch: int) -> dict:
    """onnxruntime vs torch on a full window and a short one; the runtime's loader accepts the file."""
    import onnxruntime as ort
    import torch

    from sendreturn_mood.model import MoodModel

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    outputs = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for frames in (patch, 40):
        x = (rng.random((3, n_mels, frames)) * 3).astype(np.float32)
        with torch.no_grad():
            ref = net(torch.from_numpy(x))
        got = sess.run(outputs, {"logmel": x})
        worst = max([worst] + [float(np.abs(ref[name].numpy() - g).max()) for name, g in zip(outputs, got)])
    if worst > VERIFY_ATOL:
        raise RuntimeError(f"{path}: onnxruntime and torch differ by {worst:.2e} (> {VERIFY_ATOL})")
    model = MoodModel(path)
    pred = model.predict(x[:1])
    if pred.moods.shape != (1, len(model.info.moods)) or not np.allclose(pred.moods.sum(), 1.0, atol=1e-5):
        raise RuntimeError(f"{path}: MoodModel prediction has the wrong shape or is not a distribution")
    return {"max_abs_diff_vs_torch": worst, "runtime_loader": "ok"}


def init_command(args: dict) -> str | None:
    """The training command of the checkpoint a fine-tuning run started from (recorded in that checkpoint)."""
    from training.train import training_command

    init = args.get("init")
    if not init or not Path(init).is_file():
        return None
    import torch

    return training_command(torch.load(init, map_location="cpu", weights_only=False).get("args", {}))


def build_info(ck: dict, name: str, version: str, metrics: dict, heads: dict, command: str, teacher_used: bool,
               genre_ck: dict | None = None, more_mood_cks: tuple[dict, ...] = ()):
    """The model's metadata. `ck` is the (first) mood student's checkpoint; `more_mood_cks` the other members of a
    mood ensemble, whose commands go into provenance.mood_ensemble."""
    from sendreturn_mood.model import ModelInfo, MoodLabel
    from training.teacher import CITATION, PATCH_FRAMES, TEACHER_SPEC
    from training.train import training_command

    citations = [
        "R. Panda, R. Malheiro, R. P. Paiva, \"Novel audio features for music emotion recognition\", IEEE Trans. "
        "Affective Computing, 2018 (4Q dataset)",
        "A. Aljanaki, F. Wiering, R. C. Veltkamp, \"Studying emotion induced by music through a crowdsourcing game\", "
        "Information Processing & Management, 2016 (Emotify)",
    ]
    args = ck.get("args", {})
    if teacher_used:
        citations.append(CITATION)
    if args.get("wise") is not None:
        citations.append("M. Wortsman et al., \"Robust fine-tuning of zero-shot models\", CVPR 2022 (WiSE-FT weight averaging)")
    provenance = {
        "data": ["moods-4q (4Q, artist groups)", "emotify (genres)"],
        "student_trained_on": args.get("data", []),
        "excluded_fold": args.get("exclude_fold"),
        "split": "artist-grouped stratified 5-fold CV for the metrics; final heads fitted on all labelled clips",
        "training_command": training_command(args),
        "init_command": init_command(args),
        "export_command": command,
        "git_commit": git_commit(),
        "exported": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "licences": {"model": "MIT (project)", "teacher": "musicnn MSD model, ISC (msd_musicnn.LICENSE.md)" if teacher_used else None,
                     "data": "4Q and Emotify: research use only; audio not redistributed"},
        "citations": citations,
        "heads": heads,
        "net": ck["cfg"],
    }
    if more_mood_cks:
        provenance["mood_ensemble"] = [
            {"seed": a.get("seed"), "training_command": training_command(a), "init_command": init_command(a)}
            for a in (c.get("args", {}) for c in (ck, *more_mood_cks))
        ]
    if genre_ck is not None:
        genre_args = genre_ck.get("args", {})
        provenance["genre_branch"] = {
            "net": genre_ck["cfg"],
            "trained_on": genre_args.get("data", []),
            "training_command": training_command(genre_args),
            "init_command": init_command(genre_args),
        }
    n_mood = 1 + len(more_mood_cks)
    n_students = n_mood + (genre_ck is not None)
    return ModelInfo(
        name=name,
        version=version,
        description=(f"{NUMBER_WORDS.get(n_students, n_students)} small CNNs" if n_students > 1 else "Small CNN")
        + " on 3 s log-mel windows: 4 quadrant moods (valence/arousal) and 4 genres"
        + (f"; the mood is the mean of {str(NUMBER_WORDS.get(n_mood, n_mood)).lower()} students' logits (same recipe, different seeds)"
           if n_mood > 1 else "")
        + (f"; the genre comes from a {ORDINALS.get(n_students, 'further')} student trained for it" if genre_ck is not None else "") + "; "
        + ("distilled from musicnn (MSD)" if teacher_used else "trained from scratch")
        + (", fine-tuned with labels" if args.get("init") and args.get("supervised") else "")
        + (" and averaged with the distilled weights" if args.get("wise") is not None else "")
        + ", linear heads on its embedding",
        frontend=TEACHER_SPEC,
        patch_frames=PATCH_FRAMES,
        moods=tuple(MoodLabel(m, *MOOD_COORDINATES[m]) for m in MOODS_4Q),
        genres=GENRES_EMOTIFY,
        provenance=provenance,
        metrics=metrics,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True,
                        help="training checkpoint (runs/<name>/best.ckpt); A,B = an ensemble of mood students (logits averaged)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"ONNX file to write (default {DEFAULT_OUT})")
    parser.add_argument("--genre-ckpt", default=None,
                        help="a genre branch: a second student whose embedding feeds the genre head (both in one graph)")
    parser.add_argument("--mood-data", default="4q", help="labelled mood clips for the mood head ('' = keep the trained head)")
    parser.add_argument("--genre-data", default="emotify", help="labelled genre clips for the genre head ('' = keep the trained head)")
    parser.add_argument("--report", default=str(REPO / "docs" / "evaluation" / "report.json"),
                        help="evaluation report JSON whose summary goes into the metadata and the card")
    parser.add_argument("--card", default=None, help="model card to write (default: OUT with .md)")
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--C", type=float, default=None, help="logistic regression C for the heads (default: grouped CV)")
    parser.add_argument("--head-input", choices=("embedding", "distill"), default="embedding",
                        help="fit the heads on the embedding or on the distillation output (folded into the graph)")
    parser.add_argument("--cache", default=None, help="feature cache folder")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch

    from sendreturn_mood.model import write_metadata
    from training.card import write_card
    from training.features import cache_dir, resolve_dataset
    from training.train import load_net, load_student

    torch.set_num_threads(2)
    net, (ck, *more_mood_cks) = load_student(args.ckpt)
    genre_net, genre_ck = load_net(args.genre_ckpt) if args.genre_ckpt else (None, None)
    mood_items = resolve_dataset(args.mood_data) if args.mood_data else []
    genre_items = resolve_dataset(args.genre_data) if args.genre_data else []
    heads = fit_heads(net, mood_items, genre_items, cache_dir(args.cache), args.C, args.head_input, genre_net)
    if genre_net is not None:
        from training.net import BranchedNet

        net = BranchedNet(net, genre_net)
    net.eval()
    report = {}
    if args.report and Path(args.report).is_file():
        report = json.loads(Path(args.report).read_text())
    metrics = report.get("summary", {})
    out = Path(args.out)
    command = shlex.join(["python", "-m", "training", "export"] + (sys.argv[sys.argv.index("export") + 1 :] if "export" in sys.argv else []))
    teacher_used = bool(ck["cfg"].get("distill_dim"))
    info = build_info(ck, args.name, args.version, metrics, heads, command, teacher_used, genre_ck, tuple(more_mood_cks))
    export_onnx(net, out, info.frontend.n_mels, info.patch_frames)
    write_metadata(out, info)
    check = verify(net, out, info.frontend.n_mels, info.patch_frames)
    print(f"{out}: exported and verified ({check['max_abs_diff_vs_torch']:.1e} max |onnxruntime - torch|, runtime loader ok)")
    if teacher_used and out.resolve().parent == DEFAULT_OUT.parent:
        from training.teacher import TEACHER_LICENSE

        shutil.copyfile(TEACHER_LICENSE, out.parent / TEACHER_LICENSE.name)  # the ISC notice travels with derived weights
    card = Path(args.card) if args.card else out.with_suffix(".md")
    write_card(card, info, report, check, ck)
    print(f"{card}: model card written")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

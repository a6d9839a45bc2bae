"""Export a trained student to one ONNX file with the runtime's metadata, verify it, and write its model card.

Steps: load the checkpoint; fit the mood head (logistic regression on the student's window embeddings of every
labelled mood clip) and the genre head (same on the genre clips) and fold them into the network's last layers;
export `logmel [batch, n_mels, frames] -> mood_logits, genre_logits, embedding` with dynamic batch and frames;
embed the `ModelInfo` JSON (front end, patch length, moods with valence/arousal, genres, provenance, metrics);
then check it: onnxruntime vs torch on the same inputs (a full patch and a short tail window) and
`sendreturn_mood.model.contract.MoodModel` loads it and predicts. The card is generated from the metadata and the evaluation
report, so every number in it comes from a command. An existing file is never overwritten without `--force`.

`--refresh MODEL.onnx` re-reads a shipped model's own metadata, puts the current report's numbers into it and
rewrites its card, leaving the graph and its weights byte for byte as they were (checked).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

from sendreturn_mood.model.contract import EMBEDDING_OUTPUT, GENRE_OUTPUT, MOOD_OUTPUT
from training.commandline import git_commit, invocation
from training.manifest import GENRES_EMOTIFY, MOOD_COORDINATES, MOODS_4Q, REPO

DEFAULT_OUT = REPO / "exported_models" / "mood_cnn.onnx"
DEFAULT_REPORT = REPO / "docs" / "evaluation" / "report.json"
OPSET = 18
VERIFY_ATOL = 1e-3
DEFAULT_NAME = "mood_cnn"
NUMBER_WORDS = {2: "Two", 3: "Three", 4: "Four", 5: "Five"}  # for the description; larger counts are written as digits
ORDINALS = {2: "second", 3: "third", 4: "fourth", 5: "fifth"}


def fit_heads(net, mood_items, genre_items, cache, C: float | None, head_input: str = "embedding", genre_net=None,
              genre_head: str = "linear") -> dict:
    """Fit and install the linear heads (`training.cv.LinearHead`, the head evaluation scores); returns counts for
    the provenance. With `genre_net` (a genre branch) the genre head is fitted on that student's embedding instead of
    `net`'s; a `MoodEnsemble` gets one mood head per member, each fitted on its own member's embedding."""
    from training.cache import dataset_logmels
    from training.cv import LinearHead, groups_of
    from training.heads import embed, set_linear, torch_embedder, windows
    from training.net import MoodEnsemble
    from training.recipe import FRONTEND

    info: dict = {}
    members = list(net.members) if isinstance(net, MoodEnsemble) else [net]
    jobs = [("mood", mood_items, MOODS_4Q, members), ("genre", genre_items, GENRES_EMOTIFY,
                                                      [genre_net if genre_net is not None else members[0]])]
    for name, items, labels, owners in jobs:
        layers = [o.mood if name == "mood" else o.genre for o in owners]
        if not items or any(layer is None for layer in layers):
            continue
        per_clip, clip_idx = windows(dataset_logmels(items, FRONTEND, cache))
        Xs = [embed(torch_embedder(o, head_input), per_clip) for o in owners]
        y = np.array([labels.index(items[i].label) for i in clip_idx])
        groups = np.array(groups_of(items))[clip_idx]
        if name == "genre" and genre_head == "rff":  # the SVM-like head, as layers in the graph
            from training.cv import RandomFeatureHead
            from training.net import RandomFeatureReadout

            if head_input != "embedding":
                raise SystemExit("export: --genre-head rff reads the embedding (--head-input embedding)")
            head = RandomFeatureHead(len(labels), C=C).fit(Xs, y, groups)
            owners[0].genre = RandomFeatureReadout.from_head(head)
            info[name] = {"clips": len(items), "windows": int(len(clip_idx)), "head_input": head_input,
                          "C": head.record(), "head": "rff", "random_features": head.n_features}
            continue
        head = LinearHead(len(labels), C=C).fit(Xs, y, groups)
        for owner, layer, (W, b) in zip(owners, layers, head.weights):
            set_linear(layer, W, b, owner.distill if head_input == "distill" else None)
        info[name] = {"clips": len(items), "windows": int(len(clip_idx)), "head_input": head_input, "C": head.record()}
        if name == "mood":
            info[name]["valence_arousal_zero"] = va_zero(Xs, clip_idx, y, np.array(groups_of(items)), head.chosen)
    if genre_net is not None and "genre" in info:
        info["genre"]["branch"] = "separate genre student (see provenance.genre_branch)"
    return info


def va_zero(Xs, clip_idx, y_win, groups_clip, C) -> list[float]:
    """The valence/arousal zero points the evaluation's calibration fits (`training.valence_arousal`), here on the
    held-out window probabilities of an inner grouped CV over all labelled mood clips."""
    from training.valence_arousal import held_out_zero

    y_clip = np.zeros(int(clip_idx.max()) + 1, dtype=int)
    y_clip[clip_idx] = y_win
    return list(held_out_zero(Xs, clip_idx, y_clip, groups_clip, MOODS_4Q, np.arange(len(y_clip)), C))


def export_onnx(net, path: Path, n_mels: int, patch: int) -> None:
    import torch

    from training.net import ExportWrapper

    wrapper = ExportWrapper(net).eval()
    example = torch.randn(2, n_mels, patch)
    names = [MOOD_OUTPUT, GENRE_OUTPUT, EMBEDDING_OUTPUT] if net.genre is not None else [MOOD_OUTPUT, EMBEDDING_OUTPUT]
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
    check_loader(path, x[:1])
    return {"max_abs_diff_vs_torch": worst, "runtime_loader": "ok"}


def check_loader(path: Path, x: np.ndarray) -> None:
    """The runtime's loader reads the file and predicts a distribution over its moods."""
    from sendreturn_mood.model.contract import MoodModel

    model = MoodModel(path)
    pred = model.predict(x)
    if pred.moods.shape != (1, len(model.info.moods)) or not np.allclose(pred.moods.sum(), 1.0, atol=1e-5):
        raise RuntimeError(f"{path}: MoodModel prediction has the wrong shape or is not a distribution")


def verify_graft(mood_from: Path, genre_net, path: Path, n_mels: int, patch: int) -> dict:
    """The grafted graph's mood outputs equal `mood_from`'s on the same inputs (the same nodes and weights), and its
    genre logits equal the genre student's in torch; the runtime's loader accepts the file."""
    import onnxruntime as ort
    import torch

    from training.graft import GENRE_OUTPUT, MOOD_OUTPUTS

    new = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    old = ort.InferenceSession(str(mood_from), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    mood_worst = genre_worst = 0.0
    for frames in (patch, 40):
        x = (rng.random((3, n_mels, frames)) * 3).astype(np.float32)
        got = dict(zip([*MOOD_OUTPUTS, GENRE_OUTPUT], new.run([*MOOD_OUTPUTS, GENRE_OUTPUT], {"logmel": x})))
        ref = old.run(list(MOOD_OUTPUTS), {"logmel": x})
        mood_worst = max([mood_worst] + [float(np.abs(got[n] - r).max()) for n, r in zip(MOOD_OUTPUTS, ref)])
        with torch.no_grad():
            genre_ref = genre_net(torch.from_numpy(x))[GENRE_OUTPUT].numpy()
        genre_worst = max(genre_worst, float(np.abs(got[GENRE_OUTPUT] - genre_ref).max()))
    if mood_worst > 0.0:
        raise RuntimeError(f"{path}: the mood side differs from {mood_from} by {mood_worst:.2e} (it must be the same graph)")
    if genre_worst > VERIFY_ATOL:
        raise RuntimeError(f"{path}: the genre side differs from the torch genre student by {genre_worst:.2e}")
    check_loader(path, x[:1])
    return {"max_abs_diff_vs_torch": genre_worst, "mood_side_max_abs_diff_vs_mood_from": mood_worst, "runtime_loader": "ok"}


def training_facts(ck: dict) -> dict:
    """The facts about a student's training run that the card states, recorded as data in the metadata."""
    from training.checkpoints import teachers_of

    a = ck.get("args", {})
    return {"data": a.get("data", []), "epochs": a.get("epochs"), "batch": a.get("batch"), "lr": a.get("lr"),
            "seed": a.get("seed"), "best_epoch": ck.get("state", {}).get("best_epoch"), "supervised": bool(a.get("supervised")),
            "fine_tuned_from": a.get("init"), "wise": a.get("wise"), "teachers": teachers_of(ck)}


def genre_branch_provenance(genre_ck: dict) -> dict:
    """What the metadata records about a genre student: its network, data, commands and teachers."""
    from training.checkpoints import command_of, init_command, teachers_of

    return {"net": genre_ck["cfg"], "trained_on": genre_ck.get("args", {}).get("data", []),
            "training_command": command_of(genre_ck), "init_command": init_command(genre_ck),
            "teachers": teachers_of(genre_ck)}


def build_info(ck: dict, name: str, version: str, metrics: dict, heads: dict, command: str,
               genre_ck: dict | None = None, more_mood_cks: tuple[dict, ...] = (), va_zero: list[float] | None = None):
    """The model's metadata. `ck` is the (first) mood student's checkpoint; `more_mood_cks` the other members of a
    mood ensemble, whose commands go into provenance.mood_ensemble."""
    from sendreturn_mood.model.contract import ModelInfo, MoodLabel
    from training.checkpoints import command_of, init_command, teachers_of
    from training.recipe import FRONTEND, PATCH_FRAMES
    from training.teacher import teacher_model

    teachers = teachers_of(ck)
    if genre_ck is not None:
        teachers += [t for t in teachers_of(genre_ck) if t not in teachers]
    citations = [
        "R. Panda, R. Malheiro, R. P. Paiva, \"Novel audio features for music emotion recognition\", IEEE Trans. "
        "Affective Computing, 2018 (4Q dataset)",
        "A. Aljanaki, F. Wiering, R. C. Veltkamp, \"Studying emotion induced by music through a crowdsourcing game\", "
        "Information Processing & Management, 2016 (Emotify)",
    ] + [teacher_model(t).citation for t in teachers]
    args = ck.get("args", {})
    if args.get("wise") is not None:
        citations.append("M. Wortsman et al., \"Robust fine-tuning of zero-shot models\", CVPR 2022 (WiSE-FT weight averaging)")
    teacher_names = " + ".join(f"musicnn {teacher_model(t).tags} model" for t in teachers)
    provenance = {
        "data": ["moods-4q (4Q, artist groups)", "emotify (genres)"],
        "student_trained_on": args.get("data", []),
        "excluded_fold": args.get("exclude_fold"),
        "split": "artist-grouped stratified 5-fold CV for the metrics; final heads fitted on all labelled clips",
        "training_command": command_of(ck),
        "init_command": init_command(ck),
        "training": training_facts(ck),
        "teachers": teachers,
        "export_command": command,
        "git_commit": git_commit(),
        "exported": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "licences": {"model": "MIT (project)", "teacher": f"{teacher_names}, ISC (msd_musicnn.LICENSE.md)" if teachers else None,
                     "data": "4Q and Emotify: research use only; audio not redistributed"},
        "citations": citations,
        "heads": heads,
        "net": ck["cfg"],
    }
    if more_mood_cks:
        provenance["mood_ensemble"] = [{"seed": c.get("args", {}).get("seed"), "training_command": command_of(c),
                                        "init_command": init_command(c)} for c in (ck, *more_mood_cks)]
    if genre_ck is not None:
        provenance["genre_branch"] = genre_branch_provenance(genre_ck)
    n_mood = 1 + len(more_mood_cks)
    n_students = n_mood + (genre_ck is not None)
    teacher_words = " and ".join(f"musicnn ({teacher_model(t).tags})" for t in teachers_of(ck))
    return ModelInfo(
        name=name,
        version=version,
        description=(f"{NUMBER_WORDS.get(n_students, n_students)} small CNNs" if n_students > 1 else "Small CNN")
        + " on 3 s log-mel windows: 4 quadrant moods (valence/arousal) and 4 genres"
        + (f"; the mood is the mean of {str(NUMBER_WORDS.get(n_mood, n_mood)).lower()} students' logits (same recipe, different seeds)"
           if n_mood > 1 else "")
        + (f"; the genre comes from a {ORDINALS.get(n_students, 'further')} student trained for it" if genre_ck is not None else "") + "; "
        + (f"distilled from {teacher_words}" if teacher_words else "trained from scratch")
        + (", fine-tuned with labels" if args.get("init") and args.get("supervised") else "")
        + (" and averaged with the distilled weights" if args.get("wise") is not None else "")
        + ", linear heads on its embedding",
        frontend=FRONTEND,
        patch_frames=PATCH_FRAMES,
        moods=tuple(MoodLabel(m, *MOOD_COORDINATES[m]) for m in MOODS_4Q),
        genres=GENRES_EMOTIFY,
        provenance=provenance,
        metrics=metrics,
        valence_arousal_zero=tuple(va_zero) if va_zero else None,
    )


def calibration_helps(report: dict) -> bool:
    """Ship the valence/arousal zero points only if, in the report's held-out folds, the calibrated signs named the
    true quadrant more often than the raw ones at both levels (window and clip)."""
    s = report.get("summary", {})
    keys = [("mood_student_cnn_va_window_signs_calibrated_mean", "mood_student_cnn_va_window_signs_mean"),
            ("mood_student_cnn_va_clip_signs_calibrated_mean", "mood_student_cnn_va_clip_signs_mean")]
    return all(k in s and c in s and s[c] > s[k] for c, k in keys)


def refuse_overwrite(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise SystemExit(f"export: {', '.join(existing)} exists; pass --force to overwrite it (or --out elsewhere)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", default=None,
                        help="training checkpoint (runs/<name>/best.ckpt); A,B = an ensemble of mood students (logits averaged)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="ONNX file to write (refused if it exists, unless --force)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out and its card")
    parser.add_argument("--refresh", default=None, metavar="MODEL",
                        help="instead of exporting: put the --report numbers into MODEL's metadata and rewrite its card "
                             "(weights untouched; None: export --ckpt)")
    parser.add_argument("--mood-from", default=None, metavar="MODEL",
                        help="keep MODEL's mood side (mood_logits, embedding: its nodes and weights as exported) and "
                             "replace only its genre side by --genre-ckpt (None: export --ckpt's mood student)")
    parser.add_argument("--genre-ckpt", default=None,
                        help="a genre branch: a second student whose embedding feeds the genre head (both in one graph; "
                             "None: the genre head reads the mood student)")
    parser.add_argument("--mood-data", default="4q", help="labelled mood clips for the mood head ('' = keep the trained head)")
    parser.add_argument("--genre-data", default="emotify", help="labelled genre clips for the genre head ('' = keep the trained head)")
    parser.add_argument("--report", default=str(DEFAULT_REPORT),
                        help="evaluation report JSON whose summary goes into the metadata and the card ('' = none)")
    parser.add_argument("--card", default=None, help="model card to write (None: OUT with .md)")
    parser.add_argument("--name", default=DEFAULT_NAME, help="model name in the metadata")
    parser.add_argument("--version", default="1.0.0", help="model version in the metadata")
    parser.add_argument("--C", type=float, default=None, help="fixed logistic regression C for the heads (None: grouped inner CV)")
    parser.add_argument("--head-input", choices=("embedding", "distill"), default="embedding",
                        help="fit the heads on the embedding or on the distillation output (folded into the graph)")
    parser.add_argument("--genre-head", choices=("linear", "rff"), default="linear",
                        help="genre head: linear, or rff (random Fourier features + linear, an SVM-like head in the graph)")
    parser.add_argument("--cache", default=None, help="feature cache folder (None: $SENDRETURN_CACHE, else cache/)")


def read_report(path: str) -> dict:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else {}


def zero_from_model(model, mood_data: str, cache, C: float) -> list[float]:
    """The valence/arousal zero points of a model exported before they were recorded: the same inner-CV fit as
    `fit_heads`, on the `embedding` its graph outputs (the features its mood head was fitted on)."""
    from training.cache import cache_dir, dataset_logmels, resolve_dataset
    from training.cv import groups_of
    from training.heads import embed, windows

    items = resolve_dataset(mood_data)
    per_clip, clip_idx = windows(dataset_logmels(items, model.info.frontend, cache_dir(cache)))
    X = embed(lambda x: model.session.run(["embedding"], {"logmel": x})[0], per_clip)
    y = np.array([MOODS_4Q.index(items[i].label) for i in clip_idx])
    return va_zero([X], clip_idx, y, np.array(groups_of(items)), C)


def refresh(args: argparse.Namespace) -> int:
    """New report numbers into a shipped model's metadata and card; the graph (weights) must stay byte-identical."""
    import dataclasses

    import onnx

    from sendreturn_mood.model.contract import MoodModel, write_metadata
    from training.card import write_card

    path = Path(args.refresh)
    before = onnx.load(str(path)).graph.SerializeToString()
    model = MoodModel(path)
    info = model.info
    report = read_report(args.report)
    mood_head = info.provenance.get("heads", {}).get("mood", {})
    if "valence_arousal_zero" not in mood_head and args.mood_data and isinstance(mood_head.get("C"), float):
        mood_head["valence_arousal_zero"] = zero_from_model(model, args.mood_data, args.cache, mood_head["C"])
    zero = mood_head.get("valence_arousal_zero")
    info = dataclasses.replace(info, metrics=report.get("summary", {}),
                               valence_arousal_zero=tuple(zero) if zero and calibration_helps(report) else None)
    write_metadata(path, info)
    if onnx.load(str(path)).graph.SerializeToString() != before:
        raise RuntimeError(f"{path}: the graph changed while refreshing its metadata")
    card = Path(args.card) if args.card else path.with_suffix(".md")
    write_card(card, info, report, info.provenance.get("export_check", {}))
    print(f"{path}: metadata refreshed from {args.report} (graph unchanged); {card} rewritten")
    return 0


def grafted_info(old, genre_ck: dict, genre_head: dict, metrics: dict, version: str, command: str, mood_from: Path):
    """`old`'s metadata with the genre side replaced: the genre student's provenance and head, the teachers and
    citations it adds, the new export's command and the report's numbers; the mood side's record stays as it was."""
    import copy
    import dataclasses

    from training.checkpoints import teachers_of
    from training.teacher import teacher_model

    prov = copy.deepcopy(old.provenance)
    prov.pop("export_check", None)
    # metadata from before the teachers were recorded (1.3.0 and older) had the MSD teacher when it had a distillation head
    mood_teachers = list(prov.get("teachers", ["msd"] if prov.get("net", {}).get("distill_dim") else []))
    added = [t for t in teachers_of(genre_ck) if t not in mood_teachers]
    prov["teachers"] = mood_teachers + added
    prov["citations"] = prov.get("citations", []) + [teacher_model(t).citation for t in added]
    if prov["teachers"]:
        names = " + ".join(f"musicnn {teacher_model(t).tags} model" for t in prov["teachers"])
        prov.setdefault("licences", {})["teacher"] = f"{names}, ISC (msd_musicnn.LICENSE.md)"
    prov["heads"] = {**prov.get("heads", {}), "genre": genre_head}
    prov["genre_branch"] = genre_branch_provenance(genre_ck)
    prov["mood_side"] = {"from": f"{old.name} {old.version} ({mood_from.name})",
                         "export_command": old.provenance.get("export_command"), "teachers": mood_teachers,
                         "kept": "nodes and weights as exported (export --mood-from); checked equal on the same inputs"}
    prov.update(export_command=command, git_commit=git_commit(),
                exported=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    net, teachers = genre_ck["cfg"], teachers_of(genre_ck)
    head = ("a random-Fourier-feature (RBF-like) head" if genre_head.get("head") == "rff" else "a linear head")
    description = (f"{old.description.split('. Genre:')[0]}. Genre: a student of {list(net['channels'])} channels "
                   f"distilled from musicnn ({' + '.join(teacher_model(t).tags for t in teachers)}), trained with the "
                   f"genre labels, {head}")
    return dataclasses.replace(old, version=version, provenance=prov, metrics=metrics, description=description)


def export_genre_side(args: argparse.Namespace) -> int:
    """`--mood-from MODEL --genre-ckpt G`: MODEL's mood side kept as it is, the genre side exported from G (its head
    fitted as `fit_heads` fits every head), grafted into one graph (`training.graft`) and checked."""
    import tempfile

    import onnx
    import torch

    from sendreturn_mood.model.contract import MoodModel, write_metadata
    from training.cache import cache_dir, resolve_dataset
    from training.card import write_card
    from training.checkpoints import load_net
    from training.graft import graft

    if not args.genre_ckpt or args.ckpt:
        raise SystemExit("export --mood-from MODEL takes --genre-ckpt (the new genre student) and no --ckpt")
    mood_from, out = Path(args.mood_from), Path(args.out)
    card = Path(args.card) if args.card else out.with_suffix(".md")
    refuse_overwrite([out, card], args.force)
    torch.set_num_threads(2)
    old = MoodModel(mood_from).info
    genre_net, genre_ck = load_net(args.genre_ckpt)
    genre_items = resolve_dataset(args.genre_data) if args.genre_data else []
    heads = fit_heads(genre_net, [], genre_items, cache_dir(args.cache), args.C, args.head_input, genre_net, args.genre_head)
    genre_net.eval()
    report = read_report(args.report)
    info = grafted_info(old, genre_ck, heads.get("genre", {}), report.get("summary", {}), args.version,
                        invocation("export"), mood_from)
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "mood_from.onnx"  # a copy: --out may be MODEL itself (--force), and the check reads it
        shutil.copyfile(mood_from, before)
        side = Path(tmp) / "genre_side.onnx"
        export_onnx(genre_net, side, old.frontend.n_mels, old.patch_frames)
        merged = graft(onnx.load(str(before)), onnx.load(str(side)))
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(merged, str(out))
        write_metadata(out, info)
        check = verify_graft(before, genre_net, out, old.frontend.n_mels, old.patch_frames)
    info.provenance["export_check"] = check
    write_metadata(out, info)
    print(f"{out}: {mood_from}'s mood side + the genre student of {args.genre_ckpt}, verified "
          f"(mood side identical, genre {check['max_abs_diff_vs_torch']:.1e} max |onnxruntime - torch|)")
    write_card(card, info, report, check)
    print(f"{card}: model card written")
    return 0


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if args.refresh:
        return refresh(args)
    if args.mood_from:
        return export_genre_side(args)
    if not args.ckpt:
        raise SystemExit("export: --ckpt is required (or --refresh MODEL)")
    import torch

    from sendreturn_mood.model.contract import write_metadata
    from training.cache import cache_dir, resolve_dataset
    from training.card import write_card
    from training.checkpoints import load_net, load_student

    out = Path(args.out)
    card = Path(args.card) if args.card else out.with_suffix(".md")
    refuse_overwrite([out, card], args.force)
    torch.set_num_threads(2)
    net, (ck, *more_mood_cks) = load_student(args.ckpt)
    genre_net, genre_ck = load_net(args.genre_ckpt) if args.genre_ckpt else (None, None)
    mood_items = resolve_dataset(args.mood_data) if args.mood_data else []
    genre_items = resolve_dataset(args.genre_data) if args.genre_data else []
    heads = fit_heads(net, mood_items, genre_items, cache_dir(args.cache), args.C, args.head_input, genre_net,
                      args.genre_head)
    if genre_net is not None:
        from training.net import BranchedNet

        net = BranchedNet(net, genre_net)
    net.eval()
    report = read_report(args.report)
    zero = heads.get("mood", {}).get("valence_arousal_zero")
    info = build_info(ck, args.name, args.version, report.get("summary", {}), heads, invocation("export"), genre_ck,
                      tuple(more_mood_cks), zero if calibration_helps(report) else None)
    export_onnx(net, out, info.frontend.n_mels, info.patch_frames)
    write_metadata(out, info)
    check = verify(net, out, info.frontend.n_mels, info.patch_frames)
    info.provenance["export_check"] = check  # recorded, so a later --refresh can restate it on the card
    write_metadata(out, info)
    print(f"{out}: exported and verified ({check['max_abs_diff_vs_torch']:.1e} max |onnxruntime - torch|, runtime loader ok)")
    if info.provenance["teachers"] and out.resolve().parent == DEFAULT_OUT.parent.resolve():
        from training.teacher import TEACHER_LICENSE

        shutil.copyfile(TEACHER_LICENSE, out.parent / TEACHER_LICENSE.name)  # the ISC notice travels with derived weights
    write_card(card, info, report, check)
    print(f"{card}: model card written")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

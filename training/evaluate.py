"""Artist-grouped cross-validated evaluation of the student CNN and the teacher baseline; JSON, PNG and markdown.

For each of the 5 stratified, artist-disjoint folds of 4Q (`training.metrics.group_folds`, seed 0): embed every
3 s window on the runtime's grid (3 s windows every 1.5 s), fit the logistic-regression mood head on the training
fold's windows only, and score the test fold per window (what the server reports for one hop) and per clip
(window probabilities averaged over the clip). The same is done with the musicnn teacher's embedding + tag logits
(the "teacher + LR" baseline, 10x slower, so not the shipped model) and, for genres, on Emotify.

Per-fold students: `--fold-ckpt K=PATH` uses a student trained with `train --exclude-fold K` for fold K, i.e. one
that never heard fold K's test audio; folds without one use `--ckpt`, a student distilled on all audio (no
labels; the report says which applies to which fold). H-data's non-model baselines (majority, librosa features +
LR, Spotify features) are read from `--baselines` JSON when present and shown in the same report.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from training.manifest import GENRES_EMOTIFY, MOODS_4Q, REPO, Item
from training.metrics import classification_report, clip_level, group_folds, plot_confusion, plot_reliability, summarize_folds

DEFAULT_OUT = REPO / "docs" / "evaluation"
N_SPLITS = 5
FOLD_SEED = 0


def cv_linear(
    X_of_fold: Callable[[int], np.ndarray | list[np.ndarray]], clip_idx: np.ndarray, items: list[Item],
    labels: tuple[str, ...], folds: list[tuple[np.ndarray, np.ndarray]], C: float,
) -> dict:
    """Per fold: fit the linear head on train-fold windows, score test-fold windows and clips. `X_of_fold` may give
    one feature matrix per ensemble member: each member then gets its own head (own C), and their logits are averaged
    (`training.net.MoodEnsemble`)."""
    from training.heads import ensemble_probs, fit_linear, per_member, select_C

    y_clip = np.array([labels.index(it.label) for it in items])
    g_clip = np.array([it.group or it.file for it in items])
    chosen = []
    y_win = y_clip[clip_idx]
    res: dict = {"window": {"folds": []}, "clip": {"folds": []}}
    all_true_w, all_pred_w, all_prob_w, all_true_c, all_pred_c, all_prob_c = [], [], [], [], [], []
    for k, (train_c, test_c) in enumerate(folds):
        Xs = X_of_fold(k)
        Xs = Xs if isinstance(Xs, list) else [Xs]
        tr = np.isin(clip_idx, train_c)
        te = np.isin(clip_idx, test_c)
        cs = [C if C is not None else select_C(X[tr], y_win[tr], g_clip[clip_idx[tr]], len(labels)) for X in Xs]
        chosen.append(per_member(cs))
        heads = [fit_linear(X[tr], y_win[tr], len(labels), c) for X, c in zip(Xs, cs)]
        probs = ensemble_probs([X[te] for X in Xs], heads)
        yt = [labels[i] for i in y_win[te]]
        yp = [labels[i] for i in probs.argmax(1)]
        res["window"]["folds"].append(classification_report(yt, yp, labels, probs))
        ids, cprobs = clip_level(probs, [str(c) for c in clip_idx[te]])
        ct = [labels[y_clip[int(c)]] for c in ids]
        cp = [labels[i] for i in cprobs.argmax(1)]
        res["clip"]["folds"].append(classification_report(ct, cp, labels, cprobs))
        all_true_w += yt; all_pred_w += yp; all_prob_w.append(probs)
        all_true_c += ct; all_pred_c += cp; all_prob_c.append(cprobs)
    res["C_per_fold"] = chosen
    for level, (t, p, pr) in {"window": (all_true_w, all_pred_w, all_prob_w), "clip": (all_true_c, all_pred_c, all_prob_c)}.items():
        res[level]["summary"] = summarize_folds(res[level]["folds"])
        res[level]["pooled"] = classification_report(t, p, labels, np.concatenate(pr))
    return res


def describe_student(path: str, fold: int, dataset: str) -> str:
    """What the student that scores `fold` has seen, read from its checkpoint chain (never typed by hand); for an
    ensemble (`A,B`), each member's chain joined by " + "."""
    import torch

    from training.train import ensemble_members

    if len(members := ensemble_members(path)) > 1:
        return " + ".join(describe_student(p, fold, dataset) for p in members)
    parts, p = [], path
    while p and Path(p).is_file():
        a = torch.load(p, map_location="cpu", weights_only=False).get("args", {})
        stage = "fine-tuned with labels" if a.get("supervised") else "distilled (no labels)"
        if a.get("wise") is not None:
            stage += f" (weights averaged with its init, alpha {a['wise']:g})"
        data, fold_data = a.get("data", []), a.get("fold_data", [])
        fold_data = [fold_data] if isinstance(fold_data, str) else fold_data
        if dataset not in data:
            seen = f"(never heard {dataset})"
        elif a.get("exclude_fold") == fold and dataset in fold_data:
            seen = f"without {dataset} fold {fold} (audio and labels)"
        else:
            seen = f"incl. {dataset} fold {fold}'s test clips" + (" (WITH labels)" if a.get("supervised") else " (audio only)")
        parts.append(f"{stage} on {'+'.join(data)} {seen}")
        p = a.get("init")
    return f"{path}: " + ", from: ".join(parts)


def student_features(spec: str, per_clip: list[np.ndarray], head_input: str = "embedding") -> list[np.ndarray]:
    """Window features of each student in `spec` (one path, or an ensemble `A,B`): one matrix per member."""
    from training.heads import embed, torch_embedder
    from training.train import ensemble_members, load_net

    return [embed(torch_embedder(load_net(p)[0], head_input), per_clip) for p in ensemble_members(spec)]


def teacher_features(items: list[Item], cache) -> np.ndarray:
    from training.teacher import dataset_teacher_outputs

    outs = dataset_teacher_outputs(items, cache)
    return np.concatenate([np.concatenate([o["embedding"], o["logits"]], axis=1) for o in outs])


def evaluate_task(items, labels, folds, ckpt, fold_ckpts, cache, C, with_teacher: bool, head_input: str, dataset: str) -> dict:
    from training.features import dataset_logmels
    from training.heads import windows
    from training.teacher import TEACHER_SPEC

    per_clip, clip_idx = windows(dataset_logmels(items, TEACHER_SPEC, cache))
    methods = {}
    t0 = time.time()
    shared = student_features(ckpt, per_clip, head_input)
    per_fold = {k: student_features(p, per_clip, head_input) for k, p in fold_ckpts.items()}
    methods["student_cnn"] = cv_linear(lambda k: per_fold.get(k, shared), clip_idx, items, labels, folds, C)
    methods["student_cnn"]["fold_students"] = {str(k): describe_student(fold_ckpts.get(k, ckpt), k, dataset) for k in range(len(folds))}
    print(f"student: {time.time() - t0:.0f} s", file=sys.stderr)
    if with_teacher:
        T = teacher_features(items, cache)
        if len(T) != len(clip_idx):
            raise RuntimeError("teacher patches and student windows differ: the teacher cache uses another hop")
        methods["teacher_lr"] = cv_linear(lambda k: T, clip_idx, items, labels, folds, C)
    majority = {}
    for level in ("window", "clip"):
        reps = []
        for train_c, test_c in folds:
            counts = np.bincount([labels.index(items[i].label) for i in train_c], minlength=len(labels))
            guess = labels[int(counts.argmax())]
            if level == "clip":
                t = [items[i].label for i in test_c]
            else:
                t = [items[i].label for i in clip_idx[np.isin(clip_idx, test_c)]]
            reps.append(classification_report(t, [guess] * len(t), labels))
        majority[level] = {"folds": reps, "summary": summarize_folds(reps)}
    methods["majority"] = majority
    return {"n_clips": len(items), "n_windows": int(len(clip_idx)), "labels": list(labels), "methods": methods}


def fmt(s: dict, key: str) -> str:
    if f"{key}_mean" not in s:
        return "-"
    return f"{s[f'{key}_mean']:.3f} ± {s[f'{key}_std']:.3f}"


def baseline_rows(obj, path: str = "") -> list[tuple[str, dict]]:
    """Every summarize_folds-like dict (has accuracy_mean) inside H-data's baselines JSON, with its key path."""
    rows = []
    if isinstance(obj, dict):
        if "accuracy_mean" in obj:
            return [(path, obj)]
        for k, v in obj.items():
            if k in ("folds", "per_class", "confusion", "reliability"):
                continue
            rows += baseline_rows(v, f"{path}/{k}" if path else str(k))
    return rows


def markdown(report: dict) -> str:
    lines = ["# Evaluation report", "", f"Generated by `{report['command']}` at git commit `{report['git_commit']}`.", ""]
    lines += ["Artist-grouped stratified 5-fold cross-validation (`training.metrics.group_folds`, seed 0; no artist on both "
              "sides). Windows: 3 s log-mel patches every 1.5 s, the server's geometry. *window* = one window, the "
              "number a listener sees per hop; *clip* = window probabilities averaged over the clip. Mean ± std over folds.", ""]
    for task, title in (("mood", "Mood: 4Q (happy, angry, sad, calm)"), ("genre", "Genre: Emotify (classical, electronic, pop, rock)")):
        if task not in report:
            continue
        r = report[task]
        lines += [f"## {title}", "", f"{r['n_clips']} clips, {r['n_windows']} windows.", "",
                  "| method | window acc | window macro-F1 | clip acc | clip macro-F1 | window ECE |", "|---|---|---|---|---|---|"]
        for name, m in r["methods"].items():
            w, c = m["window"]["summary"], m["clip"]["summary"]
            lines.append(f"| {name} | {fmt(w, 'accuracy')} | {fmt(w, 'macro_f1')} | {fmt(c, 'accuracy')} | {fmt(c, 'macro_f1')} | {fmt(w, 'ece')} |")
        lines.append("")
        st = r["methods"]["student_cnn"]
        lines += ["Which student scored each fold: " + "; ".join(f"fold {k}: {v}" for k, v in st["fold_students"].items()), ""]
        pooled = st["clip"]["pooled"]
        lines += ["Student, clip level, pooled over folds (rows = true, columns = predicted):", "",
                  "| true \\ pred | " + " | ".join(r["labels"]) + " |", "|---" * (len(r["labels"]) + 1) + "|"]
        for lab, row in zip(r["labels"], pooled["confusion"]):
            lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for lab, pc in pooled["per_class"].items():
            lines.append(f"| {lab} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} |")
        lines += ["", f"![confusion]({task}_student_clip_confusion.png) ![reliability]({task}_student_window_reliability.png)", ""]
    if report.get("baselines"):
        lines += ["## Non-model baselines (H-data, `python -m training baselines`)", "",
                  f"From `{report['baselines_file']}`.", "", "| baseline | accuracy | macro-F1 |", "|---|---|---|"]
        for name, s in baseline_rows(report["baselines"]):
            name = name.replace("datasets/", "").replace("/baselines/", ": ").replace("/summary", "").replace("/", ", ")
            lines.append(f"| {name} | {fmt(s, 'accuracy')} | {fmt(s, 'macro_f1')} |")
        lines.append("")
    else:
        lines += ["## Non-model baselines", "", "No baselines JSON was found when this report was made "
                  "(`python -m training baselines --out docs/evaluation/baselines.json`).", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True,
                        help="student checkpoint used for every fold without --fold-ckpt; A,B = an ensemble of mood students")
    parser.add_argument("--fold-ckpt", action="append", default=[], metavar="K=PATH",
                        help="student trained with --exclude-fold K, used for fold K (repeatable; K=A,B for an ensemble)")
    parser.add_argument("--genre-ckpt", default=None,
                        help="a genre branch (export --genre-ckpt): this student scores the genre folds instead of --ckpt")
    parser.add_argument("--genre-fold-ckpt", action="append", default=[], metavar="K=PATH",
                        help="genre branch trained with --exclude-fold K --fold-data <genre data>, for genre fold K")
    parser.add_argument("--genre-fold-ckpts", action="store_true",
                        help="use the --fold-ckpt students for the genre folds too (they left out fold K of the genre data)")
    parser.add_argument("--mood-data", default="4q")
    parser.add_argument("--genre-data", default="emotify", help="'' to skip the genre evaluation")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"report folder (default {DEFAULT_OUT})")
    parser.add_argument("--baselines", default=str(DEFAULT_OUT / "baselines.json"), help="H-data's baselines JSON")
    parser.add_argument("--no-teacher", action="store_true", help="skip the teacher + LR baseline")
    parser.add_argument("--teacher-tasks", nargs="+", default=["mood", "genre"], help="tasks that get the teacher + LR baseline")
    parser.add_argument("--head-input", choices=("embedding", "distill"), default="embedding",
                        help="what the linear heads are fitted on (see training.heads)")
    parser.add_argument("--C", type=float, default=None,
                        help="logistic regression C (default: chosen per fold by inner grouped CV on the training fold)")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--tag", default=None, help="also record this run as docs/evaluation/experiments/TAG.json (for the card)")
    parser.add_argument("--description", default="", help="one line saying what this experiment is (with --tag)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch

    from training.export import git_commit
    from training.features import cache_dir, resolve_dataset
    from training.teacher import teacher_available

    torch.set_num_threads(2)
    cache = cache_dir(args.cache)
    C = args.C
    fold_ckpts = {int(k): v for k, v in (s.split("=", 1) for s in args.fold_ckpt)}
    genre_fold_ckpts = {int(k): v for k, v in (s.split("=", 1) for s in args.genre_fold_ckpt)}
    if args.genre_fold_ckpts:
        genre_fold_ckpts = {**fold_ckpts, **genre_fold_ckpts}
    argv = sys.argv[sys.argv.index("evaluate") + 1 :] if "evaluate" in sys.argv else sys.argv[1:]
    report: dict = {"command": shlex.join(["python", "-m", "training", "evaluate", *argv]), "git_commit": git_commit(), "C": C,
                    "head_input": args.head_input,
                    "folds": N_SPLITS, "fold_seed": FOLD_SEED}
    with_teacher = teacher_available() and not args.no_teacher
    tasks = [("mood", args.mood_data, MOODS_4Q, args.ckpt, fold_ckpts)]
    if args.genre_data:
        tasks.append(("genre", args.genre_data, GENRES_EMOTIFY, args.genre_ckpt or args.ckpt, genre_fold_ckpts))
    for task, data, labels, ckpt, fc in tasks:
        items = resolve_dataset(data)
        folds = group_folds([i.label for i in items], [i.group or i.file for i in items], N_SPLITS, FOLD_SEED)
        report[task] = evaluate_task(items, labels, folds, ckpt, fc, cache, C,
                                     with_teacher and task in args.teacher_tasks, args.head_input, data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bl = Path(args.baselines)
    if bl.is_file():
        report["baselines"] = json.loads(bl.read_text())
        report["baselines_file"] = str(bl.relative_to(REPO) if bl.resolve().is_relative_to(REPO) else bl)
    summary = {}
    for task in ("mood", "genre"):
        if task in report:
            m = report[task]["methods"]
            for name in ("student_cnn", "teacher_lr"):
                if name in m:
                    for level in ("window", "clip"):
                        s = m[name][level]["summary"]
                        summary[f"{task}_{name}_{level}_accuracy"] = round(s["accuracy_mean"], 4)
                        summary[f"{task}_{name}_{level}_macro_f1"] = round(s["macro_f1_mean"], 4)
                        summary[f"{task}_{name}_{level}_accuracy_std"] = round(s["accuracy_std"], 4)
                        summary[f"{task}_{name}_{level}_macro_f1_std"] = round(s["macro_f1_std"], 4)
            st = m["student_cnn"]
            plot_confusion(st["clip"]["pooled"], report[task]["labels"], out / f"{task}_student_clip_confusion.png",
                           f"{task}, student, clip level (pooled folds)")
            plot_confusion(st["window"]["pooled"], report[task]["labels"], out / f"{task}_student_window_confusion.png",
                           f"{task}, student, window level (pooled folds)")
            plot_reliability(st["window"]["pooled"], out / f"{task}_student_window_reliability.png",
                             f"{task}, student, windows: ECE {st['window']['pooled']['ece']:.3f}")
    report["summary"] = summary
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    if args.tag:
        exp = DEFAULT_OUT / "experiments" / f"{args.tag}.json"
        exp.parent.mkdir(parents=True, exist_ok=True)
        exp.write_text(json.dumps({"tag": args.tag, "description": args.description, "command": report["command"],
                                   "git_commit": report["git_commit"], "summary": summary,
                                   "fold_students": report["mood"]["methods"]["student_cnn"]["fold_students"]}, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and PNGs")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

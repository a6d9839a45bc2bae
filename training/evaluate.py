"""Artist-grouped cross-validated evaluation of the student CNN and the teacher baselines; JSON, PNG and markdown.

Everything goes through the evaluation spine (`training.cv`): the folds of `dataset_folds` (5 stratified,
artist-disjoint folds of 4Q; Emotify's clips are their own groups), the one grouped-CV loop and the one linear head
(C by inner grouped CV on the training fold). Every 3 s window on the runtime's grid (every 1.5 s) is embedded, the
head is fitted on the training fold's windows and scored per window (what the server reports for one hop) and per
clip (window probabilities averaged over the clip). The same is done with the musicnn teachers' embeddings + tag
logits (MSD alone, and MSD + MagnaTagATune when that teacher is present): 10x slower, so baselines, not the model.

Per-fold students: `--fold-ckpt K=PATH` uses a student trained with `train --exclude-fold K` for fold K (one that
never heard fold K's test audio); folds without one use `--ckpt`. The report records, per fold, the checkpoint
chain in words and whether any stage of it heard that fold's test clips. The non-model baselines (majority,
librosa features + LR, Spotify features) are read from `--baselines` JSON when present and shown in the same report.

Two further measurements on the student's held-out window probabilities: for mood, how often the signs of the
reported valence/arousal give the right quadrant, raw and with a zero point fitted on the training folds only
(`training.valence_arousal`); for both tasks, clip accuracy when averaging N consecutive windows (longer context).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from training.commandline import git_commit, invocation
from training.cv import HEADS, CVResult, LinearHead, SklearnModel, dataset_folds, grouped_cv, groups_of
from training.manifest import GENRES_EMOTIFY, MOOD_COORDINATES, MOODS_4Q, Item, project_root
from training.metrics import plot_confusion, plot_reliability
from training.recipe import C_GRID, FOLD_SEED, N_SPLITS

DEFAULT_OUT = project_root() / "docs" / "evaluation"
CONTEXT_WINDOWS = (1, 2, 4, 8, 16)  # windows averaged for the longer-context curve (plus the whole clip)
TEACHER_ROWS = {"teacher_lr": ("msd",), "teachers_lr": ("msd", "mtt")}  # report row -> teachers whose outputs it reads


def student_features(spec: str, per_clip: list[np.ndarray], head_input: str = "embedding") -> list[np.ndarray]:
    """Window features of each student in `spec` (one path, or an ensemble `A,B`): one matrix per member."""
    from training.checkpoints import ensemble_members, load_net
    from training.heads import embed, torch_embedder

    return [embed(torch_embedder(load_net(p)[0], head_input), per_clip) for p in ensemble_members(spec)]


def as_list(X) -> list[np.ndarray]:
    return X if isinstance(X, list) else [X]


def valence_arousal_report(features: Callable[[int], list[np.ndarray]], res: CVResult, clip_idx: np.ndarray,
                           y_clip: np.ndarray, groups: np.ndarray, labels, folds) -> dict:
    """Per fold: label accuracy, and how often the signs of the reported valence/arousal give the true quadrant,
    raw and calibrated (zero point fitted on the training folds' held-out window probabilities only)."""
    from training.metrics import clip_level
    from training.valence_arousal import agreement, calibrate, coordinates, held_out_zero, signs_of

    signs = signs_of(labels, MOOD_COORDINATES)
    y_win = y_clip[clip_idx]
    rows = []
    for k, (train_c, test_c) in enumerate(folds):
        te = np.isin(clip_idx, test_c)
        zero = held_out_zero(as_list(features(k)), clip_idx, y_clip, groups, labels, train_c, res.models[k].chosen)
        p = res.window_probs[te]
        ids, cp = clip_level(p, [str(c) for c in clip_idx[te]])
        yc = y_clip[[int(c) for c in ids]]
        row = {"zero": list(zero)}
        for level, probs, y in (("window", p, y_win[te]), ("clip", cp, yc)):
            va = coordinates(probs, labels, MOOD_COORDINATES)
            row[level] = {"label_accuracy": float((probs.argmax(1) == y).mean()), "signs": agreement(va, y, signs),
                          "signs_calibrated": agreement(calibrate(va, zero), y, signs)}
        rows.append(row)
    summary = {}
    for level in ("window", "clip"):
        for key in ("label_accuracy", "signs", "signs_calibrated"):
            vals = [r[level][key] if key == "label_accuracy" else r[level][key]["quadrant"] for r in rows]
            summary[f"{level}_{key}_mean"], summary[f"{level}_{key}_std"] = float(np.mean(vals)), float(np.std(vals))
    return {"folds": rows, "summary": summary}


def context_curve(res: CVResult, clip_idx: np.ndarray, y_clip: np.ndarray, ns=CONTEXT_WINDOWS) -> dict:
    """Accuracy when the probabilities of N consecutive windows are averaged (every run of N windows of every test
    clip; each clip weighs the same), and over the whole clip: what a longer smoothing horizon could give."""
    out = {}
    clips = np.unique(clip_idx)
    for n in (*ns, None):
        per_clip = []
        for c in clips:
            p = res.window_probs[clip_idx == c]
            m = len(p) if n is None else min(n, len(p))
            runs = np.cumsum(np.vstack([np.zeros((1, p.shape[1])), p]), axis=0)
            means = runs[m:] - runs[:-m]
            per_clip.append(float((means.argmax(1) == y_clip[c]).mean()))
        out["clip" if n is None else str(n)] = float(np.mean(per_clip))
    return out


def score_student(ckpt: str, fold_ckpts: dict[int, str], fold_ids: list[int], folds, per_clip, clip_idx, y_clip,
                  groups, labels, C, head_input: str, dataset: str, head: str, va: bool, grid=None) -> dict:
    """The student rows: each fold scored by its own checkpoint (else `ckpt`), with what its chain heard."""
    from training.checkpoints import describe_chain, heard_test_fold

    t0 = time.time()
    shared = student_features(ckpt, per_clip, head_input)
    per_fold = {k: student_features(p, per_clip, head_input) for k, p in fold_ckpts.items() if k in fold_ids}

    def features(j: int) -> list[np.ndarray]:
        return per_fold.get(fold_ids[j], shared)

    make_head = (lambda: HEADS[head](len(labels), C=C)) if head != "linear" else (lambda: LinearHead(len(labels), C=C, grid=grid or C_GRID))
    res = grouped_cv(features, clip_idx, y_clip, groups, labels, folds, make_head)
    student = {**res.report, "head": head, "context": context_curve(res, clip_idx, y_clip)}
    scorers = {k: fold_ckpts.get(k, ckpt) for k in fold_ids}
    student["fold_students"] = {str(k): describe_chain(p, k, dataset) for k, p in scorers.items()}
    student["folds_that_heard_their_test_clips"] = [k for k, p in scorers.items() if heard_test_fold(p, k, dataset)]
    if va:
        student["valence_arousal"] = valence_arousal_report(features, res, clip_idx, y_clip, groups, labels, folds)
    print(f"student: {time.time() - t0:.0f} s", file=sys.stderr)
    return student


def evaluate_task(items: list[Item], labels, ckpt: str | None, fold_ckpts: dict[int, str], cache, C, teacher_rows,
                  head_input: str, dataset: str, head: str = "linear", va: bool = False,
                  only_folds: list[int] | None = None, grid=None) -> dict:
    from training.cache import dataset_logmels
    from training.heads import windows
    from training.recipe import FRONTEND
    from training.teacher import teacher_features

    fold_ids = only_folds if only_folds else list(range(N_SPLITS))
    folds = [dataset_folds(items)[k] for k in fold_ids]  # position j scores fold fold_ids[j]
    per_clip, clip_idx = windows(dataset_logmels(items, FRONTEND, cache))
    y_clip = np.array([labels.index(it.label) for it in items])
    groups = np.array(groups_of(items))
    methods = {}
    if ckpt:
        methods["student_cnn"] = score_student(ckpt, fold_ckpts, fold_ids, folds, per_clip, clip_idx, y_clip, groups,
                                               labels, C, head_input, dataset, head, va, grid)
    for name, teachers in teacher_rows.items():
        T = teacher_features(items, cache, teachers)
        if len(T) != len(clip_idx):
            raise RuntimeError("teacher patches and student windows differ: the teacher cache uses another hop")
        tres = grouped_cv(T, clip_idx, y_clip, groups, labels, folds, lambda: LinearHead(len(labels), C=C, grid=grid or C_GRID))
        methods[name] = {**tres.report, "teachers": list(teachers), "context": context_curve(tres, clip_idx, y_clip)}
        if va:
            methods[name]["valence_arousal"] = valence_arousal_report(lambda k: [T], tres, clip_idx, y_clip, groups, labels, folds)
    from sklearn.dummy import DummyClassifier

    methods["majority"] = grouped_cv(np.zeros((len(clip_idx), 1)), clip_idx, y_clip, groups, labels, folds,
                                     lambda: SklearnModel(DummyClassifier(strategy="prior"), len(labels))).report
    return {"n_clips": len(items), "n_windows": int(len(clip_idx)), "labels": list(labels), "methods": methods,
            "folds_scored": fold_ids}


def fmt(s: dict, key: str) -> str:
    if f"{key}_mean" not in s:
        return "-"
    return f"{s[f'{key}_mean']:.3f} ± {s[f'{key}_std']:.3f}"


def baseline_rows(obj, path: str = "") -> list[tuple[str, dict]]:
    """Every summarize_folds-like dict (has accuracy_mean) inside the baselines JSON, with its key path."""
    rows = []
    if isinstance(obj, dict):
        if "accuracy_mean" in obj:
            return [(path, obj)]
        for k, v in obj.items():
            if k in ("folds", "per_class", "confusion", "reliability", "pooled"):
                continue
            rows += baseline_rows(v, f"{path}/{k}" if path else str(k))
    return rows


def student_markdown(task: str, r: dict, st: dict) -> list[str]:
    lines: list[str] = []
    lines += [f"Student head: {st.get('head', 'linear')}; C per fold: {st.get('C_per_fold')}.", ""]
    lines += ["Which student scored each fold: " + "; ".join(f"fold {k}: {v}" for k, v in st["fold_students"].items()), ""]
    heard = st.get("folds_that_heard_their_test_clips", [])
    lines += [f"Folds whose scoring chain heard their own test clips: {', '.join(map(str, heard)) or 'none'}.", ""]
    pooled = st["clip"]["pooled"]
    lines += ["Student, clip level, pooled over folds (rows = true, columns = predicted):", "",
              "| true \\ pred | " + " | ".join(r["labels"]) + " |", "|---" * (len(r["labels"]) + 1) + "|"]
    for lab, row in zip(r["labels"], pooled["confusion"]):
        lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for lab, pc in pooled["per_class"].items():
        lines.append(f"| {lab} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} |")
    lines += ["", f"![confusion]({task}_student_clip_confusion.png) ![reliability]({task}_student_window_reliability.png)", ""]
    return lines


def markdown(report: dict) -> str:
    lines = ["# Evaluation report", "", f"Generated by `{report['command']}` at git commit `{report['git_commit']}`.", ""]
    lines += ["Artist-grouped stratified 5-fold cross-validation (`training.cv.dataset_folds`, seed 0; no artist on both "
              "sides). Windows: 3 s log-mel patches every 1.5 s, the server's geometry. *window* = one window, the "
              "number a listener sees per hop; *clip* = window probabilities averaged over the clip. Mean ± std over "
              "folds. Every linear head (the student's, the teachers', the hand-crafted baselines') is the same "
              "`training.cv.LinearHead`: standardised, class-balanced logistic regression, C chosen from "
              f"{report.get('C_grid')} by grouped inner CV on the training fold (window log-likelihood).", ""]
    for task, title in (("mood", "Mood: 4Q (happy, angry, sad, calm)"), ("genre", "Genre: Emotify (classical, electronic, pop, rock)")):
        if task not in report:
            continue
        r = report[task]
        scored = r.get("folds_scored", list(range(N_SPLITS)))
        partial = "" if len(scored) == N_SPLITS else f" **Only folds {', '.join(map(str, scored))} were scored.**"
        lines += [f"## {title}", ""]
        if "kept_from" in r:
            lines += [f"Not re-scored here: this section is the one of `{r['kept_from']['report']}`, generated by "
                      f"`{r['kept_from']['command']}` at git commit `{r['kept_from']['git_commit']}`.", ""]
        lines += [f"{r['n_clips']} clips, {r['n_windows']} windows.{partial}", "",
                  "| method | window acc | window macro-F1 | clip acc | clip macro-F1 | window ECE |", "|---|---|---|---|---|---|"]
        for name, m in r["methods"].items():
            w, c = m.get("window", {}).get("summary", {}), m["clip"]["summary"]
            label = name + (f" ({'+'.join(m['teachers'])})" if "teachers" in m else "")
            lines.append(f"| {label} | {fmt(w, 'accuracy')} | {fmt(w, 'macro_f1')} | {fmt(c, 'accuracy')} | {fmt(c, 'macro_f1')} | {fmt(w, 'ece')} |")
        lines.append("")
        st = r["methods"].get("student_cnn")
        lines += student_markdown(task, r, st) if st else ["(No student scored in this report: teacher rows only.)", ""]
        with_ctx = {n: m["context"] for n, m in r["methods"].items() if "context" in m}
        if with_ctx:
            cols = list(next(iter(with_ctx.values())))
            lines += ["Longer context: accuracy when the probabilities of N consecutive windows are averaged (every run "
                      "of N windows in each test clip, each clip weighing the same; 1 window = 3 s, each further window "
                      "+1.5 s; `clip` = all of them):", "",
                      "| method \\ windows | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
            lines += [f"| {n} | " + " | ".join(f"{c[k]:.3f}" for k in cols) + " |" for n, c in with_ctx.items()]
            lines.append("")
        with_va = {n: m["valence_arousal"] for n, m in r["methods"].items() if "valence_arousal" in m}
        if with_va:
            lines += ["### Valence/arousal signs", "",
                      "The server reports valence/arousal as probability-weighted quadrant centres. How often do "
                      "their signs name the true quadrant, next to how often the label is right? *Calibrated*: the "
                      "zero point of each axis moved to the value that, on the training folds' held-out window "
                      "probabilities (inner grouped CV), makes the signs agree most often with the true quadrants "
                      "(`training.valence_arousal`), then applied to the test fold.", "",
                      "| method | level | label accuracy | signs give the quadrant | calibrated signs give the quadrant | "
                      "zero (valence, arousal) per fold |", "|---|---|---|---|---|---|"]
            for name, v in with_va.items():
                s = v["summary"]
                zeros = ", ".join(f"({f['zero'][0]:+.2f}, {f['zero'][1]:+.2f})" for f in v["folds"])
                for level in ("window", "clip"):
                    lines.append(f"| {name} | {level} | {fmt(s, f'{level}_label_accuracy')} | {fmt(s, f'{level}_signs')} | "
                                 f"{fmt(s, f'{level}_signs_calibrated')} | {zeros if level == 'window' else ''} |")
            lines.append("")
    if report.get("baselines"):
        lines += ["## Non-model baselines (`python -m training baselines`)", "",
                  f"From `{report['baselines_file']}` (the same folds and the same linear head).", "",
                  "| baseline | accuracy | macro-F1 |", "|---|---|---|"]
        for name, s in baseline_rows(report["baselines"]):
            name = name.replace("datasets/", "").replace("/baselines/", ": ").replace("/summary", "").replace("/", ", ")
            lines.append(f"| {name} | {fmt(s, 'accuracy')} | {fmt(s, 'macro_f1')} |")
        lines.append("")
    else:
        lines += ["## Non-model baselines", "", "No baselines JSON was found when this report was made "
                  "(`python -m training baselines --out docs/evaluation/baselines.json`).", ""]
    return "\n".join(lines)


def summarize(report: dict) -> dict:
    """The flat numbers that go into the model metadata, the card and the experiments table."""
    summary = {}
    for task in ("mood", "genre"):
        if task not in report:
            continue
        m = report[task]["methods"]
        for name in ("student_cnn", *TEACHER_ROWS):
            if name not in m:
                continue
            for level in ("window", "clip"):
                s = m[name][level]["summary"]
                for key in ("accuracy", "macro_f1"):
                    summary[f"{task}_{name}_{level}_{key}"] = round(s[f"{key}_mean"], 4)
                    summary[f"{task}_{name}_{level}_{key}_std"] = round(s[f"{key}_std"], 4)
        for name in ("student_cnn", *TEACHER_ROWS):
            va = m.get(name, {}).get("valence_arousal")
            for key, v in (va or {}).get("summary", {}).items():
                summary[f"{task}_{name}_va_{key}"] = round(v, 4)
    return summary


def write_experiment(path: Path, tag: str, description: str, report: dict, task: str) -> None:
    """The record of one tagged run for the experiments table: its command, summary and, for `task` (the first task
    it scored: mood, else genre, so a genre-only experiment is recorded too), which student scored each fold and
    which folds' chains heard their own test clips."""
    st = report[task]["methods"].get("student_cnn", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tag": tag, "description": description, "command": report["command"],
                                "git_commit": report["git_commit"], "task": task, "summary": report["summary"],
                                "folds_scored": report[task]["folds_scored"], "fold_students": st.get("fold_students", {}),
                                "folds_that_heard_their_test_clips": st.get("folds_that_heard_their_test_clips")}, indent=1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", default=None,
                        help="student checkpoint used for every fold without --fold-ckpt; A,B = an ensemble of mood "
                             "students (None: no student rows, only the teachers' and the majority class)")
    parser.add_argument("--fold-ckpt", action="append", default=[], metavar="K=PATH",
                        help="student trained with --exclude-fold K, used for fold K (repeatable; K=A,B for an ensemble)")
    parser.add_argument("--genre-ckpt", default=None,
                        help="a genre branch (export --genre-ckpt): this student scores the genre folds instead of --ckpt")
    parser.add_argument("--genre-fold-ckpt", action="append", default=[], metavar="K=PATH",
                        help="genre branch trained with --exclude-fold K --fold-data <genre data>, for genre fold K")
    parser.add_argument("--genre-fold-ckpts", action="store_true",
                        help="use the --fold-ckpt students for the genre folds too (they left out fold K of the genre data)")
    parser.add_argument("--genre-head", choices=sorted(HEADS), default="linear",
                        help="the student's genre head: linear, or rff (random Fourier features + linear: SVM-like)")
    parser.add_argument("--mood-data", default="4q", help="mood dataset (4q, a manifest CSV or a folder); '' skips mood")
    parser.add_argument("--mood-from-report", default=None, metavar="REPORT",
                        help="do not score mood: take the mood section of this recorded report (with its command), "
                             "e.g. for a model whose mood side export --mood-from kept and whose per-fold mood "
                             "students are gone (None: score mood from --mood-data)")
    parser.add_argument("--genre-data", default="emotify", help="genre dataset; '' skips the genre evaluation")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="report folder (report.json, report.md, PNGs)")
    parser.add_argument("--baselines", default=str(DEFAULT_OUT / "baselines.json"), help="the baselines JSON to show beside")
    parser.add_argument("--no-teacher", action="store_true", help="skip the teacher + LR baselines")
    parser.add_argument("--teacher-tasks", nargs="+", default=["mood", "genre"], help="tasks that get the teacher + LR baselines")
    parser.add_argument("--head-input", choices=("embedding", "distill"), default="embedding",
                        help="what the linear heads are fitted on (see training.heads)")
    parser.add_argument("--C", type=float, default=None,
                        help="fixed logistic regression C (None: chosen per fold by inner grouped CV on the training fold)")
    parser.add_argument("--C-grid", type=float, nargs="+", default=None,
                        help="C candidates of the linear heads' inner CV (None: training.recipe.C_GRID, the one rule; "
                             "another grid is for checking that rule, e.g. whether its lower edge binds)")
    parser.add_argument("--cache", default=None, help="feature cache folder (None: $SENDRETURN_CACHE, else cache/)")
    parser.add_argument("--only-folds", type=int, nargs="+", default=None,
                        help="score only these folds (e.g. while a chain is still running; None: all folds); the "
                             "summary is then over those folds only and the report says which")
    parser.add_argument("--tag", default=None, help="also record this run as OUT/../experiments/TAG.json (for the card; "
                        "None: not recorded)")
    parser.add_argument("--experiments", default=str(DEFAULT_OUT / "experiments"), help="folder of the --tag records")
    parser.add_argument("--description", default="", help="one line saying what this experiment is (with --tag)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch

    from training.cache import cache_dir, resolve_dataset
    from training.teacher import teacher_available

    torch.set_num_threads(2)
    cache = cache_dir(args.cache)
    fold_ckpts = {int(k): v for k, v in (s.split("=", 1) for s in args.fold_ckpt)}
    genre_fold_ckpts = {int(k): v for k, v in (s.split("=", 1) for s in args.genre_fold_ckpt)}
    if args.genre_fold_ckpts:
        genre_fold_ckpts = {**fold_ckpts, **genre_fold_ckpts}
    report: dict = {"command": invocation("evaluate"), "git_commit": git_commit(), "C": args.C,
                    "C_grid": list(args.C_grid or C_GRID),
                    "head_input": args.head_input, "folds": N_SPLITS, "fold_seed": FOLD_SEED}
    rows = {} if args.no_teacher else {n: t for n, t in TEACHER_ROWS.items() if all(teacher_available(x) for x in t)}
    score_mood = args.mood_data and not args.mood_from_report
    tasks = [("mood", args.mood_data, MOODS_4Q, args.ckpt, fold_ckpts, "linear")] if score_mood else []
    if args.genre_data:
        tasks.append(("genre", args.genre_data, GENRES_EMOTIFY, args.genre_ckpt or args.ckpt, genre_fold_ckpts, args.genre_head))
    for task, data, labels, ckpt, fc, head in tasks:
        report[task] = evaluate_task(resolve_dataset(data), labels, ckpt, fc, cache, args.C,
                                     rows if task in args.teacher_tasks else {}, args.head_input, data, head,
                                     va=task == "mood", only_folds=args.only_folds, grid=args.C_grid)
    if args.mood_from_report:
        kept = json.loads(Path(args.mood_from_report).read_text())
        report["mood"] = {**kept["mood"], "kept_from": {"report": args.mood_from_report, "command": kept["command"],
                                                        "git_commit": kept.get("git_commit")}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bl = Path(args.baselines)
    if bl.is_file():
        report["baselines"] = json.loads(bl.read_text())
        report["baselines_file"] = str(bl.relative_to(project_root()) if bl.resolve().is_relative_to(project_root()) else bl)
    for task in ("mood", "genre"):
        if task in report and "student_cnn" in report[task]["methods"]:
            st = report[task]["methods"]["student_cnn"]
            plot_confusion(st["clip"]["pooled"], report[task]["labels"], out / f"{task}_student_clip_confusion.png",
                           f"{task}, student, clip level (pooled folds)")
            plot_confusion(st["window"]["pooled"], report[task]["labels"], out / f"{task}_student_window_confusion.png",
                           f"{task}, student, window level (pooled folds)")
            plot_reliability(st["window"]["pooled"], out / f"{task}_student_window_reliability.png",
                             f"{task}, student, windows: ECE {st['window']['pooled']['ece']:.3f}")
    report["summary"] = summary = summarize(report)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    if args.tag and tasks:
        write_experiment(Path(args.experiments) / f"{args.tag}.json", args.tag, args.description, report, tasks[0][0])
    print(json.dumps(summary, indent=1))
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and PNGs")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

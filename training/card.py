"""The model card (markdown) written beside an exported model, generated from the files that hold the numbers.

Nothing in the card is typed by hand, and nothing is read back out of a sentence: metrics come from the evaluation
report (`training evaluate`), the table of experiments from the per-experiment JSON files that `evaluate --tag`
writes, latency from `training bench --json`, the training facts and commands from the model's own metadata (which
export fills from the checkpoints). Regenerating the card after a new run can therefore never leave a stale number
behind.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.manifest import REPO

EVAL_DIR = REPO / "docs" / "evaluation"
ROBUST_DIR = EVAL_DIR / "robust"  # `training robust`: rows/<model>-<mask>.json per model and band mask
CONDITIONS = ("clean", "lowpass_6k", "noise_7k3", "gain_-6dB", "gain_+6dB", "stream_16k_mono", "stream_48k_stereo")


def _fmt(summary: dict, key: str, prefix: str) -> str:
    m, s = summary.get(f"{prefix}_{key}"), summary.get(f"{prefix}_{key}_std")
    return "-" if m is None else f"{m:.3f} ± {s:.3f}"


def heard_text(heard: list[int] | None) -> str:
    """The folds whose scoring chain heard their own test clips (recorded by `evaluate` as a list)."""
    if heard is None:
        return "not recorded (see what)"
    return ", ".join(map(str, heard)) or "none"


def experiments_table(folder: Path = EVAL_DIR / "experiments", current: str | None = None) -> list[str]:
    """One row per `evaluate --tag` record; `current` (the report's command) marks the row behind this model, and a
    column says which mood folds were scored by a chain that had heard their test audio (optimistic rows)."""
    rows = []
    for f in sorted(folder.glob("*.json")):
        e = json.loads(f.read_text())
        s = e.get("summary", {})
        tag = e.get("tag", f.stem) + (" (this model)" if current and e.get("command") == current else "")
        if len(e.get("folds_scored", range(5))) < 5:
            tag += f" (only folds {', '.join(map(str, e['folds_scored']))})"
        rows.append(
            f"| {tag} | {e.get('description', '')} | {heard_text(e.get('folds_that_heard_their_test_clips'))} | "
            f"{_fmt(s, 'window_accuracy', 'mood_student_cnn')} | "
            f"{_fmt(s, 'clip_accuracy', 'mood_student_cnn')} | {_fmt(s, 'clip_macro_f1', 'mood_student_cnn')} | "
            f"{_fmt(s, 'clip_accuracy', 'genre_student_cnn')} | `{e.get('command', '')}` |"
        )
    if not rows:
        return ["(no experiment files in docs/evaluation/experiments/)"]
    return ["| experiment | what | folds whose test audio the chain heard (mood; genre for genre-only rows; no labels; "
            "optimistic) | mood window acc | "
            "mood clip acc | mood clip macro-F1 | genre clip acc | evaluation command |",
            "|---|---|---|---|---|---|---|---|"] + rows


def genre_limits(branch: dict | None, ceilings: list[dict]) -> list[str]:
    """The genre paragraph of "Known limits": what the genre head is, and how far the teachers get (the best row of
    every `training ceiling` record, e.g. MSD alone and MSD + MTT)."""
    if branch:
        what = ("- Genre is the weak head: a separate small student trained on only 300 Emotify clips (240 per fold); pop "
                "vs rock is its main confusion.")
    else:
        what = ("- Genre is the weak head: it is a linear read-out of an embedding tuned for mood on 4Q audio (the student "
                "never trained on Emotify audio); pop vs rock is its main confusion.")
    lines = [what]
    teacher = [(n, m["clip_accuracy_mean"], c["command"], c.get("file", "ceiling_genre.json")) for c in ceilings
               for n, m in c["methods"].items() if not n.startswith("student")]
    if teacher:
        name, acc, command, file = max(teacher, key=lambda t: t[1])
        md = file.replace(".json", ".md")
        where = (f"({name}; every output layer tried) reaches {acc:.3f} clip accuracy on the same folds, picked after "
                 f"the fact (`{command}`, [`docs/evaluation/{md}`](../docs/evaluation/{md}))")
        lines.append(f"- The small genre student stays below the 0.85 genre target; the best classifier we found on the much "
                     f"heavier musicnn teachers {where}" + ("; a distilled student stays below its teachers." if acc >= 0.85 else
                                                            ": nothing we tried reaches it."))
    student = [(n, m["clip_accuracy_mean"]) for c in ceilings for n, m in c["methods"].items() if n.startswith("student")]
    if student:
        which = student[0][0].split("(", 1)[-1].split(")", 1)[0] if "(" in student[0][0] else "the genre student"
        lines.append(f"- The head is not the limit: on the embedding of the genre students `{which}` (per fold, never "
                     "heard the test fold) " + ", ".join(f"{n.rsplit(', ', 1)[-1]} {a:.3f}" for n, a in student)
                     + " clip accuracy.")
    return lines


SEED_EXPERIMENT = "wise_seed1"  # the shipped recipe re-run with another seed (docs/evaluation/reproduce.md)


def seed_noise(report: dict, folder: Path = EVAL_DIR / "experiments") -> list[str]:
    """The "Known limits" line on seed noise: this model's mood numbers beside the same recipe with another seed,
    read from that experiment's record (absent record: no line)."""
    f = folder / f"{SEED_EXPERIMENT}.json"
    s = report.get("summary", {})
    if not f.is_file() or not {"mood_student_cnn_clip_macro_f1", "mood_student_cnn_window_accuracy"} <= set(s):
        return []
    other = json.loads(f.read_text())["summary"]
    key = "mood_student_cnn"
    return [f"- Seed noise: the same recipe re-run with another seed in both stages (`{SEED_EXPERIMENT}`) gives mood "
            f"window accuracy {other[f'{key}_window_accuracy']:.3f} and clip macro-F1 {other[f'{key}_clip_macro_f1']:.3f}, "
            f"against {s[f'{key}_window_accuracy']:.3f} / {s[f'{key}_clip_macro_f1']:.3f} for this model: differences "
            "of that size between two rows of the experiments table are not evidence either way."]


def honesty(report: dict) -> str:
    """What the students that scored each mood fold had heard of that fold, read from the report (which reads it
    from the checkpoint chains), so the card can never claim more than the evaluation did."""
    heard = report.get("mood", {}).get("methods", {}).get("student_cnn", {}).get("folds_that_heard_their_test_clips")
    text = "- **Honesty of the CV numbers**: no fold's test labels ever reached anything that scored that fold. "
    if heard is None:
        return text + "(What each fold's chain heard is not recorded in this report.)"
    if not heard:
        return text + ("Nor did their audio: every stage of the chain that scores a fold (distillation included) was "
                       "trained without that fold's test clips (see the per-fold table).")
    return text + (f"The distillation stage of fold(s) {', '.join(map(str, heard))} did hear the test clips' *audio* (unlabelled, "
                   "transductive); see the per-fold table for which chain scored each fold and the experiments table "
                   "(`distill_lr` vs `distill_lr_all_audio`) for what hearing the test audio is worth.")


TEACHER_WORDS = {"msd": "musicnn MSD model", "mtt": "musicnn MagnaTagATune model"}
TEACHER_FILES = {"msd": "msd_musicnn.onnx", "mtt": "mtt_musicnn.onnx"}


def valence_arousal_lines(report: dict, info) -> list[str]:
    """The card's valence/arousal paragraph, from the report's held-out folds and the model's own metadata."""
    s = report.get("summary", {})
    key = "mood_student_cnn_va_"
    if f"{key}window_signs_mean" not in s:
        return []
    shipped = info.valence_arousal_zero
    return [
        "- **Valence/arousal** are the probability-weighted quadrant centres. On the held-out folds their signs name "
        f"the true quadrant for {s[f'{key}window_signs_mean']:.3f} of windows and {s[f'{key}clip_signs_mean']:.3f} of "
        f"clips, where the mood label is right for {s[f'{key}window_label_accuracy_mean']:.3f} / "
        f"{s[f'{key}clip_label_accuracy_mean']:.3f}. With each axis' zero point fitted on the training folds only, the "
        f"signs are right for {s[f'{key}window_signs_calibrated_mean']:.3f} / {s[f'{key}clip_signs_calibrated_mean']:.3f}. "
        + (f"This model ships that calibration (metadata `valence_arousal_zero` = ({shipped[0]:+.2f}, {shipped[1]:+.2f}), "
           "fitted on the held-out probabilities of an inner grouped CV over all labelled clips; the runtime applies it)."
           if shipped else "This model does not ship a calibration (it did not make the signs agree better at both levels).")]


METRICS = (("mood", "clip_macro_f1"), ("mood", "window_accuracy"), ("genre", "clip_accuracy"))


def drops(rows: dict) -> dict:
    """Per condition and metric: clean minus that condition (positive = worse), where both were computed."""
    clean = rows.get("clean", {})
    out = {}
    for cond, r in rows.items():
        if cond == "clean":
            continue
        for task, metric in METRICS:
            if task in r and task in clean:
                out.setdefault(cond, {})[metric] = clean[task][metric] - r[task][metric]
    return out


def largest_drop(rows: dict) -> float | None:
    values = [v for d in drops(rows).values() for v in d.values()]
    return max(values) if values else None


def robustness_table(name: str, v: dict) -> list[str]:
    rows, d = v["rows"], drops(v["rows"])

    def cell(cond: str, task: str, metric: str) -> str:
        if task not in rows.get(cond, {}):
            return "not computed"
        val = rows[cond][task][metric]
        return f"{val:.3f}" + (f" ({-d[cond][metric]:+.3f})" if cond in d and metric in d[cond] else "")

    lines = [f"### {name}: {v['model']}, mask {v['mask']}", "", f"`{v['command']}` at `{v['git_commit']}`.", "",
             "| condition | mood clip macro-F1 | mood window acc | sad -> calm | calm -> sad | genre clip acc | genre window acc | windows scored (4Q / Emotify) |",
             "|---|---|---|---|---|---|---|---|"]
    for cond in CONDITIONS:
        if cond not in rows:
            continue
        r = rows[cond]
        sc = f"{r['mood']['sad_as_calm']} | {r['mood']['calm_as_sad']}" if "mood" in r else "- | -"
        gw = f"{r['genre']['window_accuracy']:.3f}" if "genre" in r else "-"
        n = " / ".join(str(r[t]["windows"]) if t in r else "-" for t in ("mood", "genre"))
        lines.append(f"| {cond} | {cell(cond, 'mood', 'clip_macro_f1')} | {cell(cond, 'mood', 'window_accuracy')} | {sc} | "
                     f"{cell(cond, 'genre', 'clip_accuracy')} | {gw} | {n} |")
    ld = largest_drop(rows)
    lines += ["", f"Largest drop from clean: {ld:.3f}." if ld is not None else "", ""]
    return lines


def va_line(name: str, va: dict) -> str:
    v, a = va["valence"], va["arousal"]
    folds = lambda x: " / ".join(f"{r:.2f}" for r in x)  # noqa: E731
    return (f"| {name} | {v['r']:.3f} | {v['ccc']:.3f} | {a['r']:.3f} | {a['ccc']:.3f} | {folds(v['r_folds'])} | "
            f"{folds(a['r_folds'])} |")


def robustness_lines(name: str, mask: str = "none") -> list[str]:
    """The card's robustness table and valence/arousal correlations, from `training robust`'s record of this model."""
    path = ROBUST_DIR / "rows" / f"{name}-{mask}.json"
    if not path.is_file():
        return []
    v = json.loads(path.read_text())
    lines = ["## Robustness and valence/arousal (`docs/evaluation/robust/report.md`)", "",
             "The same folds with the test audio changed (conditions defined in the report): the model's own outputs, "
             "so on 4Q and Emotify, which it was trained on, only the change from the clean row (in brackets) means "
             "something.", ""]
    lines += robustness_table(name, v)[2:]
    plain = ROBUST_DIR / "rows" / f"{name}-none.json"
    if mask != "none" and plain.is_file():
        rows = json.loads(plain.read_text())["rows"]
        d = drops(rows)
        lines += [f"This file is the same graph and heads behind the band mask `{mask}` (the log-mel bands the training "
                  "audio had no content in set to silence). Without the mask, in the same run: largest drop "
                  f"{largest_drop(rows):.3f}; " + "; ".join(f"{c} {-m['clip_accuracy']:+.3f}" for c, m in d.items()
                                                           if "clip_accuracy" in m) + " genre clip accuracy.", ""]
    if "valence_arousal" in v:
        lines += ["Reported valence/arousal against MUSIFEAST-17's listener ratings (356 clips it never heard):", "",
                  "| model | valence r | valence CCC | arousal r | arousal CCC | valence r per fold | arousal r per fold |",
                  "|---|---|---|---|---|---|---|", va_line(name, v["valence_arousal"]), ""]
    return lines


def distill_targets(teachers: list[str]) -> str:
    return ("both teachers' 200-d embeddings and 50 tag logits side by side" if len(teachers) > 1
            else "the teacher's 200-d embedding and 50 tag logits")


def genre_commands(branch: dict | None, mood_commands: list[str]) -> list[str]:
    """The genre student's commands for Reproduce: its own distillation too when it did not start from the mood
    student's."""
    if not branch:
        return []
    init = branch.get("init_command")
    return ([init + "   # the genre student's distillation"] if init and init not in mood_commands else []) + [
        branch["training_command"] + "   # the genre student"]


def write_card(path: Path, info, report: dict, check: dict) -> Path:
    s = report.get("summary", {})
    bench_file = EVAL_DIR / "bench.json"
    bench = json.loads(bench_file.read_text()) if bench_file.is_file() else None
    prov = info.provenance
    facts = prov.get("training", {})
    teachers = prov.get("teachers", ["msd"] if prov.get("net", {}).get("distill_dim") else [])
    teacher = bool(teachers)
    # the list above is the union with the genre student's teachers; the mood student's own are in its facts
    mood_teachers = facts.get("teachers") or prov.get("mood_side", {}).get("teachers") or teachers
    branch = prov.get("genre_branch")
    ensemble = prov.get("mood_ensemble", [])
    mood_commands = [c for m in ensemble for c in (m["init_command"], m["training_command"]) if c] or [
        *([prov["init_command"]] if prov.get("init_command") else []),
        prov.get("training_command", "(training command not recorded)")]
    ceilings = [{**json.loads(f.read_text()), "file": f.name}
                for f in (EVAL_DIR / "ceiling_genre.json", EVAL_DIR / "ceiling_genre_teachers.json") if f.is_file()]
    lines = [
        f"# Model card: {info.name} {info.version}",
        "",
        info.description + ".",
        "",
        "## What it does",
        "",
        f"- Input: log-mel `[batch, {info.frontend.n_mels}, frames]`, musicnn's front end (16 kHz, n_fft 512, hop 256, "
        f"{info.frontend.n_mels} Slaney mels to 8 kHz, power rounded through float16, log10(10000 x + 1)); trained on "
        f"{info.patch_frames}-frame windows ({info.window_seconds:.2f} s), accepts any length (global pooling).",
        "- Outputs: `mood_logits` (happy, angry, sad, calm = Russell quadrants Q1..Q4; valence/arousal = probability-"
        "weighted quadrant centres from the metadata), `genre_logits` (classical, electronic, pop, rock), `embedding`.",
        f"- Network: {prov.get('net', {}).get('channels')} channel CNN, embedding {prov.get('net', {}).get('embedding')}; "
        "linear heads (logistic regression on the embedding, folded into the graph)."
        + (f" Mood is an ensemble of {len(ensemble)} such students (seeds "
           f"{', '.join(str(m['seed']) for m in ensemble)}, the same recipe): each has its own linear head and the "
           "graph averages their mood logits; the `embedding` output is their embeddings concatenated "
           f"({len(ensemble)} x {prov.get('net', {}).get('embedding')})." if ensemble else "")
        + (f" Genre comes from a further student in the same graph ({branch['net'].get('channels')} channels, trained "
           f"on {' + '.join(branch.get('trained_on', []))} audio with the genre labels): the `embedding` output and the "
           "mood are the mood student's" + ("s'." if ensemble else ".") if branch else ""),
        "",
        "## Data",
        "",
        "- **4Q audio emotion dataset** (Panda, Malheiro & Paiva, \"Novel audio features for music emotion recognition\", "
        "IEEE Trans. Affective Computing, 2018): the 676 clips in `../shared/data/moods-4q`, ~30 s each, "
        "one quadrant label per clip, artist groups. Mood head and mood metrics.",
        "- **Emotify** (Aljanaki, Wiering & Veltkamp, Information Processing & Management, 2016): 300 clips, 4 genres. "
        "Genre head and genre metrics.",
    ]
    if teacher:
        lines += [
            f"- **Teacher{'s' if len(teachers) > 1 else ''}**: "
            + " and ".join(f"{TEACHER_WORDS.get(t, t)} (`../shared/models/{TEACHER_FILES.get(t, t)}`)" for t in teachers)
            + " (Pons & Serra, \"musicnn: pre-trained convolutional neural networks for music audio tagging\", ISMIR "
            "2019 LBD), ISC licence. The " + ("mood " if branch else "") + "student first regresses "
            + distill_targets(mood_teachers)
            + " (standardised) on 3 s crops of the 4Q audio, with no labels"
            + (f"; it is then fine-tuned ({facts.get('epochs')} epochs, lr {facts.get('lr')}) with the "
               f"cross-entropy of the labels of {', '.join(facts.get('data', []))} (mood for 4Q, genre for "
               "Emotify) plus the same distillation loss" if facts.get("fine_tuned_from") else "") + "."
            + (" The genre student starts from "
               + ("the same distilled student" if branch.get("init_command") in mood_commands else
                  "a student distilled the same way from " + (
                      "both teachers" if len(branch.get("teachers", [])) > 1
                      else f"the {TEACHER_WORDS.get((branch.get('teachers') or mood_teachers)[0], 'teacher')}"))
               + " and is trained with the distillation loss on "
               f"{' + '.join(branch.get('trained_on', []))} audio plus the cross-entropy of the Emotify genre labels "
               "(its command is under Reproduce)." if branch else ""),
            honesty(report),
        ]
    if facts.get("wise") is not None:
        lines.append(f"- **Weight averaging**: {'each' if ensemble else 'the'} shipped mood student is {1 - facts['wise']:g} x the "
                     f"checkpoint its fine-tune started from + {facts['wise']:g} x the fine-tuned weights (`train --wise`; WiSE-FT, Wortsman et al., "
                     "CVPR 2022): the average keeps more of what the start had learnt than the fine-tune alone (compare the "
                     "fine-tune alone, `shipped_strict_cv`, and the distilled student alone, `distill_strict_lr`, in the "
                     "experiments table).")
    lines += [
        "",
        "Both datasets are research data distributed by their authors; the audio is not redistributed here. The "
        "model weights are the project's (MIT)" + ("; as a derivative of musicnn the ISC notice in "
                                                  "`msd_musicnn.LICENSE.md` applies." if teacher else "."),
        "",
        "## Metrics (artist-grouped 5-fold CV on all of 4Q; grouped 5-fold CV on Emotify)",
        "",
    ]
    if not s:
        lines += ["**Interim model: not evaluated yet** (exported without an evaluation report; the numbers arrive with "
                  "`python -m training evaluate` and a re-export).", ""]
    lines += [
        "| | window accuracy | window macro-F1 | clip accuracy | clip macro-F1 |",
        "|---|---|---|---|---|",
    ]
    for task, name, label in (("mood", "student_cnn", "**this model, mood (4Q)**"),
                              ("mood", "teacher_lr", "musicnn MSD teacher + LR, mood (baseline, ~30 ms/window)"),
                              ("mood", "teachers_lr", "musicnn MSD + MTT teachers + LR, mood (~60 ms/window)"),
                              ("genre", "student_cnn", "**this model, genre (Emotify)**"),
                              ("genre", "teacher_lr", "musicnn MSD teacher + LR, genre"),
                              ("genre", "teachers_lr", "musicnn MSD + MTT teachers + LR, genre")):
        p = f"{task}_{name}"
        if f"{p}_window_accuracy" in s:
            lines.append(f"| {label} | {_fmt(s, 'window_accuracy', p)} | {_fmt(s, 'window_macro_f1', p)} | "
                         f"{_fmt(s, 'clip_accuracy', p)} | {_fmt(s, 'clip_macro_f1', p)} |")
    maj = report.get("mood", {}).get("methods", {}).get("majority")
    if maj:
        lines.append(f"| majority class, mood | {maj['window']['summary']['accuracy_mean']:.3f} | "
                     f"{maj['window']['summary']['macro_f1_mean']:.3f} | {maj['clip']['summary']['accuracy_mean']:.3f} | "
                     f"{maj['clip']['summary']['macro_f1_mean']:.3f} |")
    checks = [("mood clip macro-F1 >= 0.72", s.get("mood_student_cnn_clip_macro_f1"), 0.72),
              ("mood window accuracy >= 0.66", s.get("mood_student_cnn_window_accuracy"), 0.66),
              ("genre clip accuracy >= 0.85", s.get("genre_student_cnn_clip_accuracy"), 0.85)]
    if s:
        lines += ["", "Targets: " + "; ".join(f"{name}: {'met' if v is not None and v >= t else 'NOT met'} "
                                             f"({'-' if v is None else f'{v:.3f}'})" for name, v, t in checks) + "."]
    lines += ["", *valence_arousal_lines(report, info)]
    lines += ["", "Full report with the confusion matrices, per-class numbers, calibration and the non-model baselines: "
              "[`docs/evaluation/report.md`](../docs/evaluation/report.md).", ""]
    if "mood" in report:
        st = report["mood"]["methods"]["student_cnn"]
        fs = st.get("fold_students", {})
        lines += ["Per fold (mood, this model's recipe; which student scored the fold):", "",
                  "| fold | student | window acc | clip acc | clip macro-F1 |", "|---|---|---|---|---|"]
        for k, (w, c) in enumerate(zip(st["window"]["folds"], st["clip"]["folds"])):
            lines.append(f"| {k} | {fs.get(str(k), '')} | {w['accuracy']:.3f} | {c['accuracy']:.3f} | {c['macro_f1']:.3f} |")
        lines.append("")
    if bench:
        lat = ", ".join(f"batch {b}: {r['median']:.3f} ms/window" for b, r in bench["ms_per_window"].items())
        lines += [f"Latency (onnxruntime, {bench['threads']} thread, median of {bench['runs']} runs): {lat}."]
        if bench.get("compare"):
            c = bench["compare"]
            lines += [f"Side by side in the same run (alternating calls, batch 1): {c['median_ms_per_window'][0]:.3f} ms vs "
                      f"{c['median_ms_per_window'][1]:.3f} ms per window for `{Path(c['models'][1]).name}`, a ratio of "
                      f"{c['ratio']:.2f}. The shared 2-core machine is noisy (a model's median moves between runs), so compare "
                      "ratios measured side by side, not single medians."]
        if bench.get("multiply_adds"):
            m = bench["multiply_adds"]
            other = (f"; {bench['compare']['multiply_adds'][1] / 1e6:.1f} M for `{Path(bench['compare']['models'][1]).name}`"
                     if bench.get("compare", {}).get("multiply_adds") else "")
            lines += [f"Multiply-adds per window (from the graph's shapes, so not moved by the machine's load): "
                      f"{m['total'] / 1e6:.1f} M (mood side {m['mood_logits'] / 1e6:.1f} M"
                      + (f", genre side {m['genre_logits'] / 1e6:.1f} M" if "genre_logits" in m else "") + f"){other}."]
        lines.append("")
    lines += robustness_lines(info.name, prov.get("band_mask", {}).get("name", "none"))
    lines += ["## Experiments (what was tried and what it gave)", ""] + experiments_table(current=report.get("command")) + [""]
    lines += [
        "## Reproduce",
        "",
        "Every command, including the per-fold runs behind the CV numbers: "
        "[`docs/evaluation/reproduce.md`](../docs/evaluation/reproduce.md). The shipped model:",
        "",
        "```sh",
        "python -m training features 4q emotify --teacher   # log-mels + teacher outputs, cached under cache/",
        *mood_commands,
        *genre_commands(branch, mood_commands),
        *([report["mood"]["kept_from"]["command"] + "   # the mood numbers (kept from that report)"]
          if "kept_from" in report.get("mood", {}) else []),
        report.get("command", "(evaluation command not recorded)"),
        prov.get("export_command", ""),
        "python -m training bench --json docs/evaluation/bench.json",
        "```",
        "",
        (f"Training: {facts.get('epochs')} epochs max, batch {facts.get('batch')}, AdamW lr {facts.get('lr')} "
         f"warm-up + cosine, seed {facts.get('seed')}, early stopping on a 10 % artist-disjoint validation split "
         f"(best epoch {facts.get('best_epoch')})." if facts else
         "Training: the commands above are exact (this model was exported before its metadata recorded the training "
         "facts as data).") + f" Git commit at export: `{prov.get('git_commit')}`.",
        "",
        f"Export check: max |onnxruntime - torch| = {check.get('max_abs_diff_vs_torch', float('nan')):.1e} on random "
        f"windows of {info.patch_frames} and 40 frames; `sendreturn_mood.model.contract.MoodModel` loads it.",
        "",
        "## Known limits",
        "",
        "- Sad vs calm is the main confusion (the low-arousal half of the circle, where only valence differs); see the "
        "confusion matrix in the report. Happy vs angry is easier because timbre differs more.",
        "- 4Q labels are perceived moods of commercial ~30 s previews from AllMusic tags; Western popular music dominates. "
        "Emotify genres are only four. Expect lower accuracy on other styles, on live input with room noise, and on "
        "speech or silence (there is no 'no music' class).",
        "- A single 3 s window is much noisier than a whole clip: the server's smoothing matters.",
        *seed_noise(report),
        *genre_limits(branch, ceilings),
        "",
        "## Citations",
        "",
    ] + [f"- {c}" for c in prov.get("citations", [])] + [""]
    path.write_text("\n".join(lines))
    return path

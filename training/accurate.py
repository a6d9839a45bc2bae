"""Build the "accurate" variant: both musicnn teachers plus mood and genre heads on their outputs, as one ONNX file.

Tens of times the default model's cost per window (so not the default), but the most accurate thing we have: the
teachers' features with the heads the plan fixed (`docs/evaluation/plans/accurate_two_teachers.md`,
`training.recipe.ACCURATE_HEADS`): the spine's linear head for mood, an RBF SVM for genre (written into the graph as
ONNX ops by `training.svm`, computing exactly scikit-learn's decision values). The graph is the MSD and the
MagnaTagATune musicnn graphs, unchanged and prefixed (`msd/`, `mtt/`), fed by one transpose of the runtime's
`logmel` input (musicnn wants time first), with the heads behind the concatenation of both teachers' embedding and tag
logits; `embedding` is the MSD embedding (what the track-change detector compares, as in 1.0.0).

Two steps, both here so that the card is generated from data:
- `--evaluate`: the plan's rows (the current variant, the candidate and the heads reported for information) through
  the spine's grouped CV on the cached teacher outputs, per-fold fits on the training folds only; writes
  `docs/evaluation/accurate/report.{json,md}` with the plan's decision computed from the numbers;
- the build: the heads fitted on all labelled windows, composed, checked (the whole graph against teacher + heads on
  real windows; the head subgraphs against scikit-learn on every cached window), metadata written, card written from
  the metadata, that report and the side-by-side bench JSON (`--card-only` rewrites just the card).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sendreturn_mood.model.contract import GENRE_OUTPUT, MOOD_OUTPUT
from training.manifest import GENRES_EMOTIFY, MOOD_COORDINATES, MOODS_4Q, REPO
from training.recipe import ACCURATE_HEADS, ACCURATE_MAX_MB, ACCURATE_TEACHERS, SVM_C
from training.card import robustness_lines
from training.svm import make_head

DEFAULT_OUT = REPO / "exported_models" / "mood_musicnn.onnx"
REPORT_DIR = REPO / "docs" / "evaluation" / "accurate"
VERSION = "1.1.0"
OLD_COMMIT = "5a252b6"  # the last commit that shipped 1.0.0 (the side-by-side bench's reference)
VERIFY_ATOL = 1e-3
FLIP_MARGIN = 1e-3  # a pairwise SVM decision this close to 0 may flip its vote under float32 rounding
CHECK_CLIPS = 2  # clips per dataset run through the whole graph at export
TASKS = {"mood": ("4q", MOODS_4Q, MOOD_OUTPUT), "genre": ("emotify", GENRES_EMOTIFY, GENRE_OUTPUT)}
PARTS = ("embedding", "logits")


@dataclass(frozen=True)
class Row:
    """One evaluated configuration: which teachers' features, which head, and its role in the plan's rule."""

    task: str
    teachers: tuple[str, ...]
    head: str  # linear | svm | rff
    role: str  # current | candidate | information

    @property
    def name(self) -> str:
        return f"{self.task}: {self.role} ({'+'.join(self.teachers)}, {self.head})"


def plan_rows() -> list[Row]:
    """The rows of the plan: the current variant (1.0.0), the candidate, and the other heads on the candidate's features."""
    rows = []
    for task in TASKS:
        rows.append(Row(task, ("msd",), "linear", "current"))
        rows.append(Row(task, ACCURATE_TEACHERS, ACCURATE_HEADS[task], "candidate"))
        others = ("svm",) if task == "mood" else ("linear", "rff")
        rows += [Row(task, ACCURATE_TEACHERS, h, "information") for h in others if h != ACCURATE_HEADS[task]]
    return rows


def task_data(task: str, cache, teachers: tuple[str, ...]):
    """(items, window features [n_windows, d], clip index per window, clip labels, clip groups) for a task."""
    from training.cache import resolve_dataset
    from training.cv import groups_of
    from training.teacher import clip_teacher_features

    data, labels, _ = TASKS[task]
    items = resolve_dataset(data)
    per_clip = clip_teacher_features(items, cache, teachers, PARTS)  # one grid: teachers side by side per clip
    clip_idx = np.concatenate([np.full(len(x), i) for i, x in enumerate(per_clip)])
    X = np.concatenate(per_clip)
    y = np.array([labels.index(it.label) for it in items])
    return items, X, clip_idx, y, np.array(groups_of(items))


def evaluate(cache) -> dict:
    """Every plan row through `training.cv.grouped_cv` on the same folds; the plan's decision from the numbers."""
    from training.commandline import git_commit
    from training.cv import dataset_folds, grouped_cv

    report = {"command": "python -m training.accurate " + " ".join(sys.argv[1:]), "git_commit": git_commit(),
              "plan": "docs/evaluation/plans/accurate_two_teachers.md", "svm_C": SVM_C, "rows": {}}
    loaded: dict = {}
    for row in plan_rows():
        t0 = time.time()
        if (row.task, row.teachers) not in loaded:
            loaded[row.task, row.teachers] = task_data(row.task, cache, row.teachers)
        items, X, clip_idx, y, groups = loaded[row.task, row.teachers]
        labels = TASKS[row.task][1]
        res = grouped_cv(X, clip_idx, y, groups, labels, dataset_folds(items),
                         lambda: make_head(row.head, len(labels))).report
        entry = {"task": row.task, "teachers": list(row.teachers), "head": row.head, "role": row.role,
                 "dataset": TASKS[row.task][0], "n_clips": len(items), "n_windows": int(len(X)), "features": int(X.shape[1])}
        for level in ("window", "clip"):
            entry[level] = {"summary": res[level]["summary"], "folds": res[level]["folds"],
                            "confusion": res[level]["pooled"]["confusion"]}
        if "C_per_fold" in res:
            entry["C_per_fold"] = res["C_per_fold"]
        entry["seconds"] = round(time.time() - t0, 1)
        report["rows"][row.name] = entry
        print(f"{row.name}: window acc {entry['window']['summary']['accuracy_mean']:.3f}, clip acc "
              f"{entry['clip']['summary']['accuracy_mean']:.3f}, clip macro-F1 {entry['clip']['summary']['macro_f1_mean']:.3f} "
              f"({entry['seconds']:.0f} s)", file=sys.stderr)
    report["decision"] = decide(report)
    return report


def role_row(report: dict, task: str, role: str) -> dict:
    return next(r for r in report["rows"].values() if r["task"] == task and r["role"] == role)


def decide(report: dict) -> dict:
    """The plan's rule: genre clip accuracy higher, mood clip macro-F1 and window accuracy not lower (means over folds)."""
    conditions = {}
    for label, task, level, key, strict in (("genre clip accuracy higher", "genre", "clip", "accuracy", True),
                                            ("mood clip macro-F1 not lower", "mood", "clip", "macro_f1", False),
                                            ("mood window accuracy not lower", "mood", "window", "accuracy", False)):
        cand = role_row(report, task, "candidate")[level]["summary"][f"{key}_mean"]
        cur = role_row(report, task, "current")[level]["summary"][f"{key}_mean"]
        conditions[label] = {"candidate": cand, "current": cur, "holds": bool(cand > cur if strict else cand >= cur)}
    return {"conditions": conditions, "ships": all(c["holds"] for c in conditions.values())}


def report_markdown(report: dict) -> str:
    def f(s: dict, key: str) -> str:
        return f"{s[f'{key}_mean']:.3f} ± {s[f'{key}_std']:.3f}"

    lines = ["# The accurate variant: current vs candidate under the spine", "",
             f"Generated by `{report['command']}` at git commit `{report['git_commit']}`; the plan and its rule: "
             f"`{report['plan']}`. Artist-grouped 5-fold CV (`training.cv.dataset_folds`, `grouped_cv`), every head "
             "fitted on the training folds' windows only; window = one 3 s window, clip = window probabilities "
             "averaged. Mean ± std over folds.", "",
             "| row | windows, features | window acc | window macro-F1 | window ECE | clip acc | clip macro-F1 | per-fold clip acc |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in report["rows"].items():
        w, c = r["window"]["summary"], r["clip"]["summary"]
        folds = " / ".join(f"{x['accuracy']:.3f}" for x in r["clip"]["folds"])
        lines.append(f"| {name} | {r['n_windows']}, {r['features']} | {f(w, 'accuracy')} | {f(w, 'macro_f1')} | "
                     f"{f(w, 'ece')} | {f(c, 'accuracy')} | {f(c, 'macro_f1')} | {folds} |")
    d = report["decision"]
    lines += ["", "Heads: linear = `training.cv.LinearHead` (C by grouped inner CV on the training folds); svm = "
              f"`training.svm.SoftmaxSVC` (RBF, C = {report['svm_C']}, softmax of scikit-learn's ovr decision values); "
              "rff = `training.cv.RandomFeatureHead`. Information rows do not enter the rule. Window ECE: expected calibration "
              "error of the window probabilities (the SVM's softmax of decision values is a ranking, not calibrated).", "",
              "## The plan's rule", "", "| condition | candidate | current | holds |", "|---|---|---|---|"]
    for label, c in d["conditions"].items():
        lines.append(f"| {label} | {c['candidate']:.4f} | {c['current']:.4f} | {'yes' if c['holds'] else 'no'} |")
    lines += ["", f"**The candidate {'replaces' if d['ships'] else 'does not replace'} the current variant.**", ""]
    return "\n".join(lines)


def teacher_graph(name: str, prefix: str, feed: str):
    """A teacher's graph with every name prefixed and its input fed by `feed` (an Identity node)."""
    import onnx
    from onnx import compose, helper

    from training.teacher import teacher_model

    m = compose.add_prefix(onnx.load(str(teacher_model(name).path)), prefix)
    g = m.graph
    node = helper.make_node("Identity", [feed], [g.input[0].name], name=f"{prefix}input")
    return [node, *g.node], list(g.initializer), list(g.value_info), list(m.opset_import)


def compose(teachers: tuple[str, ...], head_nodes: list, head_inits: list, outputs: dict[str, int], out: Path) -> None:
    """Both teachers (prefixed `<name>/`) on one transposed `logmel`, their embedding + logits concatenated into
    `head_features`, then the heads' nodes; outputs `outputs` (name -> width) and `embedding` (the first teacher's)."""
    import onnx
    from onnx import helper

    nodes = [helper.make_node("Transpose", ["logmel"], ["logmel_time_first"], perm=[0, 2, 1], name="to_time_first")]
    inits, infos, opsets = [], [], {}
    for t in teachers:
        n, i, v, o = teacher_graph(t, f"{t}/", "logmel_time_first")
        nodes += n
        inits += i
        infos += v
        for op in o:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    features = [f"{t}/{p}:0" for t in teachers for p in PARTS]
    nodes.append(helper.make_node("Concat", features, ["head_features"], axis=1, name="head_concat"))
    nodes += head_nodes
    nodes.append(helper.make_node("Identity", [f"{teachers[0]}/embedding:0"], ["embedding"], name="embedding_out"))
    logmel = helper.make_tensor_value_info("logmel", onnx.TensorProto.FLOAT, ["batch", 96, "frames"])
    outs = [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, ["batch", w]) for k, w in outputs.items()]
    outs.append(helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", 200]))
    graph = helper.make_graph(nodes, "mood_musicnn", [logmel], outs, [*inits, *head_inits], value_info=infos)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                          producer_name="sendreturn-mood training.accurate")
    m.ir_version = 8
    onnx.checker.check_model(m)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out))


def head_parts(kind: str, head, name: str, n_classes: int):
    """(nodes, initializers, reference function) of a fitted head reading `head_features` into `name`."""
    from onnx import helper, numpy_helper

    from training.svm import onnx_head, svm_parts

    if kind == "linear":
        W, b = head.weights[0]
        inits = [numpy_helper.from_array(W.astype(np.float32), f"{name}/W"),
                 numpy_helper.from_array(b.astype(np.float32), f"{name}/b")]
        node = helper.make_node("Gemm", ["head_features", f"{name}/W", f"{name}/b"], [name], transB=1, name=f"{name}/head")
        return [node], inits, lambda X: X.astype(np.float64) @ W.T + b
    if kind == "svm":
        svc = head.estimator
        nodes, inits = onnx_head(svm_parts(svc), "head_features", name, prefix=f"{name}/svm")
        return nodes, inits, svc.decision_function
    raise ValueError(f"no ONNX export for head {kind!r} (the plan's fallback rff head would need one)")


def head_record(kind: str, head) -> dict:
    if kind == "linear":
        return {"head": "linear (LinearHead)", "C": head.record()}
    svc = head.estimator.model[-1]
    return {"head": f"RBF SVM (SoftmaxSVC), C = {svc.C}", "gamma": float(svc._gamma),
            "support_vectors": int(len(svc.support_vectors_)), "per_class": [int(n) for n in svc.n_support_]}


def check_heads(head_nodes, head_inits, outputs: dict[str, int], width: int, refs: dict, data: dict) -> dict:
    """The head subgraph alone (input `head_features`) against each head's reference on every cached window."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from training.svm import pairwise_decisions, svm_parts

    g = helper.make_graph(head_nodes, "heads", [helper.make_tensor_value_info("head_features", onnx.TensorProto.FLOAT, ["b", width])],
                          [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, ["b", w]) for k, w in outputs.items()], head_inits)
    sess = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    result = {}
    for out_name, (kind, head, ref) in refs.items():
        diffs, near, flips, n = [], 0, 0, 0
        for X in data.values():
            got = np.concatenate([sess.run([out_name], {"head_features": X[i : i + 512]})[0] for i in range(0, len(X), 512)])
            want = ref(X)
            d = np.abs(got - want).max(axis=1)
            close = np.zeros(len(X), bool)
            if kind == "svm":
                close = np.abs(pairwise_decisions(svm_parts(head.estimator), X)).min(axis=1) < FLIP_MARGIN
            near += int(close.sum())
            flips += int(((d > VERIFY_ATOL) & close).sum())
            diffs.append(d[~close])
            n += len(X)
        result[out_name] = {"windows": n, "max_abs_diff": float(np.concatenate(diffs).max()),
                            "windows_near_a_tie": near, "of_which_differ": flips}
    return result


def check_graph(out: Path, refs: dict, cache) -> dict:
    """The whole graph on real windows of the first clips of each dataset against the cached teacher outputs + heads."""
    from training.cache import clip_logmel, resolve_dataset
    from training.recipe import FRONTEND
    from training.teacher import cut_patches, dataset_teacher_outputs, teacher_features

    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    diffs = {k: 0.0 for k in (*refs, "embedding")}
    n = 0
    for task in TASKS:
        items = resolve_dataset(TASKS[task][0])[:CHECK_CLIPS]
        X = teacher_features(items, cache, ACCURATE_TEACHERS, PARTS)
        outs = dataset_teacher_outputs(items, cache, progress=False)
        mel = np.concatenate([cut_patches(clip_logmel(it.file, FRONTEND, cache), o["starts"]) for it, o in zip(items, outs)])
        got = dict(zip([*refs, "embedding"], sess.run([*refs, "embedding"], {"logmel": mel})))
        for k, (_, _, ref) in refs.items():
            diffs[k] = max(diffs[k], float(np.abs(got[k] - ref(X)).max()))
        diffs["embedding"] = max(diffs["embedding"], float(np.abs(got["embedding"] - np.concatenate([o["embedding"] for o in outs])).max()))
        n += len(mel)
    return {"windows": n, "max_abs_diff": diffs}


def write_card(path: Path, info, report: dict, bench: dict | None, default_bench: dict | None = None) -> Path:
    """The card, from the model's metadata, the evaluation report (`--evaluate`) and the side-by-side bench JSONs
    (against the variant it replaces, and against the default model)."""
    prov = info.provenance

    def row(task: str, role: str) -> str:
        r = role_row(report, task, role)
        w, c = r["window"]["summary"], r["clip"]["summary"]
        return (f"| {TASKS[task][0]} ({task}), {role} ({'+'.join(r['teachers'])}, {r['head']}) | "
                f"{w['accuracy_mean']:.3f} ± {w['accuracy_std']:.3f} | {w['macro_f1_mean']:.3f} | {w['ece_mean']:.3f} | "
                f"{c['accuracy_mean']:.3f} ± {c['accuracy_std']:.3f} | {c['macro_f1_mean']:.3f} ± {c['macro_f1_std']:.3f} | "
                + " / ".join(f"{x['accuracy']:.3f}" for x in r["clip"]["folds"]) + " |")

    if bench and "compare" in bench:
        c = bench["compare"]
        cost = (f"Cost, timed side by side with 1.0.0 (alternating calls, batch 1, one thread, median of {c['runs']}): "
                f"{c['median_ms_per_window'][0]:.1f} ms vs {c['median_ms_per_window'][1]:.1f} ms per window, ratio "
                f"{c['ratio']:.2f}; multiply-adds per window {c['multiply_adds'][0] / 1e6:.0f} M vs "
                f"{c['multiply_adds'][1] / 1e6:.0f} M (`docs/evaluation/accurate/bench.json`, command below).")
    else:
        cost = "Cost: not measured yet (`python -m training bench exported_models/mood_musicnn.onnx --compare OLD.onnx`)."
    if default_bench and "compare" in default_bench:
        c = default_bench["compare"]
        cost += (f" Side by side with the default model ({Path(c['models'][1]).name}): {c['median_ms_per_window'][0]:.1f} ms "
                 f"vs {c['median_ms_per_window'][1]:.2f} ms, ratio {c['ratio']:.0f} (`{default_bench['command']}`).")
    heads = prov.get("heads", {})
    ver = prov.get("verification", {})
    d = report["decision"]
    lines = [
        f"# Model card: {info.name} {info.version} (accurate variant)", "",
        info.description + ". Not the default: `serve --model exported_models/mood_musicnn.onnx` to use it.", "",
        "- Backbones: the two musicnn models, MSD and MagnaTagATune (J. Pons and X. Serra, \"musicnn: pre-trained "
        "convolutional neural networks for music audio tagging\", ISMIR 2019 LBD), unchanged; **ISC licence, notice in "
        "`msd_musicnn.LICENSE.md` beside this file** (Copyright (c) Music Technology Group, Universitat Pompeu Fabra "
        "2019; the same notice covers both models of the `musicnn` wheel).",
        f"- Head features per 3 s window: each teacher's 200-d embedding and 50 tag logits, {heads.get('features')} values.",
        f"- Mood head ({heads.get('mood_logits', {}).get('head')}, C = {heads.get('mood_logits', {}).get('C')}), fitted on "
        f"all {heads.get('mood_logits', {}).get('clips')} 4Q clips ({heads.get('mood_logits', {}).get('windows')} windows).",
        f"- Genre head ({heads.get('genre_logits', {}).get('head')}, gamma {heads.get('genre_logits', {}).get('gamma', 0):.2e}, "
        f"{heads.get('genre_logits', {}).get('support_vectors')} support vectors), fitted on all "
        f"{heads.get('genre_logits', {}).get('clips')} Emotify clips ({heads.get('genre_logits', {}).get('windows')} windows). "
        "`genre_logits` are scikit-learn's one-vs-rest decision values (one-vs-one votes + transformed confidences), "
        "computed in the graph; the runtime's softmax over them is what was evaluated. Not calibrated (no temperature "
        "was fitted): a window's genre probabilities are a ranking, not frequencies (a class that wins all its pairwise "
        "votes gets well under 1), hence the higher window ECE below.",
        "- `embedding`: the MSD teacher's embedding (what the track-change detector compares).",
        "- Data: 4Q (Panda, Malheiro & Paiva, IEEE Trans. Affective Computing, 2018) and Emotify (Aljanaki, Wiering & "
        "Veltkamp, Information Processing & Management, 2016); research use, audio not redistributed.",
        f"- Front end: the same as mood_cnn (musicnn's recipe, float16-rounded mel power); {info.patch_frames}-frame windows.",
        f"- File size: {prov.get('file_mb', 0):.1f} MB.",
        "", "## Metrics (artist-grouped 5-fold CV, heads refitted per fold on the training folds; "
        "`docs/evaluation/accurate/report.md`)", "",
        "| task, row | window acc | window macro-F1 | window ECE | clip acc | clip macro-F1 | per-fold clip acc |",
        "|---|---|---|---|---|---|---|",
        row("mood", "candidate"), row("genre", "candidate"), row("mood", "current"), row("genre", "current"), "",
        f"*candidate* is this model; *current* is 1.0.0 (MSD only, linear heads), scored in the same run. The plan "
        f"(`{report['plan']}`, fixed before the numbers) lets this model replace 1.0.0 only if genre clip accuracy is "
        "higher and mood clip macro-F1 and window accuracy are not lower: "
        + "; ".join(f"{k}: {v['candidate']:.3f} vs {v['current']:.3f} ({'yes' if v['holds'] else 'no'})"
                    for k, v in d["conditions"].items())
        + ". The other heads measured on the same features are in the report.", "", cost, "",
        "## Reproduce", "", "```sh", "python -m training features 4q emotify --teacher",
        "python -m training features 4q emotify --teacher --teachers mtt",
        *dict.fromkeys([report["command"], prov.get("export_command", "")]),
        *([f"git show {OLD_COMMIT}:exported_models/mood_musicnn.onnx > {Path(bench['compare']['models'][1])}   # 1.0.0 as shipped",
           bench["command"], "python -m training.accurate --card-only   # this card again, with that bench run"]
          if bench and "compare" in bench and "command" in bench else []),
        "```", "",
        "`--evaluate` scores the plan's rows under the grouped CV (`docs/evaluation/accurate/report.json`), then "
        "fits the heads on all labelled windows and builds, checks and describes the file; without it the report is "
        "read.", "",
        f"Check at export: the whole graph against the cached teacher outputs + heads on {ver.get('graph', {}).get('windows')} "
        "real windows, max abs difference "
        + ", ".join(f"{k} {v:.1e}" for k, v in ver.get("graph", {}).get("max_abs_diff", {}).items())
        + "; the head subgraphs against scikit-learn / numpy on every cached window: "
        + "; ".join(f"{k} {v['max_abs_diff']:.1e} over {v['windows']} windows ({v['windows_near_a_tie']} within "
                    f"{FLIP_MARGIN:g} of a pairwise tie, {v['of_which_differ']} of them differing)"
                    for k, v in ver.get("heads", {}).items())
        + "; the runtime's `MoodModel` loads it and accepts a 40-frame window.", "",
        *robustness_lines(info.name, prov.get("band_mask", {}).get("name", "none")),
        "## Known limits", "", "Same as mood_cnn: sad vs calm is the main confusion; pop vs rock for genres; "
        "4Q/Emotify are Western commercial music; there is no 'no music' class.", "",
    ]
    path.write_text("\n".join(lines))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="ONNX file to write")
    parser.add_argument("--evaluate", action="store_true",
                        help="first run the plan's rows through the grouped CV and write --report (else read it)")
    parser.add_argument("--report", default=str(REPORT_DIR / "report.json"),
                        help="the evaluation report (JSON; markdown beside it) the decision and the card read")
    parser.add_argument("--bench", default=str(REPORT_DIR / "bench.json"),
                        help="side-by-side bench JSON the card quotes (`python -m training bench ... --json`), if present")
    parser.add_argument("--bench-default", default=str(REPORT_DIR / "bench_vs_mood_cnn.json"),
                        help="side-by-side bench JSON against the default model, quoted in the card if present")
    parser.add_argument("--card-only", action="store_true", help="only rewrite the card of the existing --out")
    parser.add_argument("--force", action="store_true", help="build even if the plan's rule says the candidate loses")
    parser.add_argument("--cache", default=None, help="feature cache folder (None: $SENDRETURN_CACHE, else cache/)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from sendreturn_mood.model.contract import ModelInfo, MoodLabel, MoodModel, write_metadata
    from training.cache import cache_dir
    from training.commandline import git_commit
    from training.recipe import FRONTEND, PATCH_FRAMES
    from training.teacher import TEACHER_LICENSE, teacher_model

    cache = cache_dir(args.cache)
    out, report_path, bench_path = Path(args.out), Path(args.report), Path(args.bench)
    if args.evaluate:
        report = evaluate(cache)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=1))
        report_path.with_suffix(".md").write_text(report_markdown(report))
        print(report_markdown(report))
    report = json.loads(report_path.read_text())
    bench = json.loads(bench_path.read_text()) if bench_path.is_file() else None
    default_bench = json.loads(Path(args.bench_default).read_text()) if Path(args.bench_default).is_file() else None
    if args.card_only:
        write_card(out.with_suffix(".md"), MoodModel(out).info, report, bench, default_bench)
        print(f"{out.with_suffix('.md')} rewritten")
        return 0
    if not report["decision"]["ships"] and not args.force:
        raise SystemExit(f"the plan's rule says the candidate does not replace the current variant ({report_path}); "
                         "not building it (--force builds it anyway)")
    refs, head_nodes, head_inits, outputs, records, data = {}, [], [], {}, {}, {}
    for task, (dataset, labels, out_name) in TASKS.items():
        items, X, clip_idx, y, groups = task_data(task, cache, ACCURATE_TEACHERS)
        kind = ACCURATE_HEADS[task]
        head = make_head(kind, len(labels)).fit([X], y[clip_idx], groups[clip_idx])
        nodes, inits, ref = head_parts(kind, head, out_name, len(labels))
        head_nodes += nodes
        head_inits += inits
        outputs[out_name] = len(labels)
        refs[out_name] = (kind, head, ref)
        records[out_name] = {**head_record(kind, head), "clips": len(items), "windows": int(len(X))}
        data[task] = X
    width = int(next(iter(data.values())).shape[1])
    compose(ACCURATE_TEACHERS, head_nodes, head_inits, outputs, out)
    size_mb = out.stat().st_size / 1e6
    if size_mb > ACCURATE_MAX_MB:
        raise SystemExit(f"{out}: {size_mb:.1f} MB, above the plan's {ACCURATE_MAX_MB} MB: its fallback genre head applies")
    verification = {"heads": check_heads(head_nodes, head_inits, outputs, width, refs, data),
                    "graph": check_graph(out, refs, cache)}
    bad = [k for k, v in verification["heads"].items() if v["max_abs_diff"] > VERIFY_ATOL]
    bad += [k for k, v in verification["graph"]["max_abs_diff"].items() if v > VERIFY_ATOL]
    if bad:
        raise RuntimeError(f"{out}: the graph differs from teacher + heads beyond {VERIFY_ATOL}: {bad} ({verification})")
    metrics = {}
    for task in TASKS:
        r = role_row(report, task, "candidate")
        for level in ("window", "clip"):
            for key in ("accuracy", "macro_f1"):
                metrics[f"{task}_model_{level}_{key}"] = round(r[level]["summary"][f"{key}_mean"], 4)
                metrics[f"{task}_model_{level}_{key}_std"] = round(r[level]["summary"][f"{key}_std"], 4)
    info = ModelInfo(
        name="mood_musicnn", version=VERSION,
        description="musicnn MSD + MagnaTagATune teachers; a logistic-regression mood head and an RBF-SVM genre head "
        "on their embeddings and tag logits (accurate variant, tens of times the default model's cost)",
        frontend=FRONTEND, patch_frames=PATCH_FRAMES,
        moods=tuple(MoodLabel(m, *MOOD_COORDINATES[m]) for m in MOODS_4Q), genres=GENRES_EMOTIFY,
        provenance={"data": ["moods-4q", "emotify"], "teachers": list(ACCURATE_TEACHERS),
                    "heads": {**records, "features": width}, "git_commit": git_commit(),
                    "export_command": "python -m training.accurate " + " ".join(sys.argv[1:]),
                    "evaluation": {"report": str(report_path.relative_to(REPO)) if report_path.resolve().is_relative_to(REPO) else str(report_path),
                                   "command": report["command"], "plan": report["plan"], "decision": report["decision"]},
                    "verification": verification, "file_mb": round(size_mb, 2),
                    "licences": {"backbones": "musicnn MSD and MagnaTagATune models, ISC (msd_musicnn.LICENSE.md)"},
                    "citations": [teacher_model(t).citation for t in ACCURATE_TEACHERS]},
        metrics=metrics,
    )
    write_metadata(out, info)
    model = MoodModel(out)
    short = model.predict(np.zeros((1, 96, 40), np.float32))
    shutil.copyfile(TEACHER_LICENSE, out.parent / TEACHER_LICENSE.name)
    write_card(out.with_suffix(".md"), model.info, report, bench, default_bench)
    print(f"{out}: {size_mb:.1f} MB, verified ({json.dumps(verification)}); {short.moods.shape} on a 40-frame window; "
          f"{TEACHER_LICENSE.name} copied beside it")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

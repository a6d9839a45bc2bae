"""How far the teacher's features go on a task: the ceiling a distilled student is chasing, measured on the same folds.

The genre target (Emotify clip accuracy >= 0.85) is far above what the small students reach, so before spending more
compute on students we ask what the much heavier musicnn teacher itself reaches with the best classifiers we could
put on it, each on the same grouped folds as `training evaluate` (clip = window probabilities averaged):

- window-level logistic regression on the teacher's embedding: the evaluation's `LinearHead` (C by inner grouped CV
  on the training fold), and the same head at several fixed C (the max over that grid is optimistic);
- an RBF SVM on the same window features; a k-nearest-neighbour vote on clip-mean embeddings;
- the same classifiers on the teacher's other outputs (tag logits, the 753-d `max_pool` its author recommends for
  transfer, embedding + `max_pool`), to see whether another layer holds more than the embedding;
- the teacher's embedding concatenated with the hand-crafted librosa descriptors (`training.handcrafted`);
- both teachers' embeddings (MSD + MagnaTagATune) side by side, when the second teacher is present, also with the
  SVM-like head a student graph can hold (random Fourier features + the linear head, `training.cv.RandomFeatureHead`);
- with `--finetune-folds`, musicnn's mid/back end fine-tuned on the labels (front end frozen; `training.musicnn`),
  for a fixed number of epochs (the test fold never picks the epoch);
- with `--student PATTERN` (a checkpoint per fold, `{k}` = fold, each trained without that fold's test clips), the
  same classifiers on a trained student's embedding: is the linear head or the student's features the limit?

Writes JSON and markdown (default `docs/evaluation/ceiling_<task>.{json,md}`); the model card quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
import numpy as np

from training.commandline import invocation
from training.cv import LinearHead, RandomFeatureHead, SklearnModel, cross_validate, dataset_folds, groups_of
from training.manifest import GENRES_EMOTIFY, MOODS_4Q, REPO
from training.recipe import FRONTEND, HOP_FRAMES, PATCH_FRAMES, TEACHER_SVM_C
from training.teacher_svm import SoftmaxSVC

TASKS = {"genre": ("emotify", GENRES_EMOTIFY), "mood": ("4q", MOODS_4Q)}
LR_GRID = (0.005, 0.02, 0.1, 0.5)
SVM_C = TEACHER_SVM_C
KNN_K = 3
COMBINED_C = 0.02
LAYER_C = 0.1  # LR on each other teacher layer and on student embeddings (one fixed C, like the SVM's)
FT_EPOCHS = 3
FT_LR = 3e-4
FT_BATCH = 32
FT_DROPOUT = 0.3
FT_JITTER = 16


def clip_summary(result: dict) -> dict:
    """The clip-level numbers of a `training.cv.cross_validate` result: mean, std and per-fold accuracy."""
    summary = result["clip"]["summary"]
    return {"clip_accuracy_mean": summary["accuracy_mean"], "clip_accuracy_std": summary["accuracy_std"],
            "folds": [f["accuracy"] for f in result["clip"]["folds"]]}


def finetune_fold(teacher_path, mels: list[np.ndarray], y: np.ndarray, tr, te, n_classes: int, epochs: int, seed: int) -> np.ndarray:
    """musicnn's back end + a new linear head trained on the training clips' 3 s crops; test clip probabilities."""
    import torch
    import torch.nn.functional as F

    from training.musicnn import MusiCNN
    from training.teacher import cut_patches, patch_starts

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = MusiCNN(teacher_path).eval()
    with torch.no_grad():  # the front end is frozen: compute it once per clip
        fronts = {i: net.front(torch.from_numpy(np.ascontiguousarray(mels[i].T[None]))).squeeze(0).numpy() for i in (*tr, *te)}
    for p in (*net.input_bn.parameters(), *net.timbral.parameters(), *net.timbral_bn.parameters(),
              *net.temporal.parameters(), *net.temporal_bn.parameters()):
        p.requires_grad = False
    head = torch.nn.Linear(net.dense.out_features, n_classes)
    opt = torch.optim.AdamW([{"params": [p for p in net.parameters() if p.requires_grad], "lr": FT_LR},
                             {"params": head.parameters(), "lr": 10 * FT_LR}], weight_decay=1e-2)

    def crops(i, jitter: bool) -> np.ndarray:
        f = fronts[i]
        starts = patch_starts(f.shape[1], PATCH_FRAMES, HOP_FRAMES)
        if jitter:
            starts = np.clip(starts + rng.integers(-FT_JITTER, FT_JITTER + 1, len(starts)), 0, max(0, f.shape[1] - PATCH_FRAMES))
        return cut_patches(f, starts, PATCH_FRAMES)

    for _ in range(epochs):
        parts = [crops(i, True) for i in tr]
        X = np.concatenate(parts)
        Y = np.concatenate([np.full(len(p), y[i]) for p, i in zip(parts, tr)])
        order = rng.permutation(len(X))
        net.train()
        net.apply(lambda m: m.eval() if isinstance(m, torch.nn.BatchNorm2d) else None)  # keep the pretrained statistics
        for b in range(0, len(order), FT_BATCH):
            idx = order[b : b + FT_BATCH]
            emb = net.back(torch.from_numpy(X[idx]))[0]
            loss = F.cross_entropy(head(F.dropout(emb, FT_DROPOUT, True)), torch.from_numpy(Y[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return np.stack([torch.softmax(head(net.back(torch.from_numpy(crops(i, False)))[0]), 1).mean(0).numpy() for i in te])


def student_heads(pattern: str, items, names, groups, folds, labels, cache) -> dict:
    """Clip accuracy of a linear and an RBF-SVM head on each fold's own student embedding (the student of fold k
    never heard fold k): if the SVM does no better than the linear head, the student's features are the limit."""
    from training.cache import dataset_logmels
    from training.checkpoints import load_net
    from training.heads import embed, torch_embedder, windows

    per_clip, _ = windows(dataset_logmels(items, FRONTEND, cache))
    accs: dict[str, list[float]] = {}
    heads = (("window LR (LinearHead)", lambda: LinearHead(len(labels))),
             (f"window RBF SVM C={SVM_C}", lambda: SklearnModel(SoftmaxSVC(), len(labels))))
    for k, fold in enumerate(folds):
        net, _ = load_net(pattern.format(k=k))
        fn = torch_embedder(net)
        X = [embed(fn, [w]) for w in per_clip]
        for name, make in heads:
            r = cross_validate(X, names, groups, labels, [fold], make)
            accs.setdefault(f"student embedding ({pattern}), {name}", []).append(r["clip"]["folds"][0]["accuracy"])
    return {n: {"clip_accuracy_mean": float(np.mean(a)), "clip_accuracy_std": float(np.std(a)), "folds": a} for n, a in accs.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=sorted(TASKS), default="genre", help="which labels the classifiers learn")
    parser.add_argument("--finetune-folds", type=int, nargs="*", default=[],
                        help="also fine-tune musicnn's back end for these folds (~8 min per fold on one core)")
    parser.add_argument("--epochs", type=int, default=FT_EPOCHS, help="fine-tuning epochs (fixed, not picked on the test fold)")
    parser.add_argument("--student", default=None,
                        help="per-fold student checkpoints, e.g. 'runs/genre/g2_x{k}/best.ckpt': classifiers on their embeddings")
    parser.add_argument("--out", default=None, help="JSON to write (default docs/evaluation/ceiling_<task>.json; .md beside it)")
    parser.add_argument("--cache", default=None, help="feature cache folder (None: $SENDRETURN_CACHE, else cache/)")


def markdown(res: dict) -> str:
    lines = [f"# What the teacher's features reach: {res['task']} ({res['dataset']})", "",
             f"Generated by `{res['command']}`. Clip accuracy on the grouped 5-fold CV of `training evaluate` "
             "(mean ± std over folds; for a grid, every value is shown: picking the best one afterwards is optimistic).", "",
             "| method | clip accuracy | per fold |", "|---|---|---|"]
    for name, r in res["methods"].items():
        folds = ", ".join(f"{a:.3f}" for a in r["folds"])
        lines.append(f"| {name} | {r['clip_accuracy_mean']:.3f} ± {r['clip_accuracy_std']:.3f} | {folds} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from sklearn.neighbors import KNeighborsClassifier

    from training.cache import cache_dir, dataset_logmels, resolve_dataset
    from training.handcrafted import HandcraftedRecipe, dataset_features
    from training.teacher import TEACHER_PATH, dataset_teacher_outputs, teacher_available

    if not teacher_available():
        raise SystemExit(f"the teacher is missing: {TEACHER_PATH}")
    dataset, labels = TASKS[args.task]
    cache = cache_dir(args.cache)
    items = resolve_dataset(dataset)
    y = np.array([labels.index(it.label) for it in items])
    names = [it.label for it in items]
    groups = groups_of(items)
    folds = dataset_folds(items)
    outputs = dataset_teacher_outputs(items, cache)
    teacher = [o["embedding"] for o in outputs]
    hand = [w for _, w in dataset_features(items, HandcraftedRecipe(), cache)]
    combined = [np.concatenate([t[: min(len(t), len(h))], h[: min(len(t), len(h))]], axis=1) for t, h in zip(teacher, hand)]
    res = {"task": args.task, "dataset": dataset, "command": invocation("ceiling"), "methods": {}}

    def cv(X, make) -> dict:
        return clip_summary(cross_validate(X, names, groups, labels, folds, make))

    def lr(C: float | None = None):
        return lambda: LinearHead(len(labels), C=C)

    def svm():
        return SklearnModel(SoftmaxSVC(), len(labels))

    res["methods"]["teacher embedding, window LR (LinearHead: C by inner grouped CV)"] = cv(teacher, lr())
    for C in LR_GRID:
        res["methods"][f"teacher embedding, window LR C={C}"] = cv(teacher, lr(C))
    res["methods"][f"teacher embedding, window RBF SVM C={SVM_C}"] = cv(teacher, svm)
    clip_means = np.stack([t.mean(axis=0) for t in teacher])
    res["methods"][f"teacher clip-mean embedding, {KNN_K}-NN (cosine)"] = cv(
        clip_means, lambda: SklearnModel(KNeighborsClassifier(KNN_K, metric="cosine"), len(labels)))
    res["methods"][f"teacher embedding + hand-crafted, window LR C={COMBINED_C}"] = cv(combined, lr(COMBINED_C))
    layers = {"tag logits": [o["logits"] for o in outputs], "max_pool": [o["max_pool"] for o in outputs],
              "embedding + max_pool": [np.concatenate([o["embedding"], o["max_pool"]], axis=1) for o in outputs]}
    if teacher_available("mtt"):
        mtt = dataset_teacher_outputs(items, cache, name="mtt")
        layers["embedding, MSD + MTT teachers"] = [np.concatenate([a["embedding"], b["embedding"]], axis=1)
                                                  for a, b in zip(outputs, mtt)]
        layers["embedding + tag logits, MSD + MTT teachers"] = [
            np.concatenate([a["embedding"], a["logits"], b["embedding"], b["logits"]], axis=1) for a, b in zip(outputs, mtt)]
    for name, X in layers.items():
        res["methods"][f"teacher {name}, window LR C={LAYER_C}"] = cv(X, lr(LAYER_C))
        res["methods"][f"teacher {name}, window RBF SVM C={SVM_C}"] = cv(X, svm)
    if "embedding, MSD + MTT teachers" in layers:  # the SVM-like head a student graph can hold (Linear -> cos -> Linear)
        res["methods"]["teacher embedding, MSD + MTT teachers, window random Fourier features + LinearHead"] = cv(
            layers["embedding, MSD + MTT teachers"], lambda: RandomFeatureHead(len(labels)))
    if args.student:
        res["methods"].update(student_heads(args.student, items, names, groups, folds, labels, cache))
    if args.finetune_folds:
        mels = dataset_logmels(items, FRONTEND, cache)
        accs = []
        for k in args.finetune_folds:
            t0 = time.time()
            tr, te = folds[k]
            probs = finetune_fold(TEACHER_PATH, mels, y, tr, te, len(labels), args.epochs, seed=k)
            accs.append(float((probs.argmax(1) == y[te]).mean()))
            print(f"fine-tuned musicnn, fold {k}: clip accuracy {accs[-1]:.3f} ({time.time() - t0:.0f} s)", file=sys.stderr)
        res["methods"][f"musicnn back end fine-tuned {args.epochs} epochs, folds {args.finetune_folds}"] = {
            "clip_accuracy_mean": float(np.mean(accs)), "clip_accuracy_std": float(np.std(accs)), "folds": accs}
    out = Path(args.out) if args.out else REPO / "docs" / "evaluation" / f"ceiling_{args.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

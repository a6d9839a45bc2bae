"""Baselines the mood CNN must beat, on the same artist-grouped folds: majority class, hand-crafted features, Spotify's.

Without them a CNN accuracy means little: 0.70 is impressive if hand-crafted features + logistic regression give
0.50, and worthless if they give 0.70. So every baseline goes through the evaluation spine (`training.cv`): the same
folds (`dataset_folds` over the dataset in manifest order), the same grouped-CV loop and the same linear head as the
student (standardised, class-balanced logistic regression, C by grouped inner CV on the training fold):

- majority class (predicts the training fold's most frequent label);
- hand-crafted librosa features (MFCC and delta-MFCC, spectral centroid/bandwidth/rolloff/flatness/contrast, chroma,
  RMS, zero-crossing rate, onset strength: mean and std; tempo) + the linear head. Two variants: one vector per whole clip, and one per 3 s window every
  1.5 s (the runtime's geometry), scored per window and per clip (window probabilities averaged), like the CNN;
- on ../shared/data/spotify-moods/data_moods.csv (no audio; labels Happy/Sad/Energetic/Calm; grouped by artist):
  a small neural network over Spotify's audio features (what the old student prototype did) and logistic regression
  on Spotify valence + energy alone, and valence alone (the signal SEND/RETURN used to drive its room). These are on
  a DIFFERENT dataset and label set: context for what Spotify's features could do, not a head-to-head comparison.

Audio is decoded through `training.cache` (cached); hand-crafted features are cached under <cache>/handcrafted/.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .commandline import invocation
from .cv import LinearHead, SklearnModel, cross_validate, dataset_folds, groups_of
from .handcrafted import FEATURE_NAMES, HandcraftedRecipe, dataset_features
from .manifest import GENRES_EMOTIFY, MOODS_4Q, REPO, SHARED_DATA, Item, ManifestError
from .recipe import C_GRID, FOLD_SEED, INNER_FOLDS, N_SPLITS

DEFAULT_OUT = REPO / "docs" / "evaluation" / "baselines.json"
SPOTIFY_MOODS_CSV = SHARED_DATA / "spotify-moods" / "data_moods.csv"
SPOTIFY_AUDIO_FEATURES = (
    "danceability", "acousticness", "energy", "instrumentalness", "liveness", "valence", "loudness", "speechiness", "tempo",
)
SPOTIFY_LABELS = ("Happy", "Sad", "Energetic", "Calm")
MLP_HIDDEN = (32, 16)
SEED = 0
KNOWN_ORDERS = (MOODS_4Q, GENRES_EMOTIFY, SPOTIFY_LABELS)  # report labels in the model's order when they match
SPOTIFY_NOTE = (
    "spotify-moods is a DIFFERENT dataset (686 songs, Spotify audio features only, playlist-derived labels "
    "Happy/Sad/Energetic/Calm) with a different label set: these numbers are context for what Spotify's features "
    "could do, not a head-to-head comparison with the 4Q results."
)


# -- classifiers ---------------------------------------------------------------------------------------------------


def label_order(found: set[str]) -> list[str]:
    """The model's label order (happy, angry, sad, calm for 4Q) when the set matches, else sorted."""
    return next((list(o) for o in KNOWN_ORDERS if set(o) == found), sorted(found))


def mlp(n_classes: int) -> SklearnModel:
    """A small network (like the old Spotify-features prototype): standardised inputs, early stopping."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    class SmallDataMLP(SklearnModel):
        def fit(self, Xs, y, groups):  # early stopping needs enough rows for its own validation split
            self.estimator.set_params(mlpclassifier__early_stopping=len(y) >= 100)
            return super().fit(Xs, y, groups)

    return SmallDataMLP(make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=tuple(MLP_HIDDEN), alpha=1e-3, max_iter=2000, random_state=SEED, n_iter_no_change=30)), n_classes)


def majority(n_classes: int) -> SklearnModel:
    """Predicts the training fold's most frequent label (class priors as probabilities)."""
    from sklearn.dummy import DummyClassifier

    return SklearnModel(DummyClassifier(strategy="prior"), n_classes)


# -- datasets ------------------------------------------------------------------------------------------------------


def audio_baselines(
    items: Sequence[Item],
    n_splits: int = N_SPLITS,
    seed: int = FOLD_SEED,
    recipe: HandcraftedRecipe = HandcraftedRecipe(),
    cache: Path | None = None,
    windows: bool = True,
    C_grid: Sequence[float] = C_GRID,
    progress: bool = True,
) -> dict:
    """Majority + hand-crafted features on an audio manifest, on `dataset_folds(items, n_splits, seed)`."""
    labels = label_order({it.label for it in items})
    y = [it.label for it in items]
    groups = groups_of(items)
    folds = dataset_folds(items, n_splits, seed)
    t0 = time.time()
    feats = dataset_features(items, recipe, cache, progress)
    feature_seconds = time.time() - t0
    X_clip = np.stack([c for c, _ in feats]).astype(np.float64)
    out: dict[str, Any] = {
        "n": len(items),
        "labels": labels,
        "class_counts": {lab: y.count(lab) for lab in labels},
        "groups": len(set(groups)),
        "folds": {"n_splits": n_splits, "seed": seed, "function": "training.cv.dataset_folds(items)",
                  "test_sizes": [int(len(te)) for _, te in folds]},
        "baselines": {},
    }
    b = out["baselines"]
    b["majority"] = {"description": "predicts the training fold's most frequent label (class priors as probabilities)",
                     **cross_validate(X_clip, y, groups, labels, folds, lambda: majority(len(labels)))}

    def lr() -> LinearHead:
        return LinearHead(len(labels), grid=tuple(C_grid))

    b["handcrafted_logreg_clip"] = {
        "description": f"{len(FEATURE_NAMES)} librosa features over the whole clip (mean/std of frame descriptors + "
        "tempo) -> the linear head (training.cv.LinearHead)",
        **cross_validate(X_clip, y, groups, labels, folds, lr),
    }
    if windows:
        X_win = [w.astype(np.float64) for _, w in feats]
        b["handcrafted_logreg_windows"] = {
            "description": f"the same {len(FEATURE_NAMES)} features per {recipe.window_seconds:g} s window every "
            f"{recipe.hop_seconds:g} s -> logistic regression trained on windows; 'window' = single window, 'clip' = "
            "window probabilities averaged over the clip (the CNN's two levels)",
            "windows_per_clip_mean": float(np.mean([len(w) for w in X_win])),
            **cross_validate(X_win, y, groups, labels, folds, lr),
        }
    out["features"] = {"names": FEATURE_NAMES, "recipe": asdict(recipe), "seconds_to_compute": round(feature_seconds, 1)}
    return out


def read_spotify_moods(path: str | Path = SPOTIFY_MOODS_CSV) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """data_moods.csv -> (audio features [n, 9], mood labels, artist groups, column names)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: not found (the Spotify-features table lives in ../shared/data/spotify-moods)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in (*SPOTIFY_AUDIO_FEATURES, "mood", "artist") if rows and c not in rows[0]]
    if not rows or missing:
        raise ManifestError(f"{path}: empty, or missing column(s) {missing}")
    X = np.array([[float(r[c]) for c in SPOTIFY_AUDIO_FEATURES] for r in rows])
    return X, [r["mood"] for r in rows], [r["artist"] for r in rows], list(SPOTIFY_AUDIO_FEATURES)


def spotify_baselines(path: str | Path = SPOTIFY_MOODS_CSV, n_splits: int = N_SPLITS, seed: int = FOLD_SEED,
                      C_grid: Sequence[float] = C_GRID) -> dict:
    X, y, groups, cols = read_spotify_moods(path)
    labels = label_order(set(y))
    folds = dataset_folds([Item(str(i), lab, g) for i, (lab, g) in enumerate(zip(y, groups))], n_splits, seed)
    col = {c: i for i, c in enumerate(cols)}

    def lr() -> LinearHead:
        return LinearHead(len(labels), grid=tuple(C_grid))

    return {
        "note": SPOTIFY_NOTE,
        "n": len(y),
        "labels": labels,
        "class_counts": {lab: y.count(lab) for lab in labels},
        "groups": len(set(groups)),
        "folds": {"n_splits": n_splits, "seed": seed, "grouping": "artist", "test_sizes": [int(len(te)) for _, te in folds]},
        "baselines": {
            "majority": {"description": "most frequent training label", **cross_validate(X, y, groups, labels, folds, lambda: majority(len(labels)))},
            "spotify_features_mlp": {
                "description": f"small neural network (MLP {list(MLP_HIDDEN)}, standardised inputs, early stopping) over "
                f"Spotify audio features {cols}",
                **cross_validate(X, y, groups, labels, folds, lambda: mlp(len(labels))),
            },
            "spotify_features_logreg": {
                "description": f"logistic regression over the same {len(cols)} Spotify audio features",
                **cross_validate(X, y, groups, labels, folds, lr),
            },
            "spotify_valence_energy_logreg": {
                "description": "logistic regression on Spotify valence + energy alone",
                **cross_validate(X[:, [col["valence"], col["energy"]]], y, groups, labels, folds, lr),
            },
            "spotify_valence_logreg": {
                "description": "logistic regression on Spotify valence alone (what SEND/RETURN drove its room with)",
                **cross_validate(X[:, [col["valence"]]], y, groups, labels, folds, lr),
            },
        },
    }


# -- report --------------------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    """A table per dataset: mean +- std over folds, for H-model's evaluation report and humans."""
    lines = ["# Baselines", "", f"Command: `{results['command']}`", ""]
    for name, d in results["datasets"].items():
        lines += [f"## {name} ({d['n']} items, {len(d['labels'])} classes, {d['groups']} groups, "
                  f"{d['folds']['n_splits']} grouped folds, seed {d['folds']['seed']})", ""]
        if d.get("note"):
            lines += [f"> {d['note']}", ""]
        lines += ["| baseline | level | accuracy | macro-F1 | ECE |", "| --- | --- | --- | --- | --- |"]
        for bname, b in d["baselines"].items():
            for lvl in ("clip", "window"):
                if lvl not in b:
                    continue
                s = b[lvl]["summary"]
                ece = f"{s['ece_mean']:.3f}" if "ece_mean" in s else "-"
                lines.append(f"| {bname} | {lvl} | {s['accuracy_mean']:.3f} +- {s['accuracy_std']:.3f} | "
                             f"{s['macro_f1_mean']:.3f} +- {s['macro_f1_std']:.3f} | {ece} |")
        lines.append("")
        for bname, b in d["baselines"].items():
            lines.append(f"- **{bname}**: {b['description']}")
        lines.append("")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results JSON (a .md table is written beside it)")
    p.add_argument("--dataset", action="append", default=None,
                   help="audio dataset(s) for majority + hand-crafted baselines: 4q, emotify, a manifest CSV or a "
                   "ROOT/<label>/ folder (repeatable; default: 4q and emotify)")
    p.add_argument("--spotify-csv", default=str(SPOTIFY_MOODS_CSV),
                   help="Spotify audio-features table for the Spotify baselines ('none' to skip)")
    p.add_argument("--folds", type=int, default=N_SPLITS, help="grouped CV folds (as the model's evaluation)")
    p.add_argument("--seed", type=int, default=FOLD_SEED, help="fold seed (as the model's evaluation)")
    p.add_argument("--cache", default=None, help="feature cache folder (None: $SENDRETURN_CACHE, else cache/)")
    p.add_argument("--no-windows", action="store_true", help="skip the per-window hand-crafted baseline")
    p.add_argument("--c-grid", default=",".join(f"{c:g}" for c in C_GRID),
                   help="logistic-regression C values tried by the inner grouped CV (comma-separated; one value = fixed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from threadpoolctl import threadpool_limits

    from .cache import resolve_dataset

    t0 = time.time()
    command = invocation("baselines")
    results: dict[str, Any] = {
        "command": command,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "datasets": {},
    }
    cache = Path(args.cache) if args.cache else None
    try:
        c_grid = tuple(float(c) for c in args.c_grid.split(",") if c.strip())
    except ValueError:
        raise ManifestError(f"--c-grid {args.c_grid!r}: expected comma-separated numbers") from None
    with threadpool_limits(1):  # the machine is shared; one BLAS thread keeps timings and neighbours sane
        for name in args.dataset or ["4q", "emotify"]:
            items = resolve_dataset(name)
            print(f"{name}: {len(items)} clips", file=sys.stderr)
            results["datasets"][name] = audio_baselines(items, args.folds, args.seed, cache=cache,
                                                        windows=not args.no_windows, C_grid=c_grid,
                                                        progress=not args.no_progress)
        if args.spotify_csv and args.spotify_csv.lower() != "none":
            results["datasets"]["spotify-moods"] = spotify_baselines(args.spotify_csv, args.folds, args.seed, c_grid)
    results["classifiers"] = {
        "logreg": f"training.cv.LinearHead: standardised, class-balanced logistic regression; C from {list(c_grid)} by "
        f"{INNER_FOLDS}-fold grouped CV inside each training fold (window log-likelihood), as the student's heads",
        "mlp": f"StandardScaler + MLPClassifier{MLP_HIDDEN} (alpha 1e-3, early stopping, seed {SEED})",
    }
    results["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {out} and {md}", file=sys.stderr)
    return 0

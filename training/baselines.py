"""Baselines the mood CNN must beat, on the same artist-grouped folds: majority class, hand-crafted features, Spotify's.

Without them a CNN accuracy means little: 0.70 is impressive if hand-crafted features + logistic regression give
0.50, and worthless if they give 0.70. So every baseline goes through `training.metrics` with the same folds
(`group_folds(labels, groups, n_splits, seed)` over the dataset in manifest order) and the same report definitions:

- majority class (predicts the training fold's most frequent label);
- hand-crafted librosa features (MFCC and delta-MFCC, spectral centroid/bandwidth/rolloff/flatness/contrast, chroma,
  RMS, zero-crossing rate, onset strength: mean and std; tempo) + standardised logistic regression, C chosen by an
  inner grouped CV on the training fold only. Two variants: one vector per whole clip, and one per 3 s window every
  1.5 s (the runtime's geometry), scored per window and per clip (window probabilities averaged), like the CNN;
- on ../shared/data/spotify-moods/data_moods.csv (no audio; labels Happy/Sad/Energetic/Calm; grouped by artist):
  a small neural network over Spotify's audio features (what the old student prototype did) and logistic regression
  on Spotify valence + energy alone, and valence alone (the signal SEND/RETURN used to drive its room). These are on
  a DIFFERENT dataset and label set: context for what Spotify's features could do, not a head-to-head comparison.

Audio is decoded through `training.features` (cached); hand-crafted features are cached under <cache>/handcrafted/.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .manifest import GENRES_EMOTIFY, MOODS_4Q, REPO, SHARED_DATA, Item, ManifestError
from .metrics import classification_report, group_folds, summarize_folds

DEFAULT_OUT = REPO / "docs" / "evaluation" / "baselines.json"
SPOTIFY_MOODS_CSV = SHARED_DATA / "spotify-moods" / "data_moods.csv"
SPOTIFY_AUDIO_FEATURES = (
    "danceability", "acousticness", "energy", "instrumentalness", "liveness", "valence", "loudness", "speechiness", "tempo",
)
SPOTIFY_LABELS = ("Happy", "Sad", "Energetic", "Calm")
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)  # logistic-regression regularisation, chosen by inner grouped CV
INNER_FOLDS = 3
MLP_HIDDEN = (32, 16)
SEED = 0
KNOWN_ORDERS = (MOODS_4Q, GENRES_EMOTIFY, SPOTIFY_LABELS)  # report labels in the model's order when they match
SPOTIFY_NOTE = (
    "spotify-moods is a DIFFERENT dataset (686 songs, Spotify audio features only, playlist-derived labels "
    "Happy/Sad/Energetic/Calm) with a different label set: these numbers are context for what Spotify's features "
    "could do, not a head-to-head comparison with the 4Q results."
)


@dataclass(frozen=True)
class HandcraftedRecipe:
    """Everything that changes the hand-crafted features; its hash names the cache folder."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256  # the model front end's hop, so windows fall on the same frames
    n_mfcc: int = 20
    n_mels: int = 64
    window_seconds: float = 3.0
    hop_seconds: float = 1.5
    version: int = 2  # 2: chroma with tuning=0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def window_frames(self) -> int:
        return int(round(self.window_seconds * self.sample_rate / self.hop_length))

    @property
    def hop_frames(self) -> int:
        return int(round(self.hop_seconds * self.sample_rate / self.hop_length))


FRAME_FEATURES = (
    [f"mfcc{i}" for i in range(20)] + [f"dmfcc{i}" for i in range(20)]
    + ["centroid", "bandwidth", "rolloff", "flatness", "zcr", "rms"]
    + [f"contrast{i}" for i in range(7)] + [f"chroma{i}" for i in range(12)] + ["onset"]
)
FEATURE_NAMES = [f"{f}_mean" for f in FRAME_FEATURES] + [f"{f}_std" for f in FRAME_FEATURES] + ["tempo"]


def frame_features(y: np.ndarray, r: HandcraftedRecipe) -> np.ndarray:
    """Frame-level descriptors [len(FRAME_FEATURES), frames] from one STFT (frames: 1 + len(y) // hop)."""
    import librosa

    S = np.abs(librosa.stft(y, n_fft=r.n_fft, hop_length=r.hop_length, center=True))
    power = S**2
    mel = librosa.feature.melspectrogram(S=power, sr=r.sample_rate, n_mels=r.n_mels)
    log_mel = librosa.power_to_db(mel)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=r.n_mfcc)
    width = min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2)) if mfcc.shape[1] >= 3 else 0
    dmfcc = librosa.feature.delta(mfcc, width=width) if width >= 3 else np.zeros_like(mfcc)
    sr = r.sample_rate
    rows = [
        mfcc,
        dmfcc,
        librosa.feature.spectral_centroid(S=S, sr=sr),
        librosa.feature.spectral_bandwidth(S=S, sr=sr),
        librosa.feature.spectral_rolloff(S=S, sr=sr),
        librosa.feature.spectral_flatness(S=S),
        librosa.feature.zero_crossing_rate(y, frame_length=r.n_fft, hop_length=r.hop_length, center=True),
        librosa.feature.rms(S=S, frame_length=r.n_fft),
        librosa.feature.spectral_contrast(S=S, sr=sr, fmin=100.0, n_bands=6),
        librosa.feature.chroma_stft(S=power, sr=sr, tuning=0.0),  # A440: tuning estimation is noisy (and warns on silence)
        librosa.onset.onset_strength(S=log_mel, sr=sr)[None, :],
    ]
    n = min(x.shape[1] for x in rows)
    return np.concatenate([x[:, :n] for x in rows], axis=0).astype(np.float32)


def segment_vector(frames: np.ndarray, r: HandcraftedRecipe) -> np.ndarray:
    """Mean and std of every frame descriptor over a segment, plus the segment's tempo."""
    import librosa

    onset = frames[-1]
    if len(onset) >= 8 and onset.any():
        tempo = float(librosa.feature.tempo(onset_envelope=onset, sr=r.sample_rate, hop_length=r.hop_length)[0])
    else:
        tempo = 0.0
    return np.concatenate([frames.mean(axis=1), frames.std(axis=1), [tempo]]).astype(np.float32)


def window_starts(n_frames: int, r: HandcraftedRecipe) -> np.ndarray:
    """Window start frames: every hop, and at least one window (a short clip is one window)."""
    if n_frames <= r.window_frames:
        return np.array([0])
    return np.arange(0, n_frames - r.window_frames + 1, r.hop_frames)


def clip_features(file: str, r: HandcraftedRecipe, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(clip vector, window vectors [n_windows, d]) of one file, cached by recipe and file."""
    from .features import cache_dir, file_key, load_audio

    path = cache_dir(cache) / "handcrafted" / r.key() / f"{file_key(file)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["clip"], z["windows"]
    y = load_audio(file, r.sample_rate, cache)
    frames = frame_features(y, r)
    clip = segment_vector(frames, r)
    windows = np.stack([segment_vector(frames[:, s : s + r.window_frames], r) for s in window_starts(frames.shape[1], r)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, clip=clip, windows=windows)
    tmp.replace(path)
    return clip, windows


def dataset_features(items: Sequence[Item], r: HandcraftedRecipe, cache: Path | None, progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    from tqdm import tqdm

    return [clip_features(it.file, r, cache) for it in tqdm(items, desc="hand-crafted features", disable=not progress, file=sys.stderr)]


# -- classifiers ---------------------------------------------------------------------------------------------------


def label_order(found: set[str]) -> list[str]:
    """The model's label order (happy, angry, sad, calm for 4Q) when the set matches, else sorted."""
    return next((list(o) for o in KNOWN_ORDERS if set(o) == found), sorted(found))


def _quiet_fit(model: Any, X: np.ndarray, y: np.ndarray) -> Any:
    """Fit; sklearn's ConvergenceWarning is not an error here (max_iter is generous; tiny test data may not converge)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y)


def logreg_factory(C_grid: Sequence[float] = C_GRID, inner_folds: int = INNER_FOLDS) -> Callable[..., Any]:
    """Standardised multinomial logistic regression; C picked by grouped CV inside the training fold only."""

    def fit(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, GroupKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=SEED))
        n_groups = len(set(groups))
        if len(C_grid) == 1 or n_groups < inner_folds:
            pipe.set_params(logisticregression__C=C_grid[0])
            return _quiet_fit(pipe, X, y)
        search = GridSearchCV(pipe, {"logisticregression__C": list(C_grid)}, cv=GroupKFold(n_splits=inner_folds),
                              scoring="accuracy", n_jobs=1)
        with warnings.catch_warnings():
            from sklearn.exceptions import ConvergenceWarning

            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(X, y, groups=groups)
        return search.best_estimator_

    return fit


def mlp_factory(hidden: Sequence[int] = MLP_HIDDEN) -> Callable[..., Any]:
    """A small network (like the old Spotify-features prototype): standardised inputs, early stopping."""

    def fit(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Any:
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        mlp = MLPClassifier(hidden_layer_sizes=tuple(hidden), alpha=1e-3, max_iter=2000, random_state=SEED,
                            early_stopping=len(y) >= 100, n_iter_no_change=30)
        return _quiet_fit(make_pipeline(StandardScaler(), mlp), X, y)

    return fit


def majority_factory() -> Callable[..., Any]:
    def fit(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Any:
        from sklearn.dummy import DummyClassifier

        return DummyClassifier(strategy="prior").fit(X, y)

    return fit


def _probs_in_order(model: Any, X: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """predict_proba with columns in `labels` order (a class absent from a training fold gets probability 0)."""
    p = model.predict_proba(X)
    out = np.zeros((len(X), len(labels)))
    index = {lab: i for i, lab in enumerate(labels)}
    for j, c in enumerate(model.classes_):
        out[:, index[c]] = p[:, j]
    return out


def _short(report: dict) -> dict:
    keep = ("n", "accuracy", "macro_f1", "ece", "nll", "confusion")
    return {k: report[k] for k in keep if k in report}


def _pooled(y_true: list[str], probs: list[np.ndarray], labels: Sequence[str]) -> dict:
    p = np.concatenate(probs)
    pred = [labels[i] for i in p.argmax(axis=1)]
    rep = classification_report(y_true, pred, labels, p)
    rep.pop("reliability", None)
    return rep


def cross_validate(
    X: np.ndarray | list[np.ndarray],
    y: Sequence[str],
    groups: Sequence[str],
    labels: Sequence[str],
    folds: list[tuple[np.ndarray, np.ndarray]],
    fit: Callable[..., Any],
) -> dict:
    """Per-clip features (X [n, d]) or per-window features (X a list of [n_windows_i, d]) on the given folds.

    Per-window: the classifier trains on every window of the training clips (each labelled with its clip's label)
    and is scored per window ("window") and per clip with window probabilities averaged ("clip"), like the CNN.
    """
    y = np.asarray(y)
    groups = np.asarray(groups)
    windowed = isinstance(X, list)
    levels: dict[str, dict[str, list]] = {lvl: {"reports": [], "true": [], "probs": []} for lvl in (("window", "clip") if windowed else ("clip",))}
    for train, test in folds:
        if windowed:
            Xtr = np.concatenate([X[i] for i in train])
            ytr = np.concatenate([[y[i]] * len(X[i]) for i in train])
            gtr = np.concatenate([[groups[i]] * len(X[i]) for i in train])
        else:
            Xtr, ytr, gtr = X[train], y[train], groups[train]
        model = fit(Xtr, ytr, gtr)
        if windowed:
            pw = [_probs_in_order(model, X[i], labels) for i in test]
            results = {
                "window": (np.concatenate([[y[i]] * len(X[i]) for i in test]).tolist(), np.concatenate(pw)),
                "clip": (y[test].tolist(), np.stack([p.mean(axis=0) for p in pw])),
            }
        else:
            results = {"clip": (y[test].tolist(), _probs_in_order(model, X[test], labels))}
        for lvl, (true, probs) in results.items():
            pred = [labels[i] for i in probs.argmax(axis=1)]
            levels[lvl]["reports"].append(classification_report(true, pred, labels, probs))
            levels[lvl]["true"].extend(true)
            levels[lvl]["probs"].append(probs)
    out = {}
    for lvl, d in levels.items():
        out[lvl] = {
            "summary": summarize_folds(d["reports"]),
            "folds": [_short(r) for r in d["reports"]],
            "pooled": _pooled(d["true"], d["probs"], labels),
        }
    return out


# -- datasets ------------------------------------------------------------------------------------------------------


def audio_baselines(
    items: Sequence[Item],
    n_splits: int = 5,
    seed: int = 0,
    recipe: HandcraftedRecipe = HandcraftedRecipe(),
    cache: Path | None = None,
    windows: bool = True,
    C_grid: Sequence[float] = C_GRID,
    progress: bool = True,
) -> dict:
    """Majority + hand-crafted features on an audio manifest, on `group_folds(labels, groups, n_splits, seed)`."""
    labels = label_order({it.label for it in items})
    y = [it.label for it in items]
    groups = [it.group or it.file for it in items]
    folds = group_folds(y, groups, n_splits=n_splits, seed=seed)
    t0 = time.time()
    feats = dataset_features(items, recipe, cache, progress)
    feature_seconds = time.time() - t0
    X_clip = np.stack([c for c, _ in feats]).astype(np.float64)
    out: dict[str, Any] = {
        "n": len(items),
        "labels": labels,
        "class_counts": {lab: y.count(lab) for lab in labels},
        "groups": len(set(groups)),
        "folds": {"n_splits": n_splits, "seed": seed, "function": "training.metrics.group_folds(labels, groups)",
                  "test_sizes": [int(len(te)) for _, te in folds]},
        "baselines": {},
    }
    b = out["baselines"]
    b["majority"] = {"description": "predicts the training fold's most frequent label (class priors as probabilities)",
                     **cross_validate(X_clip, y, groups, labels, folds, majority_factory())}
    lr = logreg_factory(C_grid)
    b["handcrafted_logreg_clip"] = {
        "description": f"{len(FEATURE_NAMES)} librosa features over the whole clip (mean/std of frame descriptors + "
        "tempo) -> standardised logistic regression, C by inner grouped CV",
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


def spotify_baselines(path: str | Path = SPOTIFY_MOODS_CSV, n_splits: int = 5, seed: int = 0,
                      C_grid: Sequence[float] = C_GRID) -> dict:
    X, y, groups, cols = read_spotify_moods(path)
    labels = label_order(set(y))
    folds = group_folds(y, groups, n_splits=n_splits, seed=seed)
    col = {c: i for i, c in enumerate(cols)}
    lr = logreg_factory(C_grid)
    return {
        "note": SPOTIFY_NOTE,
        "n": len(y),
        "labels": labels,
        "class_counts": {lab: y.count(lab) for lab in labels},
        "groups": len(set(groups)),
        "folds": {"n_splits": n_splits, "seed": seed, "grouping": "artist", "test_sizes": [int(len(te)) for _, te in folds]},
        "baselines": {
            "majority": {"description": "most frequent training label", **cross_validate(X, y, groups, labels, folds, majority_factory())},
            "spotify_features_mlp": {
                "description": f"small neural network (MLP {list(MLP_HIDDEN)}, standardised inputs, early stopping) over "
                f"Spotify audio features {cols}",
                **cross_validate(X, y, groups, labels, folds, mlp_factory()),
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
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"results JSON (a .md table is written beside it; default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--dataset", action="append", default=None,
                   help="audio dataset(s) for majority + hand-crafted baselines: 4q, emotify, a manifest CSV or a "
                   "ROOT/<label>/ folder (repeatable; default: 4q and emotify)")
    p.add_argument("--spotify-csv", default=str(SPOTIFY_MOODS_CSV),
                   help="Spotify audio-features table for the Spotify baselines ('none' to skip; default the shared one)")
    p.add_argument("--folds", type=int, default=5, help="grouped CV folds (default 5, as the model's evaluation)")
    p.add_argument("--seed", type=int, default=0, help="fold seed (default 0, as the model's evaluation)")
    p.add_argument("--cache", help="feature cache folder (default $SENDRETURN_CACHE or cache/)")
    p.add_argument("--no-windows", action="store_true", help="skip the per-window hand-crafted baseline")
    p.add_argument("--c-grid", default=",".join(f"{c:g}" for c in C_GRID),
                   help="logistic-regression C values tried by the inner grouped CV (comma-separated; one value = fixed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from threadpoolctl import threadpool_limits

    from .features import resolve_dataset

    t0 = time.time()
    command = "python -m training baselines " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["baselines"] else "python -m training baselines"
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
        "logreg": f"StandardScaler + LogisticRegression(max_iter=3000); C from {list(c_grid)} by {INNER_FOLDS}-fold "
        "GroupKFold inside each training fold",
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

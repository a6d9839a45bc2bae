"""The evaluation spine: one definition of the folds, one grouped cross-validation loop and one linear head.

Everything that reports a number on 4Q or Emotify (the student, the teacher + LR baseline, the hand-crafted and
Spotify baselines, the ceiling study, the valence/arousal check) goes through these three things, so two rows of a
report differ only in their features or their classifier, never in their folds, their loop or how a head's
regularisation was chosen:

- `dataset_folds(items)`: artist-grouped stratified folds over a manifest in order (`training.metrics.group_folds`,
  `training.recipe.N_SPLITS` / `FOLD_SEED`); `train --exclude-fold K` leaves out exactly fold K's test clips;
- `LinearHead`: standardise, class-balanced multinomial logistic regression, C chosen from `recipe.C_GRID` by
  grouped inner CV on the data it is fitted on (held-out window log-likelihood: a proper score, smoother than
  accuracy on small inner folds). The exported model's heads are the same object fitted on all labelled windows;
- `grouped_cv(...)`: per fold, fit on the training clips' windows, score the test clips' windows ("window") and their
  clip averages ("clip"); per-window features or one vector per clip (then only "clip").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from sendreturn_mood.model.contract import softmax  # the runtime's: evaluated = served
from training.manifest import Item
from training.metrics import classification_report, clip_level, group_folds, summarize_folds
from training.recipe import C_GRID, FOLD_SEED, INNER_FOLDS, LR_MAX_ITER, N_SPLITS

Folds = list[tuple[np.ndarray, np.ndarray]]
FOLD_KEYS = ("n", "accuracy", "macro_f1", "ece", "nll", "confusion")  # what each fold's report keeps


def groups_of(items: Sequence[Item]) -> list[str]:
    """The grouping key of each clip: its artist (4Q), else the file itself (each clip its own group)."""
    return [it.group or it.file for it in items]


def dataset_folds(items: Sequence[Item], n_splits: int = N_SPLITS, seed: int = FOLD_SEED) -> Folds:
    """The folds of a dataset, in manifest order: every command uses this one definition."""
    return group_folds([it.label for it in items], groups_of(items), n_splits, seed)


def artist_keys(artist: str) -> list[str]:
    """Names an artist string can match across datasets: the whole name, case, accents and punctuation ignored
    ("Earth; Wind & Fire" = "Earth, Wind & Fire"), then each member of a collaboration ("A, B")."""
    import re
    import unicodedata

    def norm(s: str) -> str:
        s = unicodedata.normalize("NFKC", s).casefold().replace("&", " and ")
        return " ".join(re.sub(r"[^\w ]", " ", s).split())

    parts = [norm(a) for a in re.split(r"[,;/]| feat\.? | with ", artist)] if re.search(r"[,;/]| feat| with ", artist) else []
    return [k for k in dict.fromkeys([norm(artist), *parts]) if k]


def cross_dataset_folds(base: Sequence[Item], extra: Sequence[Item], n_splits: int = N_SPLITS,
                        seed: int = FOLD_SEED) -> list[np.ndarray]:
    """Fold k's test clips of `extra` (indices into it), artist-disjoint from `base`'s folds (`dataset_folds`, which
    stay as they are): a clip whose artist has clips in `base` goes where that artist is tested there; the others get
    their own artist-grouped, stratified folds, fold k with fold k."""
    where: dict[str, int] = {}
    for k, (_, test) in enumerate(dataset_folds(base, n_splits, seed)):
        for i in test:
            for key in artist_keys(base[i].group):
                where.setdefault(key, k)
    fold_of = np.full(len(extra), -1)
    for i, it in enumerate(extra):
        hits = [where[key] for key in artist_keys(it.group) if key in where]
        if hits:
            fold_of[i] = hits[0]
    rest = np.flatnonzero(fold_of < 0)
    for k, (_, test) in enumerate(dataset_folds([extra[i] for i in rest], n_splits, seed)):
        fold_of[rest[test]] = k
    return [np.flatnonzero(fold_of == k) for k in range(n_splits)]


def hard_labels(y: np.ndarray) -> np.ndarray:
    """Class indices of targets given as indices [n] or as per-class probabilities [n, n_classes] (their argmax)."""
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y


def expand_soft(X: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class target probabilities as weighted hard rows: each row once per class it has probability for, weighted
    by it, times the class balance of the summed weights (the soft form of `class_weight="balanced"`)."""
    rows, cls = np.nonzero(P > 0)
    w = P[rows, cls]
    totals = np.bincount(cls, weights=w, minlength=P.shape[1])
    balance = totals.sum() / (np.count_nonzero(totals) * np.where(totals > 0, totals, 1.0))
    return X[rows], cls, w * balance[cls]


def fit_linear(X: np.ndarray, y: np.ndarray, n_classes: int, C: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standardise + multinomial logistic regression, folded into one affine map: logits = X @ W.T + b. `y`: class
    indices, or per-class target probabilities [n, n_classes] (soft targets, `expand_soft`)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    mean = X.mean(axis=0)
    scale = X.std(axis=0) + 1e-6
    soft = np.asarray(y).ndim == 2
    lr = LogisticRegression(C=C, max_iter=LR_MAX_ITER, random_state=seed, class_weight=None if soft else "balanced")
    Xf, yf, wf = expand_soft(X, np.asarray(y)) if soft else (X, y, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tiny test data may not converge; max_iter is generous
        lr.fit((Xf - mean) / scale, yf, sample_weight=wf)
    W = np.zeros((n_classes, X.shape[1]))
    b = np.full(n_classes, -30.0)  # a class absent from training gets ~zero probability
    if len(lr.classes_) == 2:  # binary sklearn models have one coefficient row: logit(class1) - logit(class0)
        w = lr.coef_[0] / scale
        W[lr.classes_[1]], b[lr.classes_[1]] = w, lr.intercept_[0] - w @ mean
        W[lr.classes_[0]], b[lr.classes_[0]] = 0.0, 0.0
    else:
        for k, cls in enumerate(lr.classes_):
            W[cls] = lr.coef_[k] / scale
            b[cls] = lr.intercept_[k] - (lr.coef_[k] / scale) @ mean
    return W.astype(np.float32), b.astype(np.float32)


def select_C(X: np.ndarray, y: np.ndarray, groups: Sequence[str], n_classes: int, grid: Sequence[float] = C_GRID,
             seed: int = 0) -> float:
    """C with the best held-out window log-likelihood in a grouped inner CV on (X, y) only, so an outer test fold
    never influences the choice. A single-value grid, or too few groups for the inner folds, means that value."""
    groups = np.asarray(groups)
    if len(grid) == 1 or len(set(groups.tolist())) < INNER_FOLDS:
        return float(grid[0])
    folds = group_folds(hard_labels(y).astype(str).tolist(), groups.tolist(), INNER_FOLDS, seed)
    target = y if y.ndim == 2 else np.eye(n_classes)[y]  # the held-out log-likelihood of soft targets is a cross-entropy
    scores = []
    for C in grid:
        nll = 0.0
        for tr, te in folds:
            W, b = fit_linear(X[tr], y[tr], n_classes, C, seed)
            p = softmax(X[te] @ W.T + b)
            nll -= (target[te] * np.log(np.clip(p, 1e-12, 1))).sum()
        scores.append(nll)
    return float(grid[int(np.argmin(scores))])


@dataclass
class LinearHead:
    """The one linear head: per ensemble member a standardised, class-balanced logistic regression (C from `C` or
    chosen by `select_C`); the members' logits are averaged (`training.net.MoodEnsemble` computes the same)."""

    n_classes: int
    C: float | list[float] | None = None  # fixed C (one per member for an ensemble); None: chosen by select_C
    grid: Sequence[float] = C_GRID
    weights: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    chosen: list[float] = field(default_factory=list)

    def fit(self, Xs: list[np.ndarray], y: np.ndarray, groups: Sequence[str]) -> "LinearHead":
        fixed = self.C if isinstance(self.C, list) else [self.C] * len(Xs)
        self.chosen = [c if c is not None else select_C(X, y, groups, self.n_classes, self.grid) for X, c in zip(Xs, fixed)]
        self.weights = [fit_linear(X, y, self.n_classes, c) for X, c in zip(Xs, self.chosen)]
        return self

    def logits(self, Xs: list[np.ndarray]) -> np.ndarray:
        return np.mean([X @ W.T + b for X, (W, b) in zip(Xs, self.weights)], axis=0)

    def predict_proba(self, Xs: list[np.ndarray]) -> np.ndarray:
        return softmax(self.logits(Xs))

    def record(self):
        """Each head's C as recorded in reports and metadata: a plain value for one student, a list for an ensemble."""
        return self.chosen[0] if len(self.chosen) == 1 else list(self.chosen)


@dataclass
class RandomFeatureHead:
    """An SVM-like head that stays two matrix products: random Fourier features of the standardised input
    (cos(x W + phase), approximating an RBF kernel with gamma = 1 / d, as scikit-learn's SVC default on standardised
    data) and then the same `LinearHead` on them. It can live in an ONNX graph as Linear -> Cos -> Linear."""

    n_classes: int
    n_features: int = 1024
    seed: int = 0
    C: float | None = None

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.sqrt(2.0 / self.n_features) * np.cos(((X - self.mean) / self.scale) @ self.omega + self.phase)

    def fit(self, Xs: list[np.ndarray], y: np.ndarray, groups: Sequence[str]) -> "RandomFeatureHead":
        X = Xs[0]
        rng = np.random.default_rng(self.seed)
        self.mean, self.scale = X.mean(axis=0), X.std(axis=0) + 1e-6
        self.omega = rng.normal(0.0, np.sqrt(2.0 / X.shape[1]), size=(X.shape[1], self.n_features))
        self.omega[X.std(axis=0) < 1e-4] = 0.0  # a constant input (a dead unit) carries nothing; dividing by its ~0
        # spread would only turn float32 rounding in the graph into large cosine arguments
        self.phase = rng.uniform(0.0, 2 * np.pi, size=self.n_features)
        self.linear = LinearHead(self.n_classes, self.C).fit([self.transform(X)], y, groups)
        return self

    def predict_proba(self, Xs: list[np.ndarray]) -> np.ndarray:
        return self.linear.predict_proba([self.transform(Xs[0])])

    def record(self):
        return self.linear.record()


HEADS = {"linear": LinearHead, "rff": RandomFeatureHead}  # `evaluate --genre-head`


class FixedModel:
    """A model that is not refitted: its features are already its probabilities (e.g. a shipped file's outputs), so
    the spine's loop scores it on exactly the folds and levels of everything else."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes

    def fit(self, Xs: list[np.ndarray], y: np.ndarray, groups: Sequence[str]) -> "FixedModel":
        return self

    def predict_proba(self, Xs: list[np.ndarray]) -> np.ndarray:
        return Xs[0][:, : self.n_classes]

    def record(self):
        return None


class Prefitted:
    """A model fitted in an earlier pass of the loop (`CVResult.models[k]`), reused as fold k's model: the same folds
    scored on other test features (changed audio) without fitting again."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def fit(self, Xs: list[np.ndarray], y: np.ndarray, groups: Sequence[str]) -> "Prefitted":
        return self

    def predict_proba(self, Xs: list[np.ndarray]) -> np.ndarray:
        return self.model.predict_proba(Xs)

    def record(self):
        return self.model.record()


class SklearnModel:
    """Any scikit-learn-style classifier (predict_proba) on the first feature matrix, with label indices as classes."""

    def __init__(self, estimator: Any, n_classes: int) -> None:
        self.estimator, self.n_classes = estimator, n_classes

    def fit(self, Xs: list[np.ndarray], y: np.ndarray, groups: Sequence[str]) -> "SklearnModel":
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.estimator.fit(Xs[0], y)
        return self

    def predict_proba(self, Xs: list[np.ndarray]) -> np.ndarray:
        p = self.estimator.predict_proba(Xs[0])
        out = np.zeros((len(Xs[0]), self.n_classes))
        out[:, np.asarray(self.estimator.classes_, dtype=int)] = p  # a class absent from a training fold gets 0
        return out

    def record(self):
        return None


@dataclass
class CVResult:
    report: dict  # {"window": ..., "clip": ..., "C_per_fold": ...}: what goes into report JSON files
    window_probs: np.ndarray  # out-of-fold probabilities of every window, in window order
    models: list = field(default_factory=list)  # the fitted model of each fold


def grouped_cv(
    features: Callable[[int], np.ndarray | list[np.ndarray]] | np.ndarray,
    clip_idx: np.ndarray | None,
    y_clip: Sequence[int],
    groups_clip: Sequence[str],
    labels: Sequence[str],
    folds: Folds,
    make_model: Callable[[], Any],
    test: tuple[Any, np.ndarray] | None = None,
) -> CVResult:
    """The one grouped-CV loop. `features`: a window feature matrix [n_windows, d] (or per-fold: a function of the
    fold index, e.g. the student trained without that fold; or a list of matrices, one per ensemble member); rows
    belong to clips `clip_idx` (None: one row per clip, then only clip-level results). Per fold the model is fitted
    on the training clips' rows (each labelled with its clip's label), scored on the test clips' rows ("window") and
    on their per-clip mean probabilities ("clip"). `y_clip`: class indices, or per-class target probabilities
    [n_clips, n_classes] (soft targets for the fit; scores use their argmax). `test`: other features of the test
    clips' windows and their clip index (e.g. of changed test audio); the fit still reads `features`."""
    labels = list(labels)
    y_clip = np.asarray(y_clip)
    y_hard = hard_labels(y_clip)
    groups_clip = np.asarray(groups_clip)
    windowed = clip_idx is not None
    clip_idx = np.arange(len(y_clip)) if clip_idx is None else np.asarray(clip_idx)
    y_win, g_win = y_clip[clip_idx], groups_clip[clip_idx]
    test_idx = clip_idx if test is None else np.asarray(test[1])
    levels = ("window", "clip") if windowed else ("clip",)
    acc: dict[str, dict[str, list]] = {lvl: {"folds": [], "true": [], "pred": [], "probs": []} for lvl in levels}
    oof = np.zeros((len(test_idx), len(labels)))
    chosen, models = [], []
    for k, (train_c, test_c) in enumerate(folds):
        Xs = features(k) if callable(features) else features
        Xs = Xs if isinstance(Xs, list) else [Xs]
        Ts = Xs if test is None else (test[0](k) if callable(test[0]) else test[0])
        Ts = Ts if isinstance(Ts, list) else [Ts]
        tr, te = np.isin(clip_idx, train_c), np.isin(test_idx, test_c)
        model = make_model().fit([X[tr] for X in Xs], y_win[tr], g_win[tr])
        probs = model.predict_proba([T[te] for T in Ts])
        oof[te] = probs
        chosen.append(model.record())
        models.append(model)
        per_level = {"window": ([labels[i] for i in y_hard[test_idx[te]]], probs)}
        ids, cprobs = clip_level(probs, [str(c) for c in test_idx[te]])
        per_level["clip"] = ([labels[y_hard[int(c)]] for c in ids], cprobs)
        for lvl in levels:
            true, p = per_level[lvl]
            pred = [labels[i] for i in p.argmax(1)]
            rep = classification_report(true, pred, labels, p)
            acc[lvl]["folds"].append({key: rep[key] for key in FOLD_KEYS if key in rep})
            acc[lvl]["true"] += true
            acc[lvl]["pred"] += pred
            acc[lvl]["probs"].append(p)
    report: dict = {}
    for lvl, d in acc.items():
        report[lvl] = {"folds": d["folds"], "summary": summarize_folds(d["folds"]),
                       "pooled": classification_report(d["true"], d["pred"], labels, np.concatenate(d["probs"]))}
    if any(c is not None for c in chosen):
        report["C_per_fold"] = chosen
    return CVResult(report, oof, models)


def cross_validate(X: np.ndarray | list[np.ndarray], y: Sequence[str], groups: Sequence[str], labels: Sequence[str],
                   folds, make_model: Callable[[], Any]) -> dict:
    """Per-clip features (X [n, d]) or per-window features (X a list of [n_windows_i, d]) through the spine's
    grouped-CV loop; per-window features are scored per window and per clip (window probabilities averaged)."""
    y_idx = np.array([list(labels).index(v) for v in y])
    if isinstance(X, list):
        clip_idx = np.concatenate([np.full(len(x), i) for i, x in enumerate(X)])
        X = np.concatenate(X)
    else:
        clip_idx = None
    report = grouped_cv(X, clip_idx, y_idx, groups, labels, folds, make_model).report
    for lvl in ("window", "clip"):
        if lvl in report:
            report[lvl]["pooled"].pop("reliability", None)  # keeps baselines.json readable; ECE is in the summary
    return report

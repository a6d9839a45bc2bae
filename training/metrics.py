"""Shared evaluation primitives: artist-grouped folds, classification reports, clip averaging, plots.

Every number in the evaluation report (the CNN, the teacher baseline and H-data's non-model baselines) goes
through these functions, so the methods are compared on the same folds with the same definitions. Folds are
grouped (no artist on both sides) because 4Q has many clips per artist and a random split inflates accuracy.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

ECE_BINS = 10
NLL_EPS = 1e-12


def group_folds(
    labels: Sequence[str], groups: Sequence[str], n_splits: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, group-disjoint folds: [(train_idx, test_idx)]. No group appears on both sides (asserted)."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if len(labels) != len(groups):
        raise ValueError(f"labels ({len(labels)}) and groups ({len(groups)}) differ in length")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = []
    for train_idx, test_idx in splitter.split(np.zeros(len(labels)), labels, groups):
        overlap = set(groups[train_idx]) & set(groups[test_idx])
        assert not overlap, f"groups on both sides of a fold: {sorted(overlap)[:5]}"
        folds.append((np.asarray(train_idx), np.asarray(test_idx)))
    return folds


def _reliability(probs: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """Expected calibration error of the top-class confidence, and the per-bin table behind it."""
    conf = probs.max(axis=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins, ece, n = [], 0.0, len(conf)
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        mask = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        count = int(mask.sum())
        acc = float(correct[mask].mean()) if count else None
        mean_conf = float(conf[mask].mean()) if count else None
        if count:
            ece += count / n * abs(acc - mean_conf)
        bins.append({"lo": float(lo), "hi": float(hi), "count": count, "accuracy": acc, "confidence": mean_conf})
    return float(ece), bins


def classification_report(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], probs: np.ndarray | None = None
) -> dict:
    """accuracy, macro_f1, confusion (rows = true, columns = predicted, in `labels` order), per_class; and with
    `probs` [n, len(labels)] (columns in `labels` order): ece (10 bins), nll and the reliability bins."""
    labels = list(labels)
    index = {lab: i for i, lab in enumerate(labels)}
    t = np.array([index[y] for y in y_true], dtype=int)
    p = np.array([index[y] for y in y_pred], dtype=int)
    k = len(labels)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (t, p), 1)
    per_class: dict[str, dict] = OrderedDict()
    f1s = []
    for i, lab in enumerate(labels):
        tp = confusion[i, i]
        predicted = confusion[:, i].sum()
        support = confusion[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[lab] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}
        if support:  # macro over classes present in y_true (sklearn-like when all are present)
            f1s.append(f1)
    report = {
        "n": int(len(t)),
        "accuracy": float((t == p).mean()) if len(t) else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "labels": labels,
        "confusion": confusion.tolist(),
        "per_class": per_class,
    }
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(t), k):
            raise ValueError(f"probs has shape {probs.shape}, expected {(len(t), k)}")
        report["nll"] = float(-np.mean(np.log(np.clip(probs[np.arange(len(t)), t], NLL_EPS, 1.0))))
        report["ece"], report["reliability"] = _reliability(probs, probs.argmax(axis=1) == t)
    return report


def clip_level(window_probs: np.ndarray, clip_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Average window probabilities per clip (clips in first-seen order) -> (clip ids, [n_clips, k])."""
    window_probs = np.asarray(window_probs, dtype=np.float64)
    order: dict[str, int] = {}
    idx = np.array([order.setdefault(c, len(order)) for c in clip_ids], dtype=int)
    sums = np.zeros((len(order), window_probs.shape[1]))
    np.add.at(sums, idx, window_probs)
    counts = np.bincount(idx, minlength=len(order))[:, None]
    return list(order), sums / counts


def summarize_folds(fold_reports: list[dict]) -> dict:
    """Mean and std (population) over folds of accuracy and macro_f1 (and ece/nll when every fold has them)."""
    out: dict[str, float | int] = {"folds": len(fold_reports)}
    for key in ("accuracy", "macro_f1", "ece", "nll"):
        vals = [r[key] for r in fold_reports if key in r]
        if vals and len(vals) == len(fold_reports):
            out[f"{key}_mean"] = float(np.mean(vals))
            out[f"{key}_std"] = float(np.std(vals))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(report: dict, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, saved as PNG."""
    plt = _pyplot()
    cm = np.asarray(report["confusion"], dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or f"acc {report['accuracy']:.3f}  macro-F1 {report['macro_f1']:.3f}", fontsize=9)
    return _save(plt, fig, path)


def _save(plt, fig, path: str | Path) -> Path:
    """Write a figure as PNG (creating the folder) and free it: plots are made in loops over folds."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(report: dict, path: str | Path, title: str = "") -> Path:
    """Reliability diagram (accuracy vs confidence per bin) from a report made with probs."""
    plt = _pyplot()
    bins = [b for b in report.get("reliability", []) if b["count"]]
    fig, ax = plt.subplots(figsize=(4.0, 3.8))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    if bins:
        centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
        ax.bar(centers, [b["accuracy"] for b in bins], width=1.0 / ECE_BINS * 0.9, alpha=0.7, label="accuracy")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="C1", label="per bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or f"ECE {report.get('ece', float('nan')):.3f}", fontsize=9)
    return _save(plt, fig, path)

"""Do the reported valence/arousal point to the right quadrant? And a calibration of their zero that makes them.

The runtime reports valence and arousal as probability-weighted quadrant centres (`moods[i].valence/arousal` in the
model metadata). Their signs name a quadrant, and that quadrant can differ from the label the same probabilities
give: a window at 40 % sad, 35 % calm has a sad label but (with calm's and happy's positive valence) may have a
positive valence. This module measures how often the signs are right on held-out folds, next to the label's
accuracy, and fits a calibration: a per-axis zero point `z`, applied as the monotone, range-keeping map
`(x - z) / (1 - z)` above `z` and `(x - z) / (1 + z)` below it, so the calibrated value changes sign where the
fitted threshold is. The map keeps -1, 1 and the ordering of every value; only the sign boundary moves.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from training.cv import LinearHead, grouped_cv
from training.manifest import MOOD_COORDINATES
from training.metrics import group_folds
from training.recipe import FOLD_SEED, INNER_FOLDS

AXES = ("valence", "arousal")
ZERO_GRID = np.round(np.arange(-0.5, 0.5001, 0.01), 2)  # candidate zero points, fitted on training folds only


def signs_of(labels: Sequence[str], coords: dict[str, tuple[float, float]]) -> np.ndarray:
    """[n_labels, 2] sign (+1/-1) of each label's valence and arousal (its quadrant)."""
    return np.sign(np.array([coords[lab] for lab in labels], dtype=float))


def coordinates(probs: np.ndarray, labels: Sequence[str], coords: dict[str, tuple[float, float]]) -> np.ndarray:
    """[n, 2] probability-weighted centres: what the runtime reports."""
    return np.asarray(probs) @ np.array([coords[lab] for lab in labels], dtype=float)


def calibrate(va: np.ndarray, zero: Sequence[float]) -> np.ndarray:
    """Move each axis' zero to `zero[axis]`, keeping [-1, 1] and the order (see the module docstring)."""
    va = np.asarray(va, dtype=float)
    z = np.asarray(zero, dtype=float)
    return np.where(va >= z, (va - z) / (1 - z), (va - z) / (1 + z))


def fit_zero(va: np.ndarray, y: np.ndarray, label_signs: np.ndarray) -> tuple[float, float]:
    """Per axis, the zero point (from ZERO_GRID) whose signs agree most often with the true quadrant's; the grid
    point nearest 0 among ties, so no evidence means no change."""
    out = []
    for axis in range(2):
        truth = label_signs[y, axis]
        hits = [(np.sign(va[:, axis] - z + 1e-12) == truth).mean() for z in ZERO_GRID]
        best = max(hits)
        out.append(float(min((z for z, h in zip(ZERO_GRID, hits) if h == best), key=abs)))
    return out[0], out[1]


def agreement(va: np.ndarray, y: np.ndarray, label_signs: np.ndarray) -> dict:
    """How often the signs give the true quadrant (both axes right), and each axis alone."""
    s = np.sign(va + 1e-12)
    truth = label_signs[y]
    return {"quadrant": float((s == truth).all(axis=1).mean()),
            "valence": float((s[:, 0] == truth[:, 0]).mean()), "arousal": float((s[:, 1] == truth[:, 1]).mean())}


def held_out_zero(Xs: list[np.ndarray], clip_idx: np.ndarray, y_clip: np.ndarray, groups: np.ndarray, labels,
                  train_c: np.ndarray, C, coords: dict[str, tuple[float, float]] = MOOD_COORDINATES) -> tuple[float, float]:
    """The zero points fitted on clips `train_c` only: their windows' held-out probabilities come from a grouped
    inner CV over those clips (the same head and C as the model), so the calibration never sees an outer test clip
    and never looks at probabilities of a head that was fitted on the same windows."""
    inner = group_folds([str(v) for v in y_clip[train_c]], groups[train_c].tolist(), INNER_FOLDS, FOLD_SEED)
    folds = [(train_c[tr], train_c[te]) for tr, te in inner]
    probs = grouped_cv(Xs, clip_idx, y_clip, groups, labels, folds, lambda: LinearHead(len(labels), C=C)).window_probs
    tr = np.isin(clip_idx, train_c)
    return fit_zero(coordinates(probs[tr], labels, coords), y_clip[clip_idx][tr], signs_of(labels, coords))

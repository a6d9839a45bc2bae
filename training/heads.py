"""Linear mood/genre heads on a frozen embedding: windows -> embeddings -> logistic regression -> logits.

The same few functions serve evaluation (a head fitted per fold on the training fold's windows only) and export
(a head fitted on all labelled windows, then folded into the network's final Linear layer so the ONNX file computes
it). Heads are trained per window (3 s patch), not on clip averages, because the runtime classifies single windows;
clip-level results average the window probabilities.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from training.teacher import HOP_FRAMES, PATCH_FRAMES, cut_patches, patch_starts

LR_C = 0.5  # inverse L2 strength of the logistic-regression heads when not selected by inner CV
C_GRID = (0.001, 0.005, 0.02, 0.1, 0.5)  # candidates for `select_C` (inner grouped CV on the training data only); 0.001 added
# when strict CV kept picking the old lower edge (0.005) on every fold
INNER_FOLDS = 3
LR_MAX_ITER = 2000
EMBED_BATCH = 64


def windows(mels: list[np.ndarray], patch: int = PATCH_FRAMES, hop: int = HOP_FRAMES) -> tuple[list[np.ndarray], np.ndarray]:
    """Cut every clip on the runtime's grid: (per-clip [n_i, n_mels, patch] arrays, clip index per window)."""
    per_clip = [cut_patches(m, patch_starts(m.shape[1], patch, hop), patch) for m in mels]
    clip_idx = np.concatenate([np.full(len(p), i) for i, p in enumerate(per_clip)])
    return per_clip, clip_idx


def embed(fn: Callable[[np.ndarray], np.ndarray], per_clip: list[np.ndarray], batch: int = EMBED_BATCH) -> np.ndarray:
    """Apply an embedding function batch-wise to all windows -> [n_windows, d]."""
    allw = np.concatenate(per_clip)
    return np.concatenate([fn(allw[i : i + batch]) for i in range(0, len(allw), batch)])


HEAD_INPUTS = ("embedding", "distill")


def torch_embedder(net, head_input: str = "embedding") -> Callable[[np.ndarray], np.ndarray]:
    """The features a linear head sees, as a numpy function (eval mode, no grad): the student's embedding, or its
    distillation output (the predicted teacher embedding + tag logits, itself a linear map of the embedding)."""
    import torch

    if head_input not in HEAD_INPUTS:
        raise ValueError(f"head input must be one of {HEAD_INPUTS}")
    net.eval()

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            e = net.embed(torch.from_numpy(x))
            return (net.distill(e) if head_input == "distill" else e).numpy()

    return fn


def fit_linear(X: np.ndarray, y: np.ndarray, n_classes: int, C: float = LR_C, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standardise + multinomial logistic regression, folded into one affine map: logits = X @ W.T + b."""
    from sklearn.linear_model import LogisticRegression

    mean = X.mean(axis=0)
    scale = X.std(axis=0) + 1e-6
    lr = LogisticRegression(C=C, max_iter=LR_MAX_ITER, random_state=seed, class_weight="balanced")
    lr.fit((X - mean) / scale, y)
    W = np.zeros((n_classes, X.shape[1]))
    b = np.full(n_classes, -30.0)  # a class absent from training gets ~zero probability
    for k, cls in enumerate(lr.classes_):
        W[cls] = lr.coef_[k] / scale if len(lr.classes_) > 2 else 0.0
        b[cls] = lr.intercept_[k] - (lr.coef_[k] / scale) @ mean if len(lr.classes_) > 2 else 0.0
    if len(lr.classes_) == 2:  # binary sklearn models have one coefficient row: logit(class1) - logit(class0)
        w = lr.coef_[0] / scale
        W[lr.classes_[1]], b[lr.classes_[1]] = w, lr.intercept_[0] - w @ mean
        W[lr.classes_[0]], b[lr.classes_[0]] = 0.0, 0.0
    return W.astype(np.float32), b.astype(np.float32)


def select_C(X: np.ndarray, y: np.ndarray, groups: np.ndarray, n_classes: int, grid=C_GRID, seed: int = 0) -> float:
    """Pick C by grouped inner cross-validation on training windows only (window log-likelihood), so the outer test
    fold never influences the choice."""
    from training.metrics import group_folds

    clip_groups = np.asarray(groups)
    folds = group_folds(y.astype(str).tolist(), clip_groups.tolist(), INNER_FOLDS, seed)
    scores = []
    for C in grid:
        nll = 0.0
        for tr, te in folds:
            W, b = fit_linear(X[tr], y[tr], n_classes, C, seed)
            p = linear_probs(X[te], W, b)
            nll -= np.log(np.clip(p[np.arange(len(te)), y[te]], 1e-12, 1)).sum()
        scores.append(nll)
    return float(grid[int(np.argmin(scores))])


def linear_probs(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    return softmax(X @ W.T + b)


def ensemble_probs(Xs: list[np.ndarray], heads: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Class probabilities of several members' linear heads: softmax of their mean logits, as `MoodEnsemble` computes."""
    return softmax(np.mean([X @ W.T + b for X, (W, b) in zip(Xs, heads)], axis=0))


def per_member(values: list):
    """How a per-member quantity (e.g. each head's C) is recorded: the plain value for a single student, the list
    for an ensemble, so single-student reports and metadata keep their old shape."""
    return values[0] if len(values) == 1 else values


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def set_linear(layer, W: np.ndarray, b: np.ndarray, through=None) -> None:
    """Copy a fitted head into a torch Linear layer (the exported graph then computes it). With `through` (the
    distillation Linear the head was fitted on), fold it in: W (A e + c) + b = (W A) e + (W c + b)."""
    import torch

    if through is not None:
        A = through.weight.detach().numpy().astype(np.float64)
        c = through.bias.detach().numpy().astype(np.float64)
        W, b = (W.astype(np.float64) @ A).astype(np.float32), (W.astype(np.float64) @ c + b).astype(np.float32)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
        layer.bias.copy_(torch.from_numpy(b))

"""What a head sees: windows -> a student's embeddings, and a fitted head copied into the network.

The heads themselves (standardised, class-balanced logistic regression, C by inner grouped CV) are
`training.cv.LinearHead`, the same for the student and every baseline. They are trained per window (3 s patch), not
on clip averages, because the runtime classifies single windows; clip-level results average window probabilities.
Export fits the same head on all labelled windows and folds it into the network's final Linear layer, so the ONNX
file computes exactly what evaluation scored.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from training.recipe import HOP_FRAMES, PATCH_FRAMES
from training.teacher import cut_patches, patch_starts

EMBED_BATCH = 64
HEAD_INPUTS = ("embedding", "distill")


def windows(mels: list[np.ndarray], patch: int = PATCH_FRAMES, hop: int = HOP_FRAMES) -> tuple[list[np.ndarray], np.ndarray]:
    """Cut every clip on the runtime's grid: (per-clip [n_i, n_mels, patch] arrays, clip index per window)."""
    per_clip = [cut_patches(m, patch_starts(m.shape[1], patch, hop), patch) for m in mels]
    clip_idx = np.concatenate([np.full(len(p), i) for i, p in enumerate(per_clip)])
    return per_clip, clip_idx


def embed(fn: Callable[[np.ndarray], np.ndarray], per_clip: list[np.ndarray], batch: int = EMBED_BATCH) -> np.ndarray:
    """Apply an embedding function batch-wise to all windows -> [n_windows, d]."""
    allw = np.concatenate(per_clip)
    return np.concatenate([fn(allw[i : i + batch]) for i in range(0, len(allw), batch)])


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

"""The teachers' RBF-SVM genre classifier as a library: the ceiling measures it, the genre stage distils its posterior.

On Emotify, an RBF SVM on both musicnn teachers' standardised window embeddings is far better than any linear head
on the same features (`docs/evaluation/ceiling_genre_teachers.md`), and the small students never reach it. A student
can learn more from that classifier than from the four hard labels: its posterior says how rock-like a classical
window sounds, and it can be computed on audio without genre labels (all of 4Q), so the genre stage gets genre
targets on every window it trains on (`train --genre-posterior`).

Strictness is by construction: `window_decisions` fits the SVM on the labelled clips it is given and nothing else.
`train` passes the clips it trains on (a cross-validation fold's test clips are already removed there), so a student
that scores fold K learns from an SVM that never saw fold K. Decision values are cached per (training clips, scored
clips, teachers, C), because the SVM is refitted by every run otherwise.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from training.cache import atomic_save, cache_dir, file_key
from training.cv import softmax
from training.manifest import GENRES_EMOTIFY, Item
from training.recipe import HOP_FRAMES, SVM_C
from training.svm import SoftmaxSVC

POSTERIOR_TEACHERS = ("msd", "mtt")  # the SVM's features: both teachers' embeddings side by side


def teachers_embeddings(items: Sequence[Item], cache: Path | None = None, names: Sequence[str] = POSTERIOR_TEACHERS,
                        hop_frames: int = HOP_FRAMES) -> list[np.ndarray]:
    """Per clip: every teacher's embedding of each grid window, side by side ([n_windows_i, 200 * len(names)]); the
    rows line up with the distillation targets of `train` (same grid, same order)."""
    from training.teacher import clip_teacher_features

    return clip_teacher_features(items, cache, names, ("embedding",), hop_frames, progress=False)


def _cache_key(train: Sequence[tuple[str, int]], scored: Sequence[str], names: Sequence[str], C: float, hop: int) -> str:
    spec = {"train": list(train), "scored": list(scored), "teachers": list(names), "C": C, "hop": hop, "v": 1}
    return hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:20]


def window_decisions(items: Sequence[Item], genre: np.ndarray, cache: Path | None = None,
                     names: Sequence[str] = POSTERIOR_TEACHERS, C: float = SVM_C,
                     hop_frames: int = HOP_FRAMES) -> np.ndarray:
    """The teachers' SVM decision values [n_windows, n_genres] on every window of `items` (clips in order, windows in
    grid order), the SVM fitted on the windows of the clips with a genre label (`genre[c] >= 0`) among `items` only.
    Cached under <cache>/teacher_svm/."""
    labelled = np.flatnonzero(genre >= 0)
    if len(set(genre[labelled].tolist())) < 2:
        raise ValueError("the teachers' genre SVM needs labelled clips of at least two genres among the training clips")
    keys = [file_key(it.file) for it in items]
    key = _cache_key(sorted((keys[c], int(genre[c])) for c in labelled), keys, names, C, hop_frames)
    path = cache_dir(cache) / "teacher_svm" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["decision"]
    X = teachers_embeddings(items, cache, names, hop_frames)
    Xtr = np.concatenate([X[c] for c in labelled])
    ytr = np.concatenate([np.full(len(X[c]), genre[c]) for c in labelled])
    print(f"teachers' genre SVM: fitting on {len(labelled)} labelled clips ({len(Xtr)} windows)", file=sys.stderr)
    svm = SoftmaxSVC(C).fit(Xtr, ytr)
    d = np.full((sum(len(x) for x in X), len(GENRES_EMOTIFY)), -30.0, dtype=np.float32)  # a class absent: ~zero
    d[:, np.asarray(svm.classes_, dtype=int)] = svm.decision_function(np.concatenate(X))
    atomic_save(path, decision=d)
    return d


__all__ = ["SoftmaxSVC", "softmax", "teachers_embeddings", "window_decisions", "POSTERIOR_TEACHERS"]

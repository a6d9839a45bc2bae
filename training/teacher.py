"""The pretrained musicnn teachers (MSD and MagnaTagATune): their outputs on 3 s patches, cached on disk.

musicnn is ~10x too slow for the real-time default model, but its 200-d embedding separates 4Q moods much better
than anything we can train from 676 clips, so the small student learns to reproduce its outputs (distillation) and
the teacher's features + logistic regression are the strongest baseline. Two musicnn models exist (the `musicnn`
0.1.0 wheel, ISC): one trained on the Million Song Dataset's tags (era, scene, genre words) and one on
MagnaTagATune's (instrumentation and texture); they describe music differently, so a student can learn from both.
Their front end is exactly the runtime's `FrontEndSpec` with `quantize="float16"` (`training.recipe.FRONTEND`); the
runtime front end does the arithmetic in float32, which avoids the numpy-2 float16 overflow of the original
extractor (see ../shared/models/README.md). The student uses the same recipe, so one log-mel cache serves all.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from training.cache import atomic_save, cache_dir, clip_logmel, file_key
from training.manifest import REPO, Item
from training.recipe import DEFAULT_TEACHERS, FRONTEND, HOP_FRAMES, PATCH_FRAMES

MODELS_DIR = REPO.parent / "shared" / "models"
OUTPUTS = {"embedding": "embedding:0", "logits": "logits:0", "max_pool": "max_pool:0"}
BATCH = 4  # small batches are faster per patch on one thread (cache-friendly)
MUSICNN_PAPER = ("J. Pons and X. Serra, \"musicnn: pre-trained convolutional neural networks for music audio tagging\", "
                 "ISMIR 2019 late-breaking/demo")


@dataclass(frozen=True)
class TeacherModel:
    """One teacher network: where it is, how its cache folder is named, how to cite it."""

    name: str  # the short name used on the command line (`train --teachers msd mtt`)
    file: str  # ONNX file in ../shared/models
    tags: str  # what its tag vocabulary is (for the card)
    cache_prefix: str  # "" for MSD keeps the cache folders of the first teacher valid

    @property
    def path(self) -> Path:
        return MODELS_DIR / self.file

    @property
    def citation(self) -> str:
        return f"{MUSICNN_PAPER} ({self.tags} model, ISC licence)"


TEACHERS = {
    "msd": TeacherModel("msd", "msd_musicnn.onnx", "MSD", ""),
    "mtt": TeacherModel("mtt", "mtt_musicnn.onnx", "MagnaTagATune", "mtt-"),
}
TEACHER_PATH = TEACHERS["msd"].path  # the first teacher; the accurate variant and the fine-tuning ceiling use it
TEACHER_LICENSE = MODELS_DIR / "msd_musicnn.LICENSE.md"  # one ISC notice covers both (same wheel, same authors)
CITATION = TEACHERS["msd"].citation


def teacher_model(name: str) -> TeacherModel:
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; known: {', '.join(TEACHERS)}")
    return TEACHERS[name]


def teacher_available(name: str = "msd") -> bool:
    return teacher_model(name).path.is_file()


def patch_starts(n_frames: int, patch: int = PATCH_FRAMES, hop: int = HOP_FRAMES) -> np.ndarray:
    """Start frames of patches on a regular grid; a clip shorter than a patch gets one (shorter) patch at 0."""
    if n_frames <= patch:
        return np.zeros(1, dtype=int)
    starts = np.arange(0, n_frames - patch + 1, hop)
    return starts.astype(int)


def cut_patches(mel: np.ndarray, starts: np.ndarray, patch: int = PATCH_FRAMES) -> np.ndarray:
    """[n_mels, frames] -> [len(starts), n_mels, patch], edge-padded on the right for clips shorter than a patch."""
    if mel.shape[1] < patch:
        mel = np.pad(mel, ((0, 0), (0, patch - mel.shape[1])), mode="edge")
    return np.stack([mel[:, s : s + patch] for s in starts]).astype(np.float32)


class Teacher:
    """onnxruntime session on a musicnn graph; input is the runtime's log-mel layout [b, n_mels, frames]."""

    def __init__(self, path: str | os.PathLike[str] = TEACHER_PATH, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, patches: np.ndarray) -> dict[str, np.ndarray]:
        """[b, 96, frames] -> {embedding [b,200], logits [b,50], max_pool [b,753]} (float32)."""
        x = np.ascontiguousarray(np.transpose(patches, (0, 2, 1)), dtype=np.float32)  # musicnn is time-first
        out = self.session.run(list(OUTPUTS.values()), {self.input: x})
        return {k: v.astype(np.float32) for k, v in zip(OUTPUTS, out)}


def _cache_path(file: str, cache: Path | None, hop_frames: int, name: str) -> Path:
    folder = f"{teacher_model(name).cache_prefix}{FRONTEND.key()}-p{PATCH_FRAMES}-h{hop_frames}"
    return cache_dir(cache) / "teacher" / folder / f"{file_key(file)}.npz"


def clip_teacher_outputs(
    file: str, teacher: Teacher | None, cache: Path | None = None, hop_frames: int = HOP_FRAMES, name: str = "msd"
) -> dict[str, np.ndarray]:
    """Teacher `name`'s outputs on every grid patch of one clip, cached: {starts, embedding, logits, max_pool}."""
    path = _cache_path(file, cache, hop_frames, name)
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if teacher is None:
        teacher = Teacher(teacher_model(name).path)
    mel = clip_logmel(file, FRONTEND, cache)
    starts = patch_starts(mel.shape[1], PATCH_FRAMES, hop_frames)
    patches = cut_patches(mel, starts)
    parts = [teacher(patches[i : i + BATCH]) for i in range(0, len(patches), BATCH)]
    out = {"starts": starts}
    out.update({k: np.concatenate([p[k] for p in parts]) for k in OUTPUTS})
    atomic_save(path, **out)
    return out


def dataset_teacher_outputs(
    items: Iterable[Item], cache: Path | None = None, hop_frames: int = HOP_FRAMES, threads: int = 1,
    progress: bool = True, name: str = "msd",
) -> list[dict[str, np.ndarray]]:
    """Teacher `name`'s outputs for every item, in order (its session is only built if something is missing)."""
    from tqdm import tqdm

    items = list(items)
    teacher: Teacher | None = None
    outs = []
    for it in tqdm(items, desc=f"teacher {name}", disable=not progress, file=sys.stderr):
        if teacher is None and not _cache_path(it.file, cache, hop_frames, name).is_file():
            teacher = Teacher(teacher_model(name).path, threads=threads)
        outs.append(clip_teacher_outputs(it.file, teacher, cache, hop_frames, name))
    return outs


def clip_teacher_features(items: Sequence[Item], cache: Path | None = None, names: Sequence[str] = DEFAULT_TEACHERS,
                          parts: Sequence[str] = ("embedding", "logits"), hop_frames: int = HOP_FRAMES,
                          progress: bool = True) -> list[np.ndarray]:
    """Per clip: the chosen outputs of every teacher in `names` on each grid window, side by side -> [n_windows_i, d]
    (for callers that need to know which windows belong to which clip)."""
    per_teacher = [dataset_teacher_outputs(items, cache, hop_frames, name=n, progress=progress) for n in names]
    return [np.concatenate([o[p] for o in outs for p in parts], axis=1) for outs in zip(*per_teacher)]


def teacher_features(items: Sequence[Item], cache: Path | None = None, names: Sequence[str] = DEFAULT_TEACHERS,
                     parts: Sequence[str] = ("embedding", "logits"), hop_frames: int = HOP_FRAMES) -> np.ndarray:
    """Per window: the chosen outputs of every teacher in `names`, concatenated -> [n_windows, d] (the rows line up
    with `training.heads.windows` on the same items). Used as distillation targets and as baseline features."""
    return np.concatenate(clip_teacher_features(items, cache, names, parts, hop_frames))


__all__ = [
    "TEACHERS", "TeacherModel", "teacher_model", "TEACHER_PATH", "Teacher", "teacher_available",
    "patch_starts", "cut_patches", "clip_teacher_outputs", "dataset_teacher_outputs", "clip_teacher_features",
    "teacher_features", "CITATION",
]

"""The pretrained musicnn (MSD) teacher: its front end, its outputs on 3 s patches, cached on disk.

musicnn is ~10x too slow for the real-time default model, but its 200-d embedding separates 4Q moods much better
than anything we can train from 676 clips, so the small student learns to reproduce its outputs (distillation) and
the teacher's features + logistic regression are the strongest baseline. Its front end is exactly the runtime's
`FrontEndSpec` with `quantize="float16"` (librosa mel power rounded through float16, then log10(10000 x + 1)); the
runtime front end does the arithmetic in float32, which avoids the numpy-2 float16 overflow of the original
extractor (see ../shared/models/README.md). The student uses the same recipe, so one log-mel cache serves both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from sendreturn_mood.frontend import FrontEndSpec
from training.features import cache_dir, clip_logmel, file_key
from training.manifest import REPO, Item

TEACHER_PATH = REPO.parent / "shared" / "models" / "msd_musicnn.onnx"
TEACHER_LICENSE = TEACHER_PATH.with_name("msd_musicnn.LICENSE.md")
TEACHER_SPEC = FrontEndSpec(
    sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, fmin=0.0, fmax=8000.0, mel_norm="slaney",
    log="log10_scaled", log_scale=10000.0, log_offset=1.0, quantize="float16",
)
PATCH_FRAMES = 187  # 3 s, what musicnn was trained on
HOP_FRAMES = 94  # ~1.5 s between cached patches (the runtime hop): ~19 distillation targets per 30 s clip
OUTPUTS = {"embedding": "embedding:0", "logits": "logits:0", "max_pool": "max_pool:0"}
BATCH = 4  # small batches are faster per patch on one thread (cache-friendly)
CITATION = (
    "J. Pons and X. Serra, \"musicnn: pre-trained convolutional neural networks for music audio tagging\", "
    "ISMIR 2019 late-breaking/demo (MSD model, ISC licence)"
)


def teacher_available(path: Path = TEACHER_PATH) -> bool:
    return Path(path).is_file()


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
    """onnxruntime session on the musicnn graph; input is the runtime's log-mel layout [b, n_mels, frames]."""

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


def clip_teacher_outputs(
    file: str, teacher: Teacher | None, cache: Path | None = None, hop_frames: int = HOP_FRAMES
) -> dict[str, np.ndarray]:
    """Teacher outputs on every grid patch of one clip, cached: {starts, embedding, logits, max_pool}."""
    path = cache_dir(cache) / "teacher" / f"{TEACHER_SPEC.key()}-p{PATCH_FRAMES}-h{hop_frames}" / f"{file_key(file)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if teacher is None:
        teacher = Teacher()
    mel = clip_logmel(file, TEACHER_SPEC, cache)
    starts = patch_starts(mel.shape[1], PATCH_FRAMES, hop_frames)
    patches = cut_patches(mel, starts)
    parts = [teacher(patches[i : i + BATCH]) for i in range(0, len(patches), BATCH)]
    out = {"starts": starts}
    out.update({k: np.concatenate([p[k] for p in parts]) for k in OUTPUTS})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def dataset_teacher_outputs(
    items: Iterable[Item], cache: Path | None = None, hop_frames: int = HOP_FRAMES, threads: int = 1, progress: bool = True
) -> list[dict[str, np.ndarray]]:
    """Teacher outputs for every item, in order (the teacher session is only built if something is missing)."""
    from tqdm import tqdm

    items = list(items)
    teacher: Teacher | None = None
    outs = []
    for it in tqdm(items, desc="teacher", disable=not progress, file=sys.stderr):
        path = cache_dir(cache) / "teacher" / f"{TEACHER_SPEC.key()}-p{PATCH_FRAMES}-h{hop_frames}" / f"{file_key(it.file)}.npz"
        if teacher is None and not path.is_file():
            teacher = Teacher(threads=threads)
        outs.append(clip_teacher_outputs(it.file, teacher, cache, hop_frames))
    return outs


__all__ = [
    "TEACHER_PATH", "TEACHER_SPEC", "PATCH_FRAMES", "HOP_FRAMES", "Teacher", "teacher_available", "patch_starts",
    "cut_patches", "clip_teacher_outputs", "dataset_teacher_outputs", "CITATION",
]

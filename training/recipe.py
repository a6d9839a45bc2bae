"""The shipped recipe's constants, in one place: front end, window grid, folds, linear heads, training stages.

Every command reads these instead of keeping its own copy, so a comparison between two models (or between the
student and a baseline) can only differ in what the experiment changes. `docs/evaluation/reproduce.md` gives the
commands that use them; measured results live there and in the model card, not here.
"""

from __future__ import annotations

from sendreturn_mood.audio.frontend import FrontEndSpec
from sendreturn_mood.config import DEFAULTS

# -- front end and window grid (the runtime's geometry; musicnn's own recipe so one log-mel cache serves teacher
# and student) -------------------------------------------------------------------------------------------------
FRONTEND = FrontEndSpec(
    sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, fmin=0.0, fmax=8000.0, mel_norm="slaney",
    log="log10_scaled", log_scale=10000.0, log_offset=1.0, quantize="float16",
)
PATCH_FRAMES = 187  # 3 s, what musicnn was trained on and what the runtime classifies
RUNTIME_HOP_SECONDS = float(DEFAULTS["analysis"]["hop_seconds"])  # the server's default hop (default_config.yaml)
HOP_FRAMES = FRONTEND.seconds_to_frames(RUNTIME_HOP_SECONDS)  # 94 frames = 1.5 s between windows: ~19 per 30 s clip

# -- cross-validation: the one definition of the folds (`training.cv.dataset_folds`) --------------------------------
N_SPLITS = 5
FOLD_SEED = 0

# -- linear heads: one rule for every head, the student's and every baseline's (`training.cv.LinearHead`) -----------
C_GRID = (0.001, 0.005, 0.02, 0.1, 0.5, 2.0)  # inverse L2 strength candidates (log-spaced, x4-5 apart)
INNER_FOLDS = 3  # grouped inner CV on the training fold only; C maximises held-out window log-likelihood
LR_MAX_ITER = 2000

# -- teachers ----------------------------------------------------------------------------------------------------
DEFAULT_TEACHERS = ("msd",)  # the distillation targets of the 1.x students (`training.teacher.TEACHERS`)

# -- the training stages of the shipped chain (train options; `python -m training chain` runs them per fold) -------
DISTILL = {"epochs": 8}  # label-free distillation on the mood data's audio
FINE_TUNE = {"supervised": True, "ce_weight": 1.0, "epochs": 2, "lr": 0.001, "wise": 0.5}  # mood labels, WiSE average
GENRE_BRANCH = {"supervised": True, "tasks": ["genre"], "ce_weight": 1.0, "epochs": 4, "patience": 4, "lr": 0.001}

# -- the accurate variant (exported_models/mood_musicnn.onnx, `python -m training.accurate`; its plan:
# docs/evaluation/plans/accurate_two_teachers.md) -------------------------------------------------------------
SVM_C = 1.0  # the RBF SVM on the teachers' features (`training.svm.SoftmaxSVC`): the ceiling study, this head and the
# genre posterior of `train --genre-posterior` (`training.teacher_svm`)
ACCURATE_TEACHERS = ("msd", "mtt")  # teachers whose embedding + tag logits the heads read
ACCURATE_HEADS = {"mood": "linear", "genre": "svm"}  # the head per task, fixed by the plan
ACCURATE_MAX_MB = 40  # above this file size the plan's fallback genre head (rff) is used instead of the SVM

# -- the teachers' genre posterior as a genre-stage target (`train --genre-posterior`, `training.teacher_svm`) ------
GENRE_POSTERIOR = {"temperature": 1.0, "weight": 1.0}  # softmax temperature of SVM decisions and student logits;
# weight of the soft cross-entropy to that posterior, on every window (the true-label cross-entropy stays)

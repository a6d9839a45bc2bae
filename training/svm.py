"""An RBF SVM as a window head: its decision values as window "probabilities", and the same computation as ONNX ops.

The teachers' features separate Emotify's genres much better with an RBF kernel than with a linear head, so the
accurate variant ships an SVM. Two things have to hold for that: the head must produce per-window scores that the
clip vote can average (scikit-learn deprecated `SVC(probability=True)`; a softmax of `decision_function` ranks the
classes, which is all the vote needs), and the exported graph must compute exactly what was evaluated. So the graph
is not an approximation of the SVM (random features would be): it is scikit-learn's own `decision_function` with
`decision_function_shape="ovr"`, which is the one-vs-one classifiers' votes plus their transformed confidences
(`sklearn.utils.multiclass._ovr_decision_function`), written as ONNX ops. The runtime's softmax over that output then
gives the probabilities that were evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from training.cv import softmax
from training.recipe import SVM_C


class SoftmaxSVC:
    """Standardise + RBF SVM (gamma "scale"); window probabilities = softmax of its one-vs-rest decision values."""

    def __init__(self, C: float = SVM_C) -> None:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        self.model = make_pipeline(StandardScaler(), SVC(C=C, decision_function_shape="ovr"))

    def fit(self, X: np.ndarray, y: np.ndarray) -> "SoftmaxSVC":
        self.model.fit(X, y)
        self.classes_ = self.model.classes_
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.model.decision_function(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(self.decision_function(X))


@dataclass
class SVMParts:
    """A fitted `SoftmaxSVC` as plain arrays: what the graph needs. Pair k = (i, j), i < j, in scikit-learn's order;
    its decision value is `K(x) @ coef[:, k] + intercept[k]`, positive for class i."""

    mean: np.ndarray  # [d] the scaler's mean
    scale: np.ndarray  # [d] the scaler's scale
    support: np.ndarray  # [n_sv, d] support vectors (standardised space)
    gamma: float
    coef: np.ndarray  # [n_sv, n_pairs] dual coefficients laid out per pair
    intercept: np.ndarray  # [n_pairs]
    pairs: list[tuple[int, int]]
    n_classes: int

    @property
    def vote_matrix(self) -> np.ndarray:
        """[n_pairs, n_classes]: +1 at (k, i), -1 at (k, j): both the vote and the confidence bookkeeping."""
        D = np.zeros((len(self.pairs), self.n_classes))
        for k, (i, j) in enumerate(self.pairs):
            D[k, i], D[k, j] = 1.0, -1.0
        return D


def svm_parts(svc: SoftmaxSVC) -> SVMParts:
    """Read scaler, support vectors and libsvm's dual coefficients (row j-1 holds class i's coefficients against class
    j, row i class j's against class i) into the per-pair layout."""
    scaler, model = svc.model[0], svc.model[-1]
    n = len(model.classes_)
    if not np.array_equal(model.classes_, np.arange(n)):
        raise ValueError(f"the SVM must be fitted on label indices 0..n-1, got classes {model.classes_}")
    bounds = np.concatenate([[0], np.cumsum(model.n_support_)])
    pairs = list(combinations(range(n), 2))
    coef = np.zeros((len(model.support_vectors_), len(pairs)))
    for k, (i, j) in enumerate(pairs):
        si, sj = slice(bounds[i], bounds[i + 1]), slice(bounds[j], bounds[j + 1])
        coef[si, k] = model.dual_coef_[j - 1, si]
        coef[sj, k] = model.dual_coef_[i, sj]
    return SVMParts(mean=scaler.mean_.copy(), scale=scaler.scale_.copy(), support=model.support_vectors_.copy(),
                    gamma=float(model._gamma), coef=coef, intercept=model.intercept_.copy(), pairs=pairs, n_classes=n)


def pairwise_decisions(parts: SVMParts, X: np.ndarray) -> np.ndarray:
    """[n, n_pairs] one-vs-one decision values (float64), as the graph computes them."""
    Z = (X.astype(np.float64) - parts.mean) / parts.scale
    d2 = (Z**2).sum(1, keepdims=True) - 2 * Z @ parts.support.T + (parts.support**2).sum(1)
    return np.exp(-parts.gamma * d2) @ parts.coef + parts.intercept


def ovr_from_pairs(parts: SVMParts, dec: np.ndarray) -> np.ndarray:
    """scikit-learn's ovr decision values from the pairwise ones: votes + confidences / (3 (|confidences| + 1))."""
    D = parts.vote_matrix
    votes = (dec >= 0).astype(np.float64) @ D + np.clip(-D, 0, None).sum(0)  # i wins when dec >= 0, else j
    conf = dec @ D
    return votes + conf / (3 * (np.abs(conf) + 1))


def onnx_head(parts: SVMParts, features: str, output: str, prefix: str = "genre_svm"):
    """ONNX nodes and float32 initializers computing `ovr_from_pairs(pairwise_decisions(x))` from `features` [b, d]
    into `output` [b, n_classes]: standardise -> squared distances (one Gemm) -> exp(-gamma d) -> pairwise decisions
    (one Gemm) -> votes and transformed confidences (two Gemms and elementwise ops)."""
    from onnx import helper, numpy_helper

    D = parts.vote_matrix
    consts = {
        "mean": parts.mean, "scale": parts.scale, "sv": parts.support, "sv_sq": (parts.support**2).sum(1),
        "neg_gamma": np.array(-parts.gamma), "coef": parts.coef, "intercept": parts.intercept,
        "votes": D, "votes_base": np.clip(-D, 0, None).sum(0), "zero": np.array(0.0), "one": np.array(1.0),
        "three": np.array(3.0),
    }
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), f"{prefix}/{k}") for k, v in consts.items()]
    c = {k: f"{prefix}/{k}" for k in consts}
    t = {k: f"{prefix}/{k}_out" for k in ("centred", "z", "zz", "cross", "d2", "scaled", "kernel", "dec", "won",
                                          "wonf", "votes", "conf", "absconf", "den1", "den", "tconf")}
    mk = helper.make_node
    nodes = [
        mk("Sub", [features, c["mean"]], [t["centred"]]),
        mk("Div", [t["centred"], c["scale"]], [t["z"]]),
        mk("ReduceSumSquare", [t["z"]], [t["zz"]], axes=[1], keepdims=1),
        mk("Gemm", [t["z"], c["sv"], c["sv_sq"]], [t["cross"]], alpha=-2.0, beta=1.0, transB=1),
        mk("Add", [t["cross"], t["zz"]], [t["d2"]]),
        mk("Mul", [t["d2"], c["neg_gamma"]], [t["scaled"]]),
        mk("Exp", [t["scaled"]], [t["kernel"]]),
        mk("Gemm", [t["kernel"], c["coef"], c["intercept"]], [t["dec"]]),
        mk("GreaterOrEqual", [t["dec"], c["zero"]], [t["won"]]),
        mk("Cast", [t["won"]], [t["wonf"]], to=1),
        mk("Gemm", [t["wonf"], c["votes"], c["votes_base"]], [t["votes"]]),
        mk("MatMul", [t["dec"], c["votes"]], [t["conf"]]),
        mk("Abs", [t["conf"]], [t["absconf"]]),
        mk("Add", [t["absconf"], c["one"]], [t["den1"]]),
        mk("Mul", [t["den1"], c["three"]], [t["den"]]),
        mk("Div", [t["conf"], t["den"]], [t["tconf"]]),
        mk("Add", [t["votes"], t["tconf"]], [output]),
    ]
    for n in nodes:
        n.name = f"{prefix}/{n.output[0].rsplit('/', 1)[-1]}"
    return nodes, inits


def make_head(kind: str, n_classes: int):
    """A head of the accurate variant's kinds by name: the spine's linear head, this RBF SVM (C = `SVM_C`), or the
    random-feature head."""
    from training.cv import LinearHead, RandomFeatureHead, SklearnModel

    if kind == "linear":
        return LinearHead(n_classes)
    if kind == "svm":
        return SklearnModel(SoftmaxSVC(SVM_C), n_classes)
    if kind == "rff":
        return RandomFeatureHead(n_classes)
    raise ValueError(f"unknown head {kind!r}")

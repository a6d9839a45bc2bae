"""The model contract between training and runtime: one ONNX file that describes itself.

A model file carries one JSON value under the ONNX `metadata_props` key `METADATA_KEY`: the front-end recipe,
patch length, mood labels with valence/arousal coordinates, optional genre labels, provenance and metrics. The
runtime builds everything from it, so shipping a new model never needs a code change. Files without it, or with
an unknown schema version, are refused with a message that says what is missing.

Graph contract: input `logmel` float32 [batch, n_mels, frames]; output `mood_logits` [batch, n_moods] (required),
`genre_logits` [batch, n_genres] and `embedding` [batch, d] (optional).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.frontend import FrontEndError, FrontEndSpec
from ..errors import SendReturnError
from ..shipped import MODELS, shipped_dir

METADATA_KEY = "sendreturn_mood"
SCHEMA_VERSION = 1
INPUT_NAME = "logmel"
MOOD_OUTPUT = "mood_logits"
GENRE_OUTPUT = "genre_logits"
EMBEDDING_OUTPUT = "embedding"
DEFAULT_MODEL_FILE = "mood_cnn.onnx"


class ModelError(SendReturnError, ValueError):
    """A model file the runtime cannot use; the message says why."""


@dataclass(frozen=True)
class MoodLabel:
    label: str
    valence: float
    arousal: float


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself (the parsed metadata)."""

    name: str
    version: str
    frontend: FrontEndSpec
    patch_frames: int
    moods: tuple[MoodLabel, ...]
    genres: tuple[str, ...] = ()
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # optional calibration: the (valence, arousal) values that read as 0, fitted so the signs name the right quadrant
    # more often (training.valence_arousal); None = report the probability-weighted centres as they are
    valence_arousal_zero: tuple[float, float] | None = None

    @property
    def mood_labels(self) -> list[str]:
        return [m.label for m in self.moods]

    @property
    def valence_arousal(self) -> np.ndarray:
        """[n_moods, 2] coordinates; probabilities @ this = reported (valence, arousal)."""
        return np.array([[m.valence, m.arousal] for m in self.moods], dtype=np.float64)

    def to_valence_arousal(self, probs: np.ndarray) -> np.ndarray:
        """Mood probabilities [..., n_moods] -> reported (valence, arousal) [..., 2]: the probability-weighted quadrant
        centres, with each axis' zero moved to `valence_arousal_zero` when the model has one (a monotone map that
        keeps -1 and 1 where they are, so only the sign boundary moves)."""
        va = np.asarray(probs, dtype=np.float64) @ self.valence_arousal
        if self.valence_arousal_zero is None:
            return va
        z = np.asarray(self.valence_arousal_zero, dtype=np.float64)
        return np.where(va >= z, (va - z) / (1 - z), (va - z) / (1 + z))

    @property
    def window_seconds(self) -> float:
        return self.frontend.frames_to_seconds(self.patch_frames)

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.valence_arousal_zero is None else {"valence_arousal_zero": list(self.valence_arousal_zero)}
        return extra | {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "frontend": self.frontend.to_dict(),
            "patch_frames": self.patch_frames,
            "moods": [{"label": m.label, "valence": m.valence, "arousal": m.arousal} for m in self.moods],
            "genres": list(self.genres),
            "provenance": self.provenance,
            "metrics": self.metrics,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any, source: str = "model") -> "ModelInfo":
        def fail(msg: str) -> ModelError:
            return ModelError(f"{source}: metadata {msg}")

        if not isinstance(d, dict):
            raise fail("is not a JSON object")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise fail(f"schema_version is {version!r}; this runtime reads schema_version {SCHEMA_VERSION}")
        missing = [k for k in ("name", "version", "frontend", "patch_frames", "moods") if k not in d]
        if missing:
            raise fail(f"is missing {', '.join(missing)}")
        try:
            frontend = FrontEndSpec.from_dict(d["frontend"])
        except (FrontEndError, TypeError) as e:
            raise fail(f"has a bad 'frontend': {e}") from None
        patch = d["patch_frames"]
        if not isinstance(patch, int) or patch < 1:
            raise fail("'patch_frames' must be a positive integer")
        moods_raw = d["moods"]
        if not isinstance(moods_raw, list) or len(moods_raw) < 2:
            raise fail("'moods' must be a list of at least two {label, valence, arousal}")
        moods = []
        for i, m in enumerate(moods_raw):
            if not isinstance(m, dict) or not {"label", "valence", "arousal"} <= set(m):
                raise fail(f"'moods[{i}]' needs label, valence and arousal")
            va = (float(m["valence"]), float(m["arousal"]))
            if not all(-1.0 <= v <= 1.0 for v in va):
                raise fail(f"'moods[{i}]' valence/arousal must be in [-1, 1]")
            moods.append(MoodLabel(str(m["label"]), *va))
        if len({m.label for m in moods}) != len(moods):
            raise fail("'moods' labels must be unique")
        genres = d.get("genres") or []
        if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
            raise fail("'genres' must be a list of strings")
        zero = d.get("valence_arousal_zero")
        if zero is not None:
            ok = isinstance(zero, list) and len(zero) == 2 and all(isinstance(v, (int, float)) for v in zero)
            if not ok or not all(-1.0 < float(v) < 1.0 for v in zero):
                raise fail("'valence_arousal_zero' must be [valence, arousal], each in (-1, 1)")
            zero = (float(zero[0]), float(zero[1]))
        return cls(
            name=str(d["name"]),
            version=str(d["version"]),
            description=str(d.get("description", "")),
            frontend=frontend,
            patch_frames=patch,
            moods=tuple(moods),
            genres=tuple(genres),
            provenance=dict(d.get("provenance") or {}),
            metrics=dict(d.get("metrics") or {}),
            valence_arousal_zero=zero,
        )


# The graph's outputs by name -> the Prediction field that carries each, and whether the runtime reads it as a
# softmax. The one place an output is named: `MoodModel.predict` fills a Prediction from this table, so a new output
# is one entry here, one field of Prediction, and what the room (tracker / detector) and its views make of it.
OUTPUT_FIELDS = {MOOD_OUTPUT: "moods", GENRE_OUTPUT: "genres", EMBEDDING_OUTPUT: "embedding"}
SOFTMAX_OUTPUTS = frozenset({MOOD_OUTPUT, GENRE_OUTPUT})


@dataclass(frozen=True)
class Prediction:
    """The model's outputs by name, for one window ([n]) or a batch of windows ([batch, n]; `predict`'s result,
    whose `pred[k]` is window k's Prediction). `moods` and `genres` are softmax probabilities; `embedding` is the
    graph's `embedding` output (what the track-change detector compares), when the graph has one."""

    moods: np.ndarray
    genres: np.ndarray | None = None
    embedding: np.ndarray | None = None

    def __getitem__(self, k: int) -> "Prediction":
        return Prediction(**{f: None if v is None else v[k] for f, v in self._fields()})

    def __len__(self) -> int:
        return int(self.moods.shape[0]) if self.moods.ndim > 1 else 1

    def _fields(self) -> list[tuple[str, np.ndarray | None]]:
        return [(f, getattr(self, f)) for f in OUTPUT_FIELDS.values()]

    def is_finite(self) -> bool:
        """Whether every output is finite (a NaN must never reach a room's smoothing or detector)."""
        return all(v is None or bool(np.isfinite(v).all()) for _, v in self._fields())


def default_model_path() -> Path:
    """The model shipped with the package (exported_models/ in the repository)."""
    return shipped_dir(MODELS) / DEFAULT_MODEL_FILE


def shipped_models() -> list[Path]:
    """The ONNX models shipped with the package, the default one first."""
    default = default_model_path()
    return sorted(default.parent.glob("*.onnx"), key=lambda p: (p != default, p.name))


def find_model(spec: str | os.PathLike[str] | None) -> Path:
    """The model file `spec` names: None -> the default shipped model; an existing file -> itself; a shipped model's
    name with or without .onnx (`mood_musicnn`) -> that file; anything else -> the path as given (MoodModel then
    says there is no such file)."""
    if spec is None:
        return default_model_path()
    path = Path(spec)
    if path.exists():
        return path
    shipped = {p.stem: p for p in shipped_models()} | {p.name: p for p in shipped_models()}
    return shipped.get(str(spec), path)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities over the last axis (float64), of logits divided by `temperature`: the runtime's, and the one
    training evaluates with, so evaluated and served probabilities are the same function."""
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def read_info(session: Any, source: str) -> ModelInfo:
    """Parse and check the metadata of an onnxruntime session against the graph's inputs and outputs."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ModelError(
            f"{source}: no '{METADATA_KEY}' entry in the ONNX metadata_props; this file was not exported by "
            "`python -m training export` (the runtime needs the front-end recipe, patch length and labels from it)"
        )
    try:
        raw = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ModelError(f"{source}: metadata '{METADATA_KEY}' is not valid JSON: {e}") from None
    info = ModelInfo.from_dict(raw, source)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs or len(inputs[INPUT_NAME].shape) != 3:
        raise ModelError(f"{source}: graph needs a 3-d input '{INPUT_NAME}' [batch, n_mels, frames]; has {list(inputs)}")
    n_mels = inputs[INPUT_NAME].shape[1]
    if isinstance(n_mels, int) and n_mels != info.frontend.n_mels:
        raise ModelError(f"{source}: input has {n_mels} mel bands but the front end makes {info.frontend.n_mels}")
    if MOOD_OUTPUT not in outputs:
        raise ModelError(f"{source}: graph has no '{MOOD_OUTPUT}' output; has {list(outputs)}")
    n_out = outputs[MOOD_OUTPUT].shape[-1]
    if isinstance(n_out, int) and n_out != len(info.moods):
        raise ModelError(f"{source}: '{MOOD_OUTPUT}' has {n_out} classes but metadata lists {len(info.moods)} moods")
    if info.genres and GENRE_OUTPUT not in outputs:
        raise ModelError(f"{source}: metadata lists genres but the graph has no '{GENRE_OUTPUT}' output")
    return info


class MoodModel:
    """An ONNX mood model and its self-description. `predict` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = find_model(path)
        if not self.path.is_file():
            names = ", ".join(p.stem for p in shipped_models())
            raise ModelError(f"{self.path}: no such model file (shipped models: {names})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # with threads > 1, idle pool threads would otherwise spin after every run, burning the cores the event loop
        # needs between batches (windows arrive a few per tick, not back to back)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{self.path}: not a loadable ONNX model: {e}") from None
        self.info = read_info(self.session, str(self.path))
        names = {o.name for o in self.session.get_outputs()}
        # genres only when the metadata names them; the embedding feeds the track-change detector (room/trackchange.py)
        self._outputs = [MOOD_OUTPUT] + ([GENRE_OUTPUT] if self.info.genres and GENRE_OUTPUT in names else [])
        self.has_embedding = EMBEDDING_OUTPUT in names
        if self.has_embedding:
            self._outputs.append(EMBEDDING_OUTPUT)

    def predict(self, batch: np.ndarray) -> Prediction:
        """log-mel windows [batch, n_mels, frames] -> the batch's Prediction (softmax probabilities by name)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim == 2:
            batch = batch[None]
        out = zip(self._outputs, self.session.run(self._outputs, {INPUT_NAME: batch}))
        return Prediction(**{OUTPUT_FIELDS[name]: softmax(v) if name in SOFTMAX_OUTPUTS else v for name, v in out})


def write_metadata(onnx_path: str | os.PathLike[str], info: ModelInfo) -> None:
    """Embed `info` into an ONNX file in place (training/export side; needs the `onnx` package)."""
    import onnx

    m = onnx.load(str(onnx_path))
    kept = [p for p in m.metadata_props if p.key != METADATA_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    entry = m.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = info.to_json()
    onnx.save(m, str(onnx_path))

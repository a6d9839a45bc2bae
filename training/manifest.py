"""One manifest format for every dataset: file, label, group, source.

`group` is what must not be split across train and test (the artist for 4Q, the track for Spotify), so every
evaluation can be artist-disjoint. Every builder (folder layout, CSV, the shared research data, Spotify) writes
and reads this one format, so training and evaluation never care where the audio came from.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg")
_SOURCE = Path(__file__).resolve().parent.parent


def project_root() -> Path:
    """Where training's default inputs and outputs live: the source checkout this code runs from, or, for an
    installed copy (no pyproject.toml beside the package, e.g. site-packages), the current directory. So no default
    ever points into site-packages."""
    return _SOURCE if (_SOURCE / "pyproject.toml").is_file() else Path.cwd()


REPO = project_root()
SHARED_DATA = REPO.parent / "shared" / "data"

# 4Q quadrants as the product's moods (Russell's circumplex): the labels the shipped model predicts.
MOODS_4Q = ("happy", "angry", "sad", "calm")
MOOD_COORDINATES = {  # (valence, arousal) of each quadrant's centre, in [-1, 1]
    "happy": (0.7, 0.6),
    "angry": (-0.6, 0.7),
    "sad": (-0.6, -0.6),
    "calm": (0.6, -0.6),
}
GENRES_EMOTIFY = ("classical", "electronic", "pop", "rock")
QUADRANT_MOODS = {"Q1": "happy", "Q2": "angry", "Q3": "sad", "Q4": "calm"}  # Russell quadrant -> the product's mood
RATING_MIDPOINT, RATING_HALF_RANGE = 3.0, 2.0  # MUSIFEAST's 1-5 ratings -> the model's [-1, 1]: (x - 3) / 2
# Emotify's GEMS felt-emotion items -> the quadrant each one lies in (valence, arousal); nostalgia and solemnity are
# low-arousal items whose valence is ambiguous, so they count half to sad and half to calm
GEMS_QUADRANTS = {
    "joyful_activation": {"happy": 1.0}, "amazement": {"happy": 1.0},
    "tension": {"angry": 1.0}, "power": {"angry": 1.0},
    "sadness": {"sad": 1.0},
    "calmness": {"calm": 1.0}, "tenderness": {"calm": 1.0},
    "nostalgia": {"sad": 0.5, "calm": 0.5}, "solemnity": {"sad": 0.5, "calm": 0.5},
}


@dataclass(frozen=True)
class Item:
    file: str  # absolute path, or relative to the manifest's folder
    label: str
    group: str = ""
    source: str = ""


class ManifestError(ValueError):
    pass


def write_manifest(items: list[Item], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Item)])
        w.writeheader()
        for it in items:
            w.writerow(asdict(it))
    return path


def read_manifest(path: str | Path) -> list[Item]:
    """A CSV with columns file,label[,group][,source]; relative files resolve against the CSV's folder."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if not {"file", "label"} <= cols:
            raise ManifestError(f"{path}: a manifest needs the columns file and label (has {sorted(cols)})")
        items = []
        for n, row in enumerate(reader, start=2):
            if not row["file"] or not row["label"]:
                raise ManifestError(f"{path}:{n}: empty file or label")
            file = Path(row["file"])
            if not file.is_absolute():
                file = path.parent / file
            items.append(Item(str(file), row["label"], row.get("group") or "", row.get("source") or path.stem))
    return items


def read_folder(root: str | Path, source: str | None = None) -> list[Item]:
    """ROOT/<label>/*.{wav,mp3,flac,ogg}; each file is its own group (no artist information in a folder layout)."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    items = [
        Item(str(f), label_dir.name, f.stem, source or root.name)
        for label_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for f in sorted(label_dir.iterdir())
        if f.suffix.lower() in AUDIO_EXTENSIONS
    ]
    if not items:
        raise ManifestError(f"{root}: no audio files in ROOT/<label>/ sub-folders ({', '.join(AUDIO_EXTENSIONS)})")
    return items


def read_4q(root: str | Path = SHARED_DATA / "moods-4q") -> list[Item]:
    """The 4Q emotion dataset: mood = quadrant's mood, group = artist (split by artist!)."""
    root = Path(root)
    with open(root / "labels.csv", newline="") as f:
        return [Item(str(root / r["file"]), r["mood"], r["artist"], "moods-4q") for r in csv.DictReader(f)]


def read_emotify(root: str | Path = SHARED_DATA / "emotify") -> list[Item]:
    """Emotify: exact genre labels; no artist column, so each clip is its own group."""
    root = Path(root)
    with open(root / "labels.csv", newline="") as f:
        return [Item(str(root / r["file"]), r["genre"], r["file"], "emotify") for r in csv.DictReader(f)]


def read_musifeast(root: str | Path = SHARED_DATA / "musifeast17") -> list[Item]:
    """MUSIFEAST-17: label = the mood of `quadrant_at_3` (both ratings split at the scale midpoint), group = artist."""
    root = Path(root)
    with open(root / "labels.csv", newline="") as f:
        return [Item(str(root / r["file"]), QUADRANT_MOODS[r["quadrant_at_3"]], r["artist"], "musifeast17")
                for r in csv.DictReader(f)]


@dataclass(frozen=True)
class Rating:
    """Listeners' mean and SD of perceived valence and arousal of one clip, on the model's [-1, 1] scale."""

    valence: float
    arousal: float
    valence_sd: float
    arousal_sd: float


def read_ratings(root: str | Path = SHARED_DATA / "musifeast17") -> dict[str, Rating]:
    """MUSIFEAST-17's ratings per audio file (absolute path, as in `read_musifeast`), mapped from 1-5 to [-1, 1]."""
    root = Path(root)
    h = RATING_HALF_RANGE
    with open(root / "labels.csv", newline="") as f:
        return {str(root / r["file"]): Rating((float(r["valence_mean"]) - RATING_MIDPOINT) / h,
                                              (float(r["arousal_mean"]) - RATING_MIDPOINT) / h,
                                              float(r["valence_sd"]) / h, float(r["arousal_sd"]) / h)
                for r in csv.DictReader(f)}


def read_emotify_shares(root: str | Path = SHARED_DATA / "emotify") -> dict[str, dict[str, float]]:
    """Emotify's GEMS shares (fraction of listeners ticking each item) per audio file (absolute path)."""
    root = Path(root)
    with open(root / "labels.csv", newline="") as f:
        return {str(root / r["file"]): {k: float(r[k]) for k in GEMS_QUADRANTS} for r in csv.DictReader(f)}

"""Dataset builders: every source of labelled audio becomes one validated manifest (file, label, group, source).

The readers live in `training/manifest.py` (folder layout, CSV, the shared 4Q and Emotify data); this module adds
what a builder needs on top of them: label mapping and selection, validation that fails early with a message naming
the problem (missing files, unknown labels, empty or too small classes, a file under two labels), a summary, and
writing the manifest with paths relative to it so a manifest in the repository keeps working for anyone with the
same `../shared/data` layout. Training and evaluation then read only manifests and never care where audio came from.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from .manifest import (
    GENRES_EMOTIFY,
    MOODS_4Q,
    SHARED_DATA,
    Item,
    ManifestError,
    read_4q,
    read_emotify,
    read_folder,
    read_manifest,
    write_manifest,
)

MAX_LISTED = 5  # how many offending files an error message names before "... and N more"


class DatasetError(ManifestError):
    """A dataset that must not be trained on; the message lists every problem found."""


@dataclass(frozen=True)
class Summary:
    items: int
    labels: dict[str, int]
    groups: int
    sources: dict[str, int]

    def text(self) -> str:
        per_label = ", ".join(f"{k} {v}" for k, v in self.labels.items())
        return f"{self.items} clips, {len(self.labels)} labels ({per_label}), {self.groups} groups"


def summarize(items: Sequence[Item]) -> Summary:
    labels = Counter(it.label for it in items)
    return Summary(
        items=len(items),
        labels=dict(sorted(labels.items())),
        groups=len({it.group or it.file for it in items}),
        sources=dict(Counter(it.source for it in items)),
    )


def parse_label_map(pairs: Iterable[str]) -> dict[str, str]:
    """["Happy=happy", "Energetic=angry"] -> {"Happy": "happy", ...} (the `--map` option)."""
    mapping = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise DatasetError(f"label map entry {pair!r}: expected OLD=NEW")
        mapping[old] = new
    return mapping


def relabel(items: Sequence[Item], mapping: dict[str, str]) -> list[Item]:
    """Rename labels; a label mapped to "-" is dropped (e.g. a class the product does not predict)."""
    out = []
    for it in items:
        new = mapping.get(it.label, it.label)
        if new != "-":
            out.append(replace(it, label=new))
    return out


def _listed(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:MAX_LISTED])
    more = len(paths) - MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def validate(
    items: Sequence[Item],
    labels: Sequence[str] | None = None,
    min_per_class: int = 1,
    check_files: bool = True,
) -> list[Item]:
    """Check a dataset before anyone trains on it; return it de-duplicated, or raise `DatasetError` listing all problems.

    labels: the expected label set. Unknown labels are an error, and so is an expected label with no clip
    (an empty class silently changes what the model can predict). Without it, every class found must still
    reach `min_per_class` clips (grouped cross-validation needs a few per class).
    """
    problems: list[str] = []
    if not items:
        raise DatasetError("the dataset is empty")
    seen: dict[str, str] = {}
    unique: list[Item] = []
    conflicting: list[str] = []
    for it in items:
        key = os.path.normcase(os.path.abspath(it.file))
        if key in seen:
            if seen[key] != it.label:
                conflicting.append(f"{it.file} ({seen[key]} / {it.label})")
            continue
        seen[key] = it.label
        unique.append(it)
    if conflicting:
        problems.append(f"{len(conflicting)} file(s) under two labels: {_listed(conflicting)}")
    if check_files:
        missing = [it.file for it in unique if not Path(it.file).is_file()]
        if missing:
            problems.append(f"{len(missing)} of {len(unique)} audio file(s) missing: {_listed(missing)}")
    counts = Counter(it.label for it in unique)
    if labels is not None:
        unknown = sorted(set(counts) - set(labels))
        if unknown:
            problems.append(f"unknown label(s) {unknown}; expected {list(labels)} (use --map OLD=NEW or OLD=- to drop)")
        empty = [lab for lab in labels if counts.get(lab, 0) == 0]
        if empty:
            problems.append(f"empty class(es) {empty}: no clip has that label")
    small = sorted(lab for lab, n in counts.items() if 0 < n < min_per_class)
    if small:
        problems.append(
            f"class(es) with fewer than {min_per_class} clips: " + ", ".join(f"{lab} ({counts[lab]})" for lab in small)
        )
    if problems:
        raise DatasetError("invalid dataset:\n  - " + "\n  - ".join(problems))
    return unique


def build_folder(root: str | Path, source: str | None = None) -> list[Item]:
    """ROOT/<label>/*.{wav,mp3,flac,ogg}: the label is the sub-folder's name, each file its own group."""
    return read_folder(root, source)


def build_csv(path: str | Path, group_column: str | None = None) -> list[Item]:
    """A CSV with columns file,label[,group][,source]; `group_column` names another column to group by (e.g. artist)."""
    items = read_manifest(path)
    if group_column:
        import csv

        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if group_column not in (reader.fieldnames or []):
                raise DatasetError(f"{path}: no column {group_column!r} to group by (has {reader.fieldnames})")
            groups = [row[group_column] for row in reader]
        items = [replace(it, group=g) for it, g in zip(items, groups)]
    return items


def _shared(sub: str) -> Path:
    root = SHARED_DATA / sub
    if not (root / "labels.csv").is_file():
        raise DatasetError(f"{root}/labels.csv not found: the shared research data lives beside the repository in ../shared/data")
    return root


def build_4q(root: str | Path | None = None) -> list[Item]:
    """The 4Q emotion dataset (Panda et al. 2018): label = quadrant's mood, group = artist."""
    return read_4q(Path(root) if root else _shared("moods-4q"))


def build_emotify(root: str | Path | None = None) -> list[Item]:
    """Emotify (Aljanaki et al. 2015): label = genre, each clip its own group (no artist column)."""
    return read_emotify(Path(root) if root else _shared("emotify"))


KNOWN_LABELS = {"4q": MOODS_4Q, "emotify": GENRES_EMOTIFY}


def write_relative(items: Sequence[Item], out: str | Path, absolute: bool = False) -> Path:
    """Write a manifest; files relative to its folder (what `read_manifest` resolves) unless `absolute`."""
    out = Path(out)
    base = out.resolve().parent
    if not absolute:
        items = [replace(it, file=os.path.relpath(Path(it.file).resolve(), base)) for it in items]
    return write_manifest(list(items), out)

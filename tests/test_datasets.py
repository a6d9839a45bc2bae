"""Dataset builders: folder layout, CSV, the shared 4Q/Emotify data, validation errors, the `dataset` CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import shared_data_or_skip
from training import datasets
from training.__main__ import main
from training.manifest import GENRES_EMOTIFY, MOODS_4Q, Item, read_manifest


def make_folder(root: Path, layout: dict[str, int]) -> Path:
    """ROOT/<label>/<label>_<i>.wav with one second of a label-specific tone."""
    sr = 8000
    for k, (label, n) in enumerate(layout.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            t = np.arange(sr) / sr
            sf.write(str(root / label / f"{label}_{i}.wav"), 0.3 * np.sin(2 * np.pi * (200 + 100 * k + 10 * i) * t), sr)
    (root / label).joinpath("notes.txt").write_text("not audio")  # ignored: not an audio extension
    return root


def test_folder_layout_to_manifest(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "music", {"happy": 3, "sad": 2})
    out = tmp_path / "manifests" / "m.csv"
    assert main(["dataset", "folder", str(root), "--out", str(out)]) == 0
    items = read_manifest(out)
    assert [(Path(it.file).name, it.label) for it in items] == [
        ("happy_0.wav", "happy"), ("happy_1.wav", "happy"), ("happy_2.wav", "happy"), ("sad_0.wav", "sad"), ("sad_1.wav", "sad")
    ]
    assert all(Path(it.file).is_file() and it.source == "music" for it in items)
    assert len({it.group for it in items}) == 5  # no artist information: each file its own group
    # Paths are written relative to the manifest so the folder tree can move as a whole.
    assert out.read_text().splitlines()[1].startswith("../music/happy/happy_0.wav,happy,")


def test_label_map_and_expected_labels(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "music", {"Happy": 2, "Energetic": 2, "Party": 1})
    out = tmp_path / "m.csv"
    rc = main(["dataset", "folder", str(root), "--out", str(out), "--map", "Happy=happy", "--map", "Energetic=angry",
               "--map", "Party=-", "--labels", "happy,angry"])
    assert rc == 0
    assert sorted({it.label for it in read_manifest(out)}) == ["angry", "happy"]


def test_validation_reports_every_problem() -> None:
    items = [
        Item("/nowhere/a.mp3", "happy"),
        Item("/nowhere/a.mp3", "sad"),  # same file, two labels
        Item("/nowhere/b.mp3", "jazz"),
    ]
    with pytest.raises(datasets.DatasetError) as e:
        datasets.validate(items, labels=["happy", "sad", "calm"])
    msg = str(e.value)
    assert "under two labels: /nowhere/a.mp3 (happy / sad)" in msg
    assert "2 of 2 audio file(s) missing" in msg
    assert "unknown label(s) ['jazz']" in msg
    assert "empty class(es) ['sad', 'calm']" in msg
    with pytest.raises(datasets.DatasetError, match="the dataset is empty"):
        datasets.validate([])


def test_small_classes_and_duplicates(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "music", {"happy": 3, "sad": 1})
    items = datasets.build_folder(root)
    with pytest.raises(datasets.DatasetError, match=r"fewer than 2 clips: sad \(1\)"):
        datasets.validate(items, min_per_class=2)
    assert len(datasets.validate(items + items[:2])) == 4  # exact duplicates are merged, not errors


def test_csv_manifest_with_group_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_folder(tmp_path / "music", {"happy": 2, "sad": 2})
    csv_file = tmp_path / "music" / "list.csv"
    csv_file.write_text(
        "file,label,artist\n"
        "happy/happy_0.wav,happy,A\nhappy/happy_1.wav,happy,B\nsad/sad_0.wav,sad,A\nsad/sad_1.wav,sad,C\n"
    )
    out = tmp_path / "m.csv"
    assert main(["dataset", "csv", str(csv_file), "--group-column", "artist", "--out", str(out)]) == 0
    assert [it.group for it in read_manifest(out)] == ["A", "B", "A", "C"]
    # A row naming a missing file fails the build with the file named, and nothing is written.
    csv_file.write_text("file,label\nhappy/happy_0.wav,happy\nhappy/gone.wav,happy\n")
    bad_out = tmp_path / "bad.csv"
    assert main(["dataset", "csv", str(csv_file), "--out", str(bad_out)]) == 1
    assert "1 of 2 audio file(s) missing" in capsys.readouterr().err and not bad_out.exists()
    assert main(["dataset", "csv", str(csv_file), "--out", str(bad_out), "--group-column", "artist"]) == 1
    assert "no column 'artist'" in capsys.readouterr().err


def test_shared_4q_grouped_by_artist(tmp_path: Path) -> None:
    shared_data_or_skip("moods-4q")
    out = tmp_path / "4q.csv"
    assert main(["dataset", "4q", "--out", str(out)]) == 0
    items = read_manifest(out)
    summary = datasets.summarize(items)
    assert set(summary.labels) == set(MOODS_4Q) and min(summary.labels.values()) > 100
    assert summary.groups < len(items)  # artists with several clips: the reason splits must be grouped
    assert all(Path(it.file).is_file() for it in items[:20])


def test_shared_emotify(tmp_path: Path) -> None:
    shared_data_or_skip("emotify")
    out = tmp_path / "emotify.csv"
    assert main(["dataset", "emotify", "--out", str(out), "--absolute"]) == 0
    items = read_manifest(out)
    assert datasets.summarize(items).labels == {g: 75 for g in GENRES_EMOTIFY}
    assert Path(items[0].file).is_absolute()
    # Mapping applies to the expected labels too: dropping a genre is not an "empty class" error.
    assert main(["dataset", "emotify", "--out", str(out), "--map", "rock=-", "--map", "pop=popular"]) == 0
    assert datasets.summarize(read_manifest(out)).labels == {"classical": 75, "electronic": 75, "popular": 75}

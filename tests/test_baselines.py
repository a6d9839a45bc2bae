"""Baselines code on small generated data: same grouped folds, sensible numbers, JSON + markdown output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training import baselines, handcrafted
from training.__main__ import main
from training.cv import LinearHead, cross_validate
from training.manifest import Item
from training.metrics import group_folds

SR = 16000


def tone_dataset(root: Path, per_class: int = 6) -> list[Item]:
    """Two audibly different classes (low steady hum vs bright pulsing noise), two clips per 'artist', 5 s each."""
    rng = np.random.default_rng(0)
    items = []
    t = np.arange(5 * SR) / SR
    for label in ("calm", "angry"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            if label == "calm":
                y = 0.2 * np.sin(2 * np.pi * (110 + 7 * i) * t) + 0.003 * rng.standard_normal(len(t))
            else:
                pulse = (np.sin(2 * np.pi * 4 * t) > 0).astype(float)
                y = 0.3 * pulse * rng.standard_normal(len(t))
            f = root / label / f"{label}{i}.wav"
            sf.write(str(f), y.astype(np.float32), SR)
            items.append(Item(str(f), label, f"{label}-artist{i // 2}", "generated"))
    return items


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for the module: features are computed once (librosa is the slow part)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> list[Item]:
    return tone_dataset(tmp_path_factory.mktemp("tones"))


def test_handcrafted_features_shape_and_cache(tones: list[Item], cache: Path) -> None:
    r = handcrafted.HandcraftedRecipe()
    clip, windows = handcrafted.clip_features(tones[0].file, r, cache)
    assert clip.shape == (len(handcrafted.FEATURE_NAMES),) and np.isfinite(clip).all()
    # 5 s at hop 256: 313 frames -> 3 s (187-frame) windows every 1.5 s (94 frames) start at frames 0 and 94
    assert windows.shape == (2, len(handcrafted.FEATURE_NAMES)) and np.isfinite(windows).all()
    assert len(list((cache / "handcrafted" / r.key()).glob("*.npz"))) == 1
    clip2, windows2 = handcrafted.clip_features(tones[0].file, r, cache)
    np.testing.assert_array_equal(clip, clip2)
    np.testing.assert_array_equal(windows, windows2)


def test_audio_baselines_on_separable_data(tones: list[Item], cache: Path) -> None:
    res = baselines.audio_baselines(tones, n_splits=3, seed=0, cache=cache, C_grid=(1.0,), progress=False)
    assert res["labels"] == ["angry", "calm"] and res["groups"] == 6  # sorted: not a known label set
    b = res["baselines"]
    assert b["majority"]["clip"]["summary"]["accuracy_mean"] <= 0.67
    assert b["handcrafted_logreg_clip"]["clip"]["summary"]["accuracy_mean"] == pytest.approx(1.0)
    win = b["handcrafted_logreg_windows"]
    assert win["window"]["pooled"]["n"] == 2 * len(tones) and win["clip"]["pooled"]["n"] == len(tones)
    assert win["window"]["summary"]["accuracy_mean"] > 0.9
    # The folds are exactly training.metrics.group_folds over the items in order (the model's folds).
    expected = group_folds([it.label for it in tones], [it.group for it in tones], n_splits=3, seed=0)
    assert res["folds"]["test_sizes"] == [len(te) for _, te in expected]
    pooled = b["handcrafted_logreg_clip"]["clip"]["pooled"]
    assert np.array(pooled["confusion"]).sum() == len(tones) and set(pooled["per_class"]) == {"angry", "calm"}


def test_cross_validate_never_trains_on_test_groups() -> None:
    """A classifier that memorises groups would score perfectly on leaked folds; on grouped folds it cannot."""
    rng = np.random.default_rng(1)
    groups = np.repeat([f"g{i}" for i in range(20)], 3)
    y = np.array([["a", "b"][i % 2] for i in range(20)]).repeat(3)
    X = np.eye(20)[np.repeat(np.arange(20), 3)] + 0.01 * rng.standard_normal((60, 20))  # features = group identity
    folds = group_folds(y, groups, n_splits=4, seed=0)
    res = cross_validate(X, y, groups, ["a", "b"], folds, lambda: LinearHead(2, C=1.0))
    assert res["clip"]["summary"]["accuracy_mean"] < 0.8


def write_spotify_csv(path: Path, n_artists: int = 30) -> Path:
    rng = np.random.default_rng(2)
    moods = {"Happy": (0.8, 0.7), "Sad": (0.2, 0.3), "Energetic": (0.5, 0.9), "Calm": (0.5, 0.2)}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "artist", *baselines.SPOTIFY_AUDIO_FEATURES, "mood"])
        for a in range(n_artists):
            for k, (mood, (val, en)) in enumerate(moods.items()):
                feats = {c: rng.random() for c in baselines.SPOTIFY_AUDIO_FEATURES}
                feats.update(valence=val + 0.05 * rng.standard_normal(), energy=en + 0.05 * rng.standard_normal())
                w.writerow([f"song{a}-{k}", f"artist{a}", *[feats[c] for c in baselines.SPOTIFY_AUDIO_FEATURES], mood])
    return path


def test_spotify_baselines(tmp_path: Path) -> None:
    res = baselines.spotify_baselines(write_spotify_csv(tmp_path / "moods.csv"), n_splits=3, C_grid=(1.0,))
    assert "DIFFERENT dataset" in res["note"] and res["groups"] == 30
    b = res["baselines"]
    assert b["spotify_valence_energy_logreg"]["clip"]["summary"]["accuracy_mean"] > 0.9
    assert b["spotify_features_mlp"]["clip"]["summary"]["accuracy_mean"] > 0.8
    # valence alone cannot tell Energetic from Calm (both 0.5 here): about half of those are lost
    assert b["spotify_valence_logreg"]["clip"]["summary"]["accuracy_mean"] < 0.85
    assert b["majority"]["clip"]["summary"]["accuracy_mean"] < 0.35


def test_cli_writes_json_and_markdown(tones: list[Item], cache: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "tones.csv"
    from training.manifest import write_manifest

    write_manifest(tones, manifest)
    out = tmp_path / "eval" / "baselines.json"
    rc = main(["baselines", "--dataset", str(manifest), "--spotify-csv", str(write_spotify_csv(tmp_path / "m.csv")),
               "--folds", "3", "--c-grid", "1", "--out", str(out), "--cache", str(cache), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["datasets"]) == {str(manifest), "spotify-moods"}
    assert res["datasets"]["spotify-moods"]["note"].startswith("spotify-moods is a DIFFERENT dataset")
    md = out.with_suffix(".md").read_text()
    assert "| handcrafted_logreg_windows | window |" in md and "| spotify_valence_energy_logreg | clip |" in md

"""The evaluation spine and the structure around it: one fold definition, one CV loop and head rule, commands that
import no other command, the valence/arousal calibration and the runtime's optional metadata key for it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from training.manifest import MOOD_COORDINATES, MOODS_4Q, Item

TRAINING = Path(__file__).resolve().parent.parent / "training"


def command_modules() -> set[str]:
    """Every module that is a command: the CLI's subcommands, the accurate variant's builder and the CLI itself."""
    from training.__main__ import MODULE_COMMANDS

    return {m.split(".")[1] for m, _ in MODULE_COMMANDS.values()} | {"accurate", "__main__"}


COMMANDS = command_modules()


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module if node.level == 0 else f"training.{node.module}"
            found.add(mod.split(".")[1] if mod.startswith("training.") else mod)
            if mod == "training":
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("training.")}
    return found


def test_no_command_imports_another_command():
    """Shared pieces (checkpoint loading, the reproduce line, the cache, the CV loop) live in library modules."""
    for name in COMMANDS - {"__main__"}:
        others = imported_modules(TRAINING / f"{name}.py") & (COMMANDS - {name})
        assert not others, f"training/{name}.py imports command module(s) {others}"


def test_library_modules_import_no_command_and_have_no_cycle():
    library = {p.stem for p in TRAINING.glob("*.py")} - COMMANDS - {"__init__"}
    graph = {m: imported_modules(TRAINING / f"{m}.py") & library for m in library}
    for m in library:
        assert not imported_modules(TRAINING / f"{m}.py") & (COMMANDS - {"__main__"}), f"{m} imports a command"

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph[start])

    assert not [m for m in library if reaches(m, m, {m})], "an import cycle between training's library modules"


def test_one_fold_definition_everywhere():
    """dataset_folds is group_folds over the manifest with the recipe's constants; train's --exclude-fold and the
    chain's runs count in the same folds."""
    from training.cv import dataset_folds
    from training.metrics import group_folds
    from training.recipe import FOLD_SEED, N_SPLITS

    items = [Item(f"f{i}.wav", MOODS_4Q[i % 4], f"artist{i // 3}") for i in range(80)]
    expected = group_folds([it.label for it in items], [it.group for it in items], N_SPLITS, FOLD_SEED)
    for (a, b), (c, d) in zip(dataset_folds(items), expected):
        assert a.tolist() == c.tolist() and b.tolist() == d.tolist()


def test_chain_is_strict_and_uses_the_recipe(tmp_path):
    from training.chain import commands
    from training.recipe import DISTILL, FINE_TUNE

    runs = commands(tmp_path, ["0", "all"], ["distill", "finetune", "genre"], ["msd", "mtt"], 1, 0, "4q", "emotify")
    by_name = {out.name: argv for out, argv in runs}
    assert set(by_name) == {"distill_x0", "ftw_x0", "distill_xall", "ftw_xall", "genre_x0", "genre_xall"}
    for name in ("distill_x0", "ftw_x0", "genre_x0"):
        argv = by_name[name]
        assert argv[argv.index("--exclude-fold") + 1] == "0", f"{name} must leave out fold 0's test clips"
    assert "--exclude-fold" not in by_name["ftw_xall"]
    assert by_name["ftw_x0"][by_name["ftw_x0"].index("--init") + 1] == str(tmp_path / "distill_x0" / "best.ckpt")
    assert by_name["genre_x0"][by_name["genre_x0"].index("--init") + 1] == str(tmp_path / "distill_xall" / "best.ckpt")
    assert by_name["genre_x0"][by_name["genre_x0"].index("--fold-data") + 1] == "emotify"
    assert str(DISTILL["epochs"]) in by_name["distill_x0"] and "--wise" in by_name["ftw_x0"]
    assert str(FINE_TUNE["wise"]) == by_name["ftw_x0"][by_name["ftw_x0"].index("--wise") + 1]
    assert all(argv[argv.index("--teachers") + 1 : argv.index("--teachers") + 3] == ["msd", "mtt"] for _, argv in runs)


def test_chain_width_and_genre_epochs_reach_every_run(tmp_path):
    """A narrower student is narrower in every stage (each starts from the previous one's weights, which must fit),
    and a longer genre stage is not cut short by the recipe's patience."""
    from training.chain import commands
    from training.recipe import GENRE_BRANCH

    runs = commands(tmp_path, ["0", "all"], ["distill", "genre"], ["msd", "mtt"], 1, 0, "4q", "emotify",
                    channels=[12, 24, 48, 64], genre_epochs=8)
    for _, argv in runs:
        i = argv.index("--channels")
        assert argv[i + 1 : i + 5] == ["12", "24", "48", "64"]
    genre = dict(runs)[tmp_path / "genre_x0"]
    assert genre[genre.index("--epochs") + 1] == "8" and genre[genre.index("--patience") + 1] == "8"
    plain = dict(commands(tmp_path, ["0"], ["genre"], ["msd"], 1, 0, "4q", "emotify"))[tmp_path / "genre_x0"]
    assert "--channels" not in plain and plain[plain.index("--epochs") + 1] == str(GENRE_BRANCH["epochs"])


def test_a_genre_only_experiment_is_recorded(tmp_path):
    """evaluate --tag with --mood-data '' still writes the experiments-table record, from the genre task."""
    from training.card import experiments_table
    from training.evaluate import write_experiment

    st = {"fold_students": {"0": "runs/g/genre_x0/best.ckpt: ..."}, "folds_that_heard_their_test_clips": []}
    report = {"command": "python -m training evaluate --mood-data ''", "git_commit": "abc",
              "summary": {"genre_student_cnn_clip_accuracy": 0.8, "genre_student_cnn_clip_accuracy_std": 0.01},
              "genre": {"methods": {"student_cnn": st}, "folds_scored": [0, 1, 2, 3, 4]}}
    write_experiment(tmp_path / "g.json", "g", "genre only", report, "genre")
    rec = json.loads((tmp_path / "g.json").read_text())
    assert rec["task"] == "genre" and rec["fold_students"] == st["fold_students"]
    row = experiments_table(tmp_path)[-1]
    assert row.startswith("| g | genre only | none | - | - | - | 0.800 ± 0.010 |")


def test_one_head_rule_for_students_and_baselines():
    """The baselines' logistic regression is the student's LinearHead: C from the recipe's grid, by inner CV."""
    from training.cv import LinearHead, cross_validate, dataset_folds
    from training.recipe import C_GRID

    rng = np.random.default_rng(0)
    items = [Item(f"f{i}.wav", MOODS_4Q[i % 4], f"artist{i // 2}") for i in range(120)]
    y = np.array([MOODS_4Q.index(it.label) for it in items])
    X = rng.standard_normal((120, 6)) + np.eye(4)[y] @ rng.standard_normal((4, 6)) * 2
    res = cross_validate(X, [it.label for it in items], [it.group for it in items], MOODS_4Q, dataset_folds(items),
                         lambda: LinearHead(4))
    assert len(res["C_per_fold"]) == 5 and all(c in C_GRID for c in res["C_per_fold"])
    assert res["clip"]["summary"]["accuracy_mean"] > 0.8


def test_valence_arousal_calibration_moves_only_the_sign_boundary():
    from training.valence_arousal import agreement, calibrate, coordinates, fit_zero, signs_of

    x = np.linspace(-1, 1, 41)
    va = np.stack([x, x], axis=1)
    out = calibrate(va, (0.2, -0.1))
    assert out[0].tolist() == [-1, -1] and out[-1].tolist() == [1, 1]
    assert (np.diff(out[:, 0]) > 0).all(), "monotone: every value keeps its order"
    assert np.sign(calibrate(np.array([[0.19, -0.11]]), (0.2, -0.1))).tolist() == [[-1, -1]]
    signs = signs_of(MOODS_4Q, MOOD_COORDINATES)
    assert signs.tolist() == [[1, 1], [-1, 1], [-1, -1], [1, -1]]
    # a model that over-reports valence by 0.3: the fitted zero moves up and agreement improves
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    true_va = signs[y] * rng.uniform(0.05, 0.6, (400, 2))
    biased = true_va + np.array([0.3, 0.0])
    z = fit_zero(biased, y, signs)
    assert 0.2 <= z[0] <= 0.4 and abs(z[1]) <= 0.06
    assert agreement(calibrate(biased, z), y, signs)["quadrant"] > agreement(biased, y, signs)["quadrant"]
    assert fit_zero(true_va, y, signs) == (0.0, 0.0), "no evidence, no change"
    p = np.eye(4)
    assert np.allclose(coordinates(p, MOODS_4Q, MOOD_COORDINATES), [MOOD_COORDINATES[m] for m in MOODS_4Q])


def test_model_metadata_valence_arousal_zero_is_optional_and_checked():
    from sendreturn_mood.model.contract import ModelError, ModelInfo

    base = {"schema_version": 1, "name": "m", "version": "1", "patch_frames": 187,
            "frontend": {"sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 96},
            "moods": [{"label": m, "valence": v, "arousal": a} for m, (v, a) in MOOD_COORDINATES.items()]}
    probs = np.array([[0.4, 0.1, 0.2, 0.3], [0.05, 0.05, 0.6, 0.3]])
    plain = ModelInfo.from_dict(base)
    assert plain.valence_arousal_zero is None and "valence_arousal_zero" not in plain.to_dict()
    np.testing.assert_allclose(plain.to_valence_arousal(probs), probs @ plain.valence_arousal)
    cal = ModelInfo.from_dict({**base, "valence_arousal_zero": [0.1, -0.05]})
    assert ModelInfo.from_dict(json.loads(cal.to_json())).valence_arousal_zero == (0.1, -0.05)
    raw = probs @ cal.valence_arousal
    got = cal.to_valence_arousal(probs)
    assert (np.sign(got) == np.sign(raw - np.array([0.1, -0.05]))).all() and np.abs(got).max() <= 1
    for bad in ([0.1], [1.0, 0.0], "x", [0.1, "a"]):
        with pytest.raises(ModelError, match="valence_arousal_zero"):
            ModelInfo.from_dict({**base, "valence_arousal_zero": bad})


def test_two_teachers_give_both_targets(tmp_path):
    """train --teachers msd mtt: one regression target row per window = both teachers' embedding + tag logits."""
    from tests.test_training_pipeline import write_tiny_dataset
    from training.manifest import read_folder
    from training.teacher import teacher_available
    from training.train import Data

    if not (teacher_available("msd") and teacher_available("mtt")):
        pytest.skip("the musicnn teachers live beside the repository in ../shared/models")
    items = read_folder(write_tiny_dataset(tmp_path / "audio"))[:4]
    one = Data(items, tmp_path / "cache", 94, ("msd",))
    two = Data(items, tmp_path / "cache", 94, ("msd", "mtt"))
    assert one.targets.shape[1] == 250 and two.targets.shape[1] == 500
    np.testing.assert_array_equal(two.targets[:, :250], one.targets)
    assert np.isfinite(two.targets).all() and not np.allclose(two.targets[:, 250:], one.targets)


def test_chain_genre_posterior_reaches_only_the_genre_stage(tmp_path):
    """`chain --genre-posterior` adds the teachers' posterior target to the genre runs (still without their test
    fold) and nothing else; `--genre-init` names the distilled student they start from."""
    from training.chain import commands

    init = str(tmp_path / "other" / "distill_xall" / "best.ckpt")
    runs = dict(commands(tmp_path, ["0", "all"], ["distill", "genre"], ["msd", "mtt"], 1, 0, "4q", "emotify",
                         genre_posterior=True, genre_init=init))
    assert "--genre-posterior" not in runs[tmp_path / "distill_x0"]
    for k in ("0", "all"):
        argv = runs[tmp_path / f"genre_x{k}"]
        assert "--genre-posterior" in argv and argv[argv.index("--init") + 1] == init
    assert runs[tmp_path / "genre_x0"][runs[tmp_path / "genre_x0"].index("--exclude-fold") + 1] == "0"


def test_teachers_svm_sees_only_the_labelled_clips_it_is_given(tmp_path, monkeypatch):
    """The posterior's SVM is fitted on the windows of the labelled clips passed in (train passes its own training
    clips, a fold's test clips already removed) and scores every window of every clip; a different training set is
    a different cache entry."""
    from training import teacher_svm
    from training.manifest import GENRES_EMOTIFY

    rng = np.random.default_rng(0)
    files = []
    for i in range(12):
        f = tmp_path / f"c{i}.wav"
        f.write_bytes(b"x" * (i + 1))
        files.append(Item(str(f), GENRES_EMOTIFY[i % 4] if i < 8 else MOODS_4Q[i % 4], None))
    feats = [rng.normal(size=(3, 6)) + (i % 4) for i in range(12)]
    monkeypatch.setattr(teacher_svm, "teachers_embeddings", lambda items, cache, *a, **k: [feats[files.index(it)] for it in items])
    seen = []
    fit = teacher_svm.SoftmaxSVC.fit
    monkeypatch.setattr(teacher_svm.SoftmaxSVC, "fit", lambda self, X, y: seen.append(X) or fit(self, X, y))
    genre = np.array([i % 4 if i < 8 else -1 for i in range(12)])
    genre[5] = -1  # e.g. a test-fold clip whose label train never has: its windows are scored, never fitted
    d = teacher_svm.window_decisions(files, genre, tmp_path / "cache")
    assert d.shape == (36, 4)
    expected = np.concatenate([feats[i] for i in range(12) if genre[i] >= 0])
    np.testing.assert_array_equal(seen[0], expected)
    np.testing.assert_array_equal(teacher_svm.window_decisions(files, genre, tmp_path / "cache"), d)
    assert len(seen) == 1, "the second call is read from the cache"
    genre[6] = -1
    teacher_svm.window_decisions(files, genre, tmp_path / "cache")
    assert len(seen) == 2, "another training set is another SVM"
    p = teacher_svm.softmax(d)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)

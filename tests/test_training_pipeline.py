"""The training package end to end on a tiny generated dataset, plus the shared metrics and the export contract.

Audio is synthesised per mood (different pitch, loudness and noise per label) and written as WAV at 22.05 kHz in
the ROOT/<label>/ layout, so the folder reader, the cached decode + runtime resampler + log-mel, a few training
steps, the ONNX export with metadata and the runtime's `MoodModel` all run for real. Full training runs are
commands (see exported_models/mood_cnn.md), not tests.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from training.manifest import MOODS_4Q, read_folder, write_manifest
from training.metrics import classification_report, clip_level, group_folds, plot_confusion, plot_reliability, summarize_folds

RATE = 22050
SECONDS = 3.5
CLIPS_PER_LABEL = 5
PITCH = {"happy": 660.0, "angry": 220.0, "sad": 330.0, "calm": 440.0}
NOISE = {"happy": 0.02, "angry": 0.3, "sad": 0.01, "calm": 0.05}


def write_tiny_dataset(root: Path, labels=MOODS_4Q) -> Path:
    """One folder per label; label k sounds like mood k (so a genre set reuses the four recipes)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(RATE * SECONDS)) / RATE
    for label, recipe in zip(labels, MOODS_4Q):
        (root / label).mkdir(parents=True)
        for i in range(CLIPS_PER_LABEL):
            f = PITCH[recipe] * (1 + 0.03 * i)
            y = 0.3 * np.sin(2 * np.pi * f * t) + NOISE[recipe] * rng.standard_normal(len(t))
            sf.write(root / label / f"{label}{i}.wav", (y * 0.8).astype(np.float32), RATE)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny")
    root = write_tiny_dataset(base / "audio")
    manifest = write_manifest(read_folder(root), base / "tiny.csv")
    return {"base": base, "root": root, "manifest": manifest, "cache": base / "cache"}


def parse(module, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def test_features_are_the_runtime_front_end_and_cached_by_recipe(tiny):
    from sendreturn_mood.audio.frontend import log_mel
    from sendreturn_mood.audio.resample import resample
    from training.cache import clip_logmel, dataset_logmels, decode, resolve_dataset
    from training.recipe import FRONTEND as TEACHER_SPEC

    items = resolve_dataset(str(tiny["manifest"]))
    assert len(items) == 4 * CLIPS_PER_LABEL and {it.label for it in items} == set(MOODS_4Q)
    mels = dataset_logmels(items, TEACHER_SPEC, tiny["cache"], progress=False)
    cached = list((tiny["cache"] / "logmel" / TEACHER_SPEC.key()).glob("*.npy"))
    assert len(cached) == len(items), "one cache entry per clip, under the recipe's key"
    y = decode(items[0].file, 16000)
    import soundfile as sf

    raw, sr = sf.read(items[0].file, dtype="float32")
    np.testing.assert_array_equal(y, resample(raw, sr, 16000))
    np.testing.assert_allclose(mels[0], log_mel(y, TEACHER_SPEC), atol=1e-6)
    np.testing.assert_array_equal(clip_logmel(items[0].file, TEACHER_SPEC, tiny["cache"]), mels[0])  # from the cache
    assert mels[0].shape == (96, 1 + len(y) // 256)


def test_train_export_load_predict_evaluate(tiny):
    from sendreturn_mood.model.contract import MoodModel
    from sendreturn_mood.audio.pipeline import AnalysisStream, WindowPlan
    from training import evaluate, export, train
    from training.cache import decode

    run_dir = tiny["base"] / "run"
    targs = parse(train, ["--data", str(tiny["manifest"]), "--out", str(run_dir), "--cache", str(tiny["cache"]),
                          "--no-teacher", "--epochs", "2", "--batch", "8", "--channels", "8", "16", "16",
                          "--embedding", "16", "--threads", "1", "--quiet"])
    assert train.run(targs) == 0
    assert (run_dir / "best.ckpt").is_file() and (run_dir / "last.ckpt").is_file()
    history = json.loads((run_dir / "history.json").read_text())
    assert history["epoch"] == 2 and np.isfinite(history["history"][-1]["valid_loss"])

    targs.resume, targs.epochs = True, 3  # resumable: continues at epoch 3 from last.ckpt
    assert train.run(targs) == 0
    assert json.loads((run_dir / "history.json").read_text())["epoch"] == 3

    onnx_path = tiny["base"] / "model.onnx"
    eargs = parse(export, ["--ckpt", str(run_dir / "best.ckpt"), "--out", str(onnx_path), "--mood-data", str(tiny["manifest"]),
                           "--genre-data", "", "--report", "", "--cache", str(tiny["cache"]), "--name", "tiny-pipeline",
                           "--C", "0.5"])
    assert export.run(eargs) == 0
    card = onnx_path.with_suffix(".md").read_text()
    assert "Model card: tiny-pipeline" in card and "Known limits" in card
    with pytest.raises(SystemExit, match="--force"):  # never overwrites a model silently
        export.run(eargs)
    before = onnx_path.read_bytes()
    report = tiny["base"] / "report.json"
    report.write_text(json.dumps({"summary": {"mood_student_cnn_clip_macro_f1": 0.5}, "command": "python -m training evaluate x"}))
    assert export.run(parse(export, ["--refresh", str(onnx_path), "--report", str(report), "--mood-data", ""])) == 0
    assert MoodModel(onnx_path).info.metrics == {"mood_student_cnn_clip_macro_f1": 0.5}
    import onnx

    assert onnx.load(str(onnx_path)).graph == onnx.load_from_string(before).graph, "refresh leaves the weights alone"

    model = MoodModel(onnx_path)
    assert model.info.mood_labels == list(MOODS_4Q) and model.info.patch_frames == 187
    assert model.info.provenance["training_command"].startswith("python -m training train")
    file = str(tiny["root"] / "angry" / "angry0.wav")
    stream = AnalysisStream(model.info.frontend, 16000, WindowPlan.from_seconds(model.info.frontend, 3.0, 1.5, 0.5))
    wins = stream.push(decode(file, 16000)) + stream.finish()
    assert wins, "a 3.5 s file gives at least one window"
    pred = model.predict(np.stack([w.logmel for w in wins[:1]]))
    assert pred.moods.shape == (1, 4) and abs(pred.moods.sum() - 1) < 1e-5
    short = model.predict(wins[0].logmel[:, :40])  # a short tail window: global pooling accepts any length
    assert short.moods.shape == (1, 4)

    out = tiny["base"] / "eval"
    vargs = parse(evaluate, ["--ckpt", str(run_dir / "best.ckpt"), "--mood-data", str(tiny["manifest"]), "--genre-data", "",
                             "--out", str(out), "--no-teacher", "--cache", str(tiny["cache"]), "--baselines", str(out / "none.json"),
                             "--C", "0.5"])
    assert evaluate.run(vargs) == 0
    rep = json.loads((out / "report.json").read_text())
    st = rep["mood"]["methods"]["student_cnn"]
    assert len(st["window"]["folds"]) == 5 and 0.0 <= st["clip"]["summary"]["accuracy_mean"] <= 1.0
    assert (out / "report.md").is_file() and (out / "mood_student_clip_confusion.png").stat().st_size > 1000
    va = st["valence_arousal"]["summary"]
    assert 0 <= va["window_signs_mean"] <= 1 and 0 <= va["clip_signs_calibrated_mean"] <= 1
    assert set(st["context"]) == {"1", "2", "4", "8", "16", "clip"}
    assert st["folds_that_heard_their_test_clips"] == [0, 1, 2, 3, 4], "one student for every fold heard them all"

    vargs.only_folds, vargs.out = [0, 2], str(tiny["base"] / "eval_partial")
    assert evaluate.run(vargs) == 0
    part = json.loads((tiny["base"] / "eval_partial" / "report.json").read_text())["mood"]
    assert part["folds_scored"] == [0, 2] and len(part["methods"]["student_cnn"]["window"]["folds"]) == 2
    assert "Only folds 0, 2 were scored" in (tiny["base"] / "eval_partial" / "report.md").read_text()

    vargs.only_folds, vargs.out, vargs.ckpt = None, str(tiny["base"] / "eval_none"), None  # teachers/majority only
    assert evaluate.run(vargs) == 0
    assert set(json.loads((tiny["base"] / "eval_none" / "report.json").read_text())["mood"]["methods"]) == {"majority"}


def test_genre_branch_is_a_second_student_in_the_same_graph(tiny):
    """export --genre-ckpt: mood and embedding from the mood student, genre from the genre student, one ONNX file."""
    import onnxruntime as ort
    import torch

    from sendreturn_mood.model.contract import MoodModel
    from training import evaluate, export, train
    from training.manifest import GENRES_EMOTIFY
    from training.checkpoints import load_net

    genre_manifest = write_manifest(read_folder(write_tiny_dataset(tiny["base"] / "genre_audio", GENRES_EMOTIFY)),
                                    tiny["base"] / "tiny_genre.csv")
    common = ["--cache", str(tiny["cache"]), "--no-teacher", "--epochs", "1", "--batch", "8", "--channels", "8", "16",
              "--embedding", "16", "--threads", "1", "--quiet"]
    mood_run, genre_run = tiny["base"] / "mood_run", tiny["base"] / "genre_run"
    assert train.run(parse(train, ["--data", str(tiny["manifest"]), "--out", str(mood_run), *common])) == 0
    assert train.run(parse(train, ["--data", str(genre_manifest), "--out", str(genre_run), "--tasks", "genre", *common])) == 0

    onnx_path = tiny["base"] / "branched.onnx"
    eargs = parse(export, ["--ckpt", str(mood_run / "best.ckpt"), "--genre-ckpt", str(genre_run / "best.ckpt"),
                           "--out", str(onnx_path), "--mood-data", str(tiny["manifest"]), "--genre-data", str(genre_manifest),
                           "--report", "", "--cache", str(tiny["cache"]), "--name", "tiny-branched", "--C", "0.5"])
    assert export.run(eargs) == 0
    model = MoodModel(onnx_path)
    assert model.info.genres == GENRES_EMOTIFY
    assert model.info.provenance["genre_branch"]["training_command"].count("--tasks genre") == 1
    assert "genre_branch" in model.info.provenance and model.info.provenance["heads"]["genre"]["clips"] == 4 * CLIPS_PER_LABEL

    x = (np.random.default_rng(1).random((40, 96, 187)) * 3).astype(np.float32)
    mood_logits, genre_logits, emb = ort.InferenceSession(str(onnx_path)).run(["mood_logits", "genre_logits", "embedding"], {"logmel": x})
    mood_net, genre_net = load_net(mood_run / "best.ckpt")[0], load_net(genre_run / "best.ckpt")[0]
    with torch.no_grad():
        np.testing.assert_allclose(emb, mood_net.embed(torch.from_numpy(x)).numpy(), atol=1e-4)
        genre_emb = genre_net.embed(torch.from_numpy(x)).numpy()
    # the genre head is an affine map of the genre student's embedding (16-d, 40 inputs: exact fit), not the mood one's
    def residual(features: np.ndarray) -> float:
        A = np.c_[features, np.ones(len(features))]
        return float(np.abs(A @ np.linalg.lstsq(A, genre_logits, rcond=None)[0] - genre_logits).max())

    assert residual(genre_emb) < 1e-3 < residual(emb)
    pred = model.predict(x)
    assert pred.genres is not None and pred.genres.shape == (40, 4)

    out = tiny["base"] / "eval_branched"
    vargs = parse(evaluate, ["--ckpt", str(mood_run / "best.ckpt"), "--genre-ckpt", str(genre_run / "best.ckpt"),
                             "--mood-data", str(tiny["manifest"]), "--genre-data", str(genre_manifest), "--out", str(out),
                             "--no-teacher", "--cache", str(tiny["cache"]), "--baselines", str(out / "none.json"), "--C", "0.5"])
    assert evaluate.run(vargs) == 0
    rep = json.loads((out / "report.json").read_text())
    assert str(genre_run) in rep["genre"]["methods"]["student_cnn"]["fold_students"]["0"]
    assert str(mood_run) in rep["mood"]["methods"]["student_cnn"]["fold_students"]["0"]


def test_export_mood_from_keeps_a_models_mood_side_and_swaps_its_genre_student(tiny):
    """export --mood-from MODEL --genre-ckpt G: MODEL's mood outputs unchanged (same nodes and weights; its mood
    checkpoint is not needed), genre from G (another width), metadata saying both."""
    import onnx
    import onnxruntime as ort
    import torch

    from sendreturn_mood.model.contract import MoodModel
    from training import export, train
    from training.checkpoints import load_net
    from training.graft import graft
    from training.manifest import GENRES_EMOTIFY

    genre_manifest = write_manifest(read_folder(write_tiny_dataset(tiny["base"] / "graft_genre_audio", GENRES_EMOTIFY)),
                                    tiny["base"] / "graft_genre.csv")
    common = ["--cache", str(tiny["cache"]), "--no-teacher", "--epochs", "1", "--batch", "8", "--embedding", "16",
              "--threads", "1", "--quiet"]
    runs = {name: tiny["base"] / f"graft_{name}" for name in ("mood", "genre_a", "genre_b")}
    for name, data, extra in (("mood", tiny["manifest"], ["--channels", "8", "16"]),
                              ("genre_a", genre_manifest, ["--channels", "8", "16", "--tasks", "genre"]),
                              ("genre_b", genre_manifest, ["--channels", "4", "8", "--tasks", "genre", "--seed", "1"])):
        assert train.run(parse(train, ["--data", str(data), "--out", str(runs[name]), *extra, *common])) == 0
    heads = ["--genre-data", str(genre_manifest), "--report", "", "--cache", str(tiny["cache"]), "--C", "0.5"]
    first, second = tiny["base"] / "graft_first.onnx", tiny["base"] / "graft_second.onnx"
    assert export.run(parse(export, ["--ckpt", str(runs["mood"] / "best.ckpt"), "--genre-ckpt", str(runs["genre_a"] / "best.ckpt"),
                                     "--out", str(first), "--mood-data", str(tiny["manifest"]), "--version", "1.0.0", *heads])) == 0
    with pytest.raises(SystemExit, match="--genre-ckpt"):
        export.run(parse(export, ["--mood-from", str(first), "--out", str(second), *heads]))
    assert export.run(parse(export, ["--mood-from", str(first), "--genre-ckpt", str(runs["genre_b"] / "best.ckpt"),
                                     "--out", str(second), "--version", "1.1.0", *heads])) == 0

    x = (np.random.default_rng(2).random((40, 96, 187)) * 3).astype(np.float32)
    names = ["mood_logits", "genre_logits", "embedding"]
    a = dict(zip(names, ort.InferenceSession(str(first)).run(names, {"logmel": x})))
    b = dict(zip(names, ort.InferenceSession(str(second)).run(names, {"logmel": x})))
    assert np.array_equal(a["mood_logits"], b["mood_logits"]) and np.array_equal(a["embedding"], b["embedding"])
    with torch.no_grad():
        genre_emb = load_net(runs["genre_b"] / "best.ckpt")[0].embed(torch.from_numpy(x)).numpy()
    A = np.c_[genre_emb, np.ones(len(x))]
    assert np.abs(A @ np.linalg.lstsq(A, b["genre_logits"], rcond=None)[0] - b["genre_logits"]).max() < 1e-3
    assert not np.allclose(a["genre_logits"], b["genre_logits"])
    info = MoodModel(second).info
    assert info.version == "1.1.0" and info.provenance["mood_side"]["from"].startswith("mood_cnn 1.0.0")
    assert info.provenance["genre_branch"]["net"]["channels"] == [4, 8]
    assert info.provenance["export_check"]["mood_side_max_abs_diff_vs_mood_from"] == 0.0
    assert info.provenance["net"] == MoodModel(first).info.provenance["net"], "the mood side's record is kept"
    from training.bench import multiply_adds

    cost_a, cost_b = multiply_adds(first, 96, 187), multiply_adds(second, 96, 187)
    assert cost_b["mood_logits"] == cost_a["mood_logits"] and cost_b["genre_logits"] < cost_a["genre_logits"]
    assert cost_b["total"] == cost_b["mood_logits"] + cost_b["genre_logits"], "two disjoint students"
    mood_only = onnx.load(str(first))
    mood_only.graph.output.pop(1)  # genre_logits
    with pytest.raises(ValueError, match="outputs"):
        graft(mood_only, onnx.load(str(second)))

    # its report: the genre student scored, the mood section kept from the first model's report (not re-scored)
    from training import evaluate

    scored, kept = tiny["base"] / "graft_eval_first", tiny["base"] / "graft_eval_second"
    base = ["--genre-data", str(genre_manifest), "--no-teacher", "--cache", str(tiny["cache"]), "--C", "0.5",
            "--baselines", str(scored / "none.json")]
    assert evaluate.run(parse(evaluate, ["--ckpt", str(runs["mood"] / "best.ckpt"), "--genre-ckpt", str(runs["genre_a"] / "best.ckpt"),
                                         "--mood-data", str(tiny["manifest"]), "--out", str(scored), *base])) == 0
    assert evaluate.run(parse(evaluate, ["--ckpt", str(runs["genre_b"] / "best.ckpt"), "--genre-ckpt", str(runs["genre_b"] / "best.ckpt"),
                                         "--mood-from-report", str(scored / "report.json"), "--out", str(kept), *base])) == 0
    first_rep, rep = (json.loads((d / "report.json").read_text()) for d in (scored, kept))
    assert rep["mood"]["methods"] == first_rep["mood"]["methods"]
    assert rep["mood"]["kept_from"]["command"] == first_rep["command"]
    assert str(runs["genre_b"]) in rep["genre"]["methods"]["student_cnn"]["fold_students"]["0"]
    assert rep["summary"]["mood_student_cnn_clip_accuracy"] == first_rep["summary"]["mood_student_cnn_clip_accuracy"]
    assert "Not re-scored here" in (kept / "report.md").read_text()


def test_wise_fine_tune_ships_the_average_of_init_and_tuned_weights(tiny):
    """train --init A --wise 0.5: best.ckpt = 0.5 A + 0.5 tuned (kept as tuned.ckpt); a resume recomputes the same
    average (never averages twice); the recorded command and the fold description say so."""
    import torch

    from sendreturn_mood.model.contract import MoodModel
    from training import export, train
    from training.checkpoints import describe_chain
    from training.train import training_command

    common = ["--data", str(tiny["manifest"]), "--cache", str(tiny["cache"]), "--no-teacher", "--batch", "8",
              "--channels", "8", "16", "--embedding", "16", "--threads", "1", "--quiet"]
    base, tuned = tiny["base"] / "wise_init", tiny["base"] / "wise_tuned"
    assert train.run(parse(train, [*common, "--epochs", "1", "--out", str(base)])) == 0
    targs = parse(train, [*common, "--epochs", "1", "--out", str(tuned), "--init", str(base / "best.ckpt"), "--wise", "0.5"])
    assert train.run(targs) == 0

    def load(p):
        return torch.load(p, map_location="cpu", weights_only=False)

    a, t, best = load(base / "best.ckpt"), load(tuned / "tuned.ckpt"), load(tuned / "best.ckpt")
    moved = 0
    for k, v in best["net"].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.5 * a["net"][k] + 0.5 * t["net"][k])
            moved += int(not torch.equal(a["net"][k], t["net"][k]))
        else:
            assert torch.equal(v, t["net"][k])
    assert moved > 0, "the fine-tune changed the weights, so the average is a real third point"
    assert "--wise 0.5" in training_command(best["args"])
    targs.resume = True  # the run is finished: resuming must rebuild the same best.ckpt, not average it again
    assert train.run(targs) == 0
    for k, v in load(tuned / "best.ckpt")["net"].items():
        assert torch.equal(v, best["net"][k])
    assert "weights averaged with its init, alpha 0.5" in describe_chain(str(tuned / "best.ckpt"), 0, "4q")
    assert best["command"] == training_command(best["args"]), "the checkpoint carries its own reproduce line"
    onnx_path = tiny["base"] / "wise.onnx"
    assert export.run(parse(export, ["--ckpt", str(tuned / "best.ckpt"), "--out", str(onnx_path), "--mood-data",
                                     str(tiny["manifest"]), "--genre-data", "", "--report", "", "--cache", str(tiny["cache"]),
                                     "--C", "0.5"])) == 0
    assert "WiSE-FT" in onnx_path.with_suffix(".md").read_text()
    assert any("Wortsman" in c for c in MoodModel(onnx_path).info.provenance["citations"])
    with pytest.raises(SystemExit, match="--wise needs --init"):
        train.run(parse(train, [*common, "--out", str(tiny["base"] / "bad"), "--wise", "0.5"]))


def test_mood_ensemble_graph_computes_what_evaluate_scored(tiny):
    """export --ckpt A,B --genre-ckpt G: one graph with three students; the mood is the mean of A's and B's own
    heads' logits (each fitted on its member's embedding, as `evaluate` scores an ensemble), the embedding is theirs
    concatenated, and the genre still comes from G. The provenance and the card name every member's command."""
    import onnxruntime as ort
    import torch

    from sendreturn_mood.model.contract import MoodModel
    from training import evaluate, export, train
    from training.cache import dataset_logmels, resolve_dataset
    from training.cv import LinearHead
    from training.heads import embed, torch_embedder, windows
    from training.manifest import GENRES_EMOTIFY
    from training.recipe import FRONTEND as TEACHER_SPEC
    from training.checkpoints import load_net

    genre_manifest = write_manifest(read_folder(write_tiny_dataset(tiny["base"] / "ens_genre_audio", GENRES_EMOTIFY)),
                                    tiny["base"] / "ens_genre.csv")
    common = ["--cache", str(tiny["cache"]), "--no-teacher", "--epochs", "1", "--batch", "8", "--channels", "8", "16",
              "--embedding", "16", "--threads", "1", "--quiet"]
    runs = [tiny["base"] / f"ens_seed{seed}" for seed in (0, 1)]
    for seed, run in enumerate(runs):
        assert train.run(parse(train, ["--data", str(tiny["manifest"]), "--out", str(run), "--seed", str(seed), *common])) == 0
    genre_run = tiny["base"] / "ens_genre_run"
    assert train.run(parse(train, ["--data", str(genre_manifest), "--out", str(genre_run), "--tasks", "genre", *common])) == 0
    spec = ",".join(str(r / "best.ckpt") for r in runs)

    onnx_path = tiny["base"] / "ensemble.onnx"
    assert export.run(parse(export, ["--ckpt", spec, "--genre-ckpt", str(genre_run / "best.ckpt"), "--out", str(onnx_path),
                                     "--mood-data", str(tiny["manifest"]), "--genre-data", str(genre_manifest), "--report", "",
                                     "--cache", str(tiny["cache"]), "--name", "tiny-ensemble", "--C", "0.5"])) == 0
    model = MoodModel(onnx_path)
    members = model.info.provenance["mood_ensemble"]
    assert [m["seed"] for m in members] == [0, 1] and "--seed 1" in members[1]["training_command"]
    assert model.info.description.startswith("Three small CNNs") and "mean of two students' logits" in model.info.description
    assert model.info.provenance["heads"]["mood"]["C"] == [0.5, 0.5]

    items = resolve_dataset(str(tiny["manifest"]))
    per_clip, clip_idx = windows(dataset_logmels(items, TEACHER_SPEC, tiny["cache"], progress=False))
    y = np.array([MOODS_4Q.index(items[i].label) for i in clip_idx])
    nets = [load_net(r / "best.ckpt")[0] for r in runs]
    Xs = [embed(torch_embedder(n), per_clip) for n in nets]
    expected = LinearHead(4, C=0.5).fit(Xs, y, [items[i].group or items[i].file for i in clip_idx]).predict_proba(Xs)
    allw = np.concatenate(per_clip)
    np.testing.assert_allclose(model.predict(allw).moods, expected, atol=1e-4)
    mood_logits, emb = ort.InferenceSession(str(onnx_path)).run(["mood_logits", "embedding"], {"logmel": allw})
    with torch.no_grad():
        np.testing.assert_allclose(emb, torch.cat([n.embed(torch.from_numpy(allw)) for n in nets], 1).numpy(), atol=1e-4)
    assert emb.shape == (len(allw), 32) and model.predict(allw).genres.shape == (len(allw), 4)

    card = onnx_path.with_suffix(".md").read_text()
    assert "Mood is an ensemble of 2 such students (seeds 0, 1" in card
    assert all(m["training_command"] in card for m in members)

    out = tiny["base"] / "eval_ensemble"
    assert evaluate.run(parse(evaluate, ["--ckpt", spec, "--fold-ckpt", f"0={spec}", "--mood-data", str(tiny["manifest"]),
                                         "--genre-data", "", "--out", str(out), "--no-teacher", "--cache", str(tiny["cache"]),
                                         "--baselines", str(out / "none.json"), "--C", "0.5"])) == 0
    st = json.loads((out / "report.json").read_text())["mood"]["methods"]["student_cnn"]
    assert st["C_per_fold"][0] == [0.5, 0.5]
    assert all(str(r) in st["fold_students"]["0"] for r in runs) and " + " in st["fold_students"]["0"]


def test_musicnn_in_torch_matches_the_onnx_teacher():
    """training.musicnn rebuilds the teacher layer by layer (for fine-tuning): same outputs as onnxruntime."""
    import onnxruntime as ort
    import torch

    from training.musicnn import MusiCNN
    from training.teacher import TEACHER_PATH

    if not TEACHER_PATH.is_file():
        pytest.skip(f"musicnn teacher not found at {TEACHER_PATH} (it lives beside the repository in ../shared/models)")
    x = (np.random.default_rng(0).random((2, 187, 96)) * 3).astype(np.float32)
    ref = ort.InferenceSession(str(TEACHER_PATH)).run(["embedding:0", "logits:0", "max_pool:0"], {"melspec:0": x})
    with torch.no_grad():
        got = MusiCNN(TEACHER_PATH).eval()(torch.from_numpy(x))
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g.numpy(), r, atol=1e-3 * max(1.0, float(np.abs(r).max())))


def test_teacher_outputs_are_finite(tiny):
    from training.teacher import PATCH_FRAMES, TEACHER_PATH, clip_teacher_outputs

    if not TEACHER_PATH.is_file():
        pytest.skip(f"musicnn teacher not found at {TEACHER_PATH} (it lives beside the repository in ../shared/models)")
    out = clip_teacher_outputs(str(tiny["root"] / "calm" / "calm0.wav"), None, tiny["cache"])
    assert out["embedding"].shape == (1, 200) and out["logits"].shape == (1, 50) and out["max_pool"].shape == (1, 753)
    assert all(np.isfinite(v).all() for v in out.values()), "no float16 overflow (the numpy-2 trap)"
    assert PATCH_FRAMES == 187


def test_group_folds_never_split_a_group():
    labels = [MOODS_4Q[i % 4] for i in range(60)]
    groups = [f"artist{i // 3}" for i in range(60)]
    folds = group_folds(labels, groups, n_splits=5, seed=0)
    assert len(folds) == 5
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(60)), "every clip is tested exactly once"
    for tr, te in folds:
        assert not {groups[i] for i in tr} & {groups[i] for i in te}


def test_classification_report_matches_sklearn_and_calibration():
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    rng = np.random.default_rng(1)
    labels = ["a", "b", "c"]
    y = rng.choice(labels, 200).tolist()
    p = [t if rng.random() < 0.6 else rng.choice(labels) for t in y]
    r = classification_report(y, p, labels)
    assert r["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert r["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert r["confusion"] == confusion_matrix(y, p, labels=labels).tolist()
    onehot = np.eye(3)[[labels.index(v) for v in p]] * 0.999 + 0.001 / 3
    rc = classification_report(y, p, labels, onehot)
    assert rc["ece"] == pytest.approx(abs(0.999 + 0.001 / 3 - r["accuracy"]), abs=1e-9), "all confidence in one bin"
    assert rc["nll"] > 0 and sum(b["count"] for b in rc["reliability"]) == 200
    ids, mean = clip_level(np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), ["x", "y", "x"])
    assert ids == ["x", "y"] and mean.tolist() == [[0.5, 0, 0.5], [0, 1, 0]]
    s = summarize_folds([{"accuracy": 0.5, "macro_f1": 0.4}, {"accuracy": 0.7, "macro_f1": 0.6}])
    assert s["accuracy_mean"] == pytest.approx(0.6) and s["accuracy_std"] == pytest.approx(0.1)


def test_select_C_uses_only_the_data_it_is_given():
    from training.cv import select_C
    from training.recipe import C_GRID

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    X = rng.standard_normal((120, 5)) + y[:, None] * 0.8
    groups = np.array([f"g{i // 2}" for i in range(120)])
    assert select_C(X, y, groups, 4) in C_GRID


def test_plots_are_written(tmp_path):
    r = classification_report(["a", "b", "b"], ["a", "b", "a"], ["a", "b"], np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    assert plot_confusion(r, ["a", "b"], tmp_path / "c.png").stat().st_size > 1000
    assert plot_reliability(r, tmp_path / "r.png").stat().st_size > 1000


def test_card_says_only_what_the_fold_chains_heard():
    """The card's honesty line is read from the list of folds the report recorded (from the checkpoint chains)."""
    from training.card import honesty

    def report(heard):
        return {"mood": {"methods": {"student_cnn": {"folds_that_heard_their_test_clips": heard}}}}

    assert "Nor did their audio" in honesty(report([]))
    assert "fold(s) 1 did hear" in honesty(report([1])) and "Nor did" not in honesty(report([1]))
    assert "not recorded" in honesty({"mood": {"methods": {"student_cnn": {}}}})


def test_card_seed_noise_line_comes_from_the_seed_experiment(tmp_path):
    """The "Seed noise" limit quotes the other seed's record beside this model's report, and is absent without it."""
    from training.card import SEED_EXPERIMENT, seed_noise

    report = {"summary": {"mood_student_cnn_window_accuracy": 0.667, "mood_student_cnn_clip_macro_f1": 0.719}}
    assert seed_noise(report, tmp_path) == []
    (tmp_path / f"{SEED_EXPERIMENT}.json").write_text(json.dumps({"summary": {
        "mood_student_cnn_window_accuracy": 0.6632, "mood_student_cnn_clip_macro_f1": 0.7077}}))
    (line,) = seed_noise(report, tmp_path)
    assert "0.663 and clip macro-F1 0.708, against 0.667 / 0.719" in line


def test_rff_genre_head_in_the_graph_computes_what_evaluate_scores(tiny):
    """export --genre-head rff: the SVM-like head (random Fourier features + linear) lives in the ONNX graph as
    Linear -> Cos -> Linear, and gives the probabilities `training.cv.RandomFeatureHead` gives on the embedding."""
    import torch

    from sendreturn_mood.model.contract import MoodModel
    from training import export, train
    from training.cache import dataset_logmels, resolve_dataset
    from training.checkpoints import load_net
    from training.cv import RandomFeatureHead
    from training.heads import embed, torch_embedder, windows
    from training.manifest import GENRES_EMOTIFY
    from training.recipe import FRONTEND

    genre_manifest = write_manifest(read_folder(write_tiny_dataset(tiny["base"] / "rff_genre_audio", GENRES_EMOTIFY)),
                                    tiny["base"] / "rff_genre.csv")
    run = tiny["base"] / "rff_genre_run"
    assert train.run(parse(train, ["--data", str(genre_manifest), "--out", str(run), "--tasks", "genre", "--cache",
                                   str(tiny["cache"]), "--no-teacher", "--epochs", "1", "--batch", "8", "--channels", "8",
                                   "16", "--embedding", "16", "--threads", "1", "--quiet"])) == 0
    onnx_path = tiny["base"] / "rff.onnx"
    assert export.run(parse(export, ["--ckpt", str(run / "best.ckpt"), "--out", str(onnx_path), "--mood-data", "",
                                     "--genre-data", str(genre_manifest), "--genre-head", "rff", "--report", "",
                                     "--cache", str(tiny["cache"]), "--C", "0.5"])) == 0
    model = MoodModel(onnx_path)
    assert model.info.provenance["heads"]["genre"]["head"] == "rff"
    items = resolve_dataset(str(genre_manifest))
    per_clip, clip_idx = windows(dataset_logmels(items, FRONTEND, tiny["cache"], progress=False))
    X = embed(torch_embedder(load_net(run / "best.ckpt")[0]), per_clip)
    y = np.array([GENRES_EMOTIFY.index(items[i].label) for i in clip_idx])
    expected = RandomFeatureHead(4, C=0.5).fit([X], y, [items[i].file for i in clip_idx]).predict_proba([X])
    with torch.no_grad():
        got = model.predict(np.concatenate(per_clip)).genres
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_genre_posterior_trains_on_labelled_and_unlabelled_windows(tiny):
    """train --genre-posterior: the teachers' SVM posterior is a genre target on every window (mood clips have no
    genre label), the true-label cross-entropy stays, and the reproduce command records the option."""
    import torch

    from training import train
    from training.manifest import GENRES_EMOTIFY
    from training.teacher import teacher_available

    if not (teacher_available("msd") and teacher_available("mtt")):
        pytest.skip("the musicnn teachers are not in ../shared/models (they live beside the repository)")
    genre_manifest = write_manifest(read_folder(write_tiny_dataset(tiny["base"] / "post_genre_audio", GENRES_EMOTIFY)),
                                    tiny["base"] / "post_genre.csv")
    run = tiny["base"] / "posterior_run"
    argv = ["--data", str(tiny["manifest"]), str(genre_manifest), "--out", str(run), "--supervised", "--tasks", "genre",
            "--genre-posterior", "--teachers", "msd", "mtt", "--fold-data", str(genre_manifest), "--exclude-fold", "0",
            "--cache", str(tiny["cache"]), "--epochs", "1", "--batch", "8", "--channels", "8", "16", "--embedding", "16",
            "--threads", "1", "--quiet"]
    assert train.run(parse(train, argv)) == 0
    ck = torch.load(run / "best.ckpt", map_location="cpu", weights_only=False)
    assert "--genre-posterior" in ck["command"] and ck["genre_posterior"]["weight"] > 0
    history = json.loads((run / "history.json").read_text())["history"]
    assert {"posterior", "genre", "distill"} <= set(history[0]["train"])
    svm_cache = list((tiny["cache"] / "teacher_svm").glob("*.npz"))
    assert len(svm_cache) == 1
    # the SVM never saw the excluded fold: the run's clips are the cached decisions' rows, without fold 0's test clips
    test_files = {str(Path(f).name) for f in ck["items"]}
    assert len([f for f in test_files if f.startswith(tuple(GENRES_EMOTIFY))]) < 4 * CLIPS_PER_LABEL

"""`python -m sendreturn_mood analyze FILE... [--json]`: the server's streaming path, run over audio files.

Files go through exactly what a room's source goes through (`AnalysisStream` for resampling, log-mel and windows,
`MoodModel.predict`, `MoodTracker` for smoothing, hysteresis and effects), so the per-hop values printed here are
the `mood` messages the server would broadcast for the same audio and settings. That makes `analyze` the tool to
check what a room will see for a song, and the reference the server is tested against.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .config import ConfigError, load_config
from .effects import EffectsError, load_presets
from .model import ModelError, ModelInfo, MoodModel
from .pipeline import AnalysisStream, Window, WindowPlan
from .tracker import DECIMALS, MoodTracker, tracker_from_config

READ_BLOCK_SECONDS = 60.0  # files go through the pipeline in blocks this long: memory stays bounded, and few
# stops mid-file (libmpg123 prints spurious "part2_3_length" warnings at some block boundaries)


class AnalyzeError(ValueError):
    """A file that cannot be analysed (unreadable, no audio, too short); the message names the file."""


def window_plan(info: ModelInfo, config: dict[str, Any]) -> WindowPlan:
    """Window geometry from the config: `analysis.window_seconds` or, when null, the model's own patch length.

    The server must build its rooms' plans with this function too, or its windows would differ from analyze's.
    """
    a = config["analysis"]
    spec = info.frontend
    window = info.patch_frames if a["window_seconds"] is None else spec.seconds_to_frames(a["window_seconds"])
    return WindowPlan(
        window_frames=window,
        hop_frames=spec.seconds_to_frames(a["hop_seconds"]),
        min_frames=spec.seconds_to_frames(a["min_seconds"]),
    )


def read_blocks(path: Path) -> tuple[int, Iterator[np.ndarray]]:
    """(sample rate, iterator of mono float32 blocks). Raises AnalyzeError for a file soundfile cannot open."""
    import soundfile as sf

    if not path.is_file():
        raise AnalyzeError(f"{path}: no such file")
    try:
        f = sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
        raise AnalyzeError(f"{path}: cannot read audio: {e}") from None

    def blocks() -> Iterator[np.ndarray]:
        with f:
            size = max(1024, int(f.samplerate * READ_BLOCK_SECONDS))
            try:
                for block in f.blocks(blocksize=size, dtype="float32", always_2d=True):
                    yield block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
                raise AnalyzeError(f"{path}: cannot decode audio: {e}") from None

    return int(f.samplerate), blocks()


def predict_windows(model: MoodModel, windows: list[Window], max_batch: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Per-window (mood probabilities, genre probabilities or None), batching windows of equal length."""
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    i = 0
    while i < len(windows):
        j = i + 1
        while j < len(windows) and j - i < max_batch and windows[j].logmel.shape == windows[i].logmel.shape:
            j += 1
        pred = model.predict(np.stack([w.logmel for w in windows[i:j]]))
        for k in range(j - i):
            out.append((pred.moods[k], None if pred.genres is None else pred.genres[k]))
        i = j
    return out


def analyze_file(
    path: str | Path, model: MoodModel, config: dict[str, Any], preset: str | None = None, tracker: MoodTracker | None = None
) -> dict[str, Any]:
    """Analyse one file through the server's streaming path -> the dict `--json` prints for it.

    `timeline` holds one `MoodTracker.update` result per hop (what the server broadcasts, minus type/room/seq/
    track/latency_ms); the whole-file summary is the mean of the instant probabilities over all windows.
    """
    path = Path(path)
    info = model.info
    if tracker is None:
        presets = load_presets(config["effects"]["file"], config["effects"]["default_preset"])
        tracker = tracker_from_config(info, config, presets, preset)
    else:
        tracker.reset()
    rate, blocks = read_blocks(path)
    stream = AnalysisStream(info.frontend, rate, window_plan(info, config))
    windows: list[Window] = []
    samples = 0
    for block in blocks:
        if not np.isfinite(block).all():
            raise AnalyzeError(f"{path}: the decoded audio contains NaN or infinite samples")
        samples += block.size
        windows.extend(stream.push(block))
    duration = samples / rate
    windows.extend(stream.finish())
    if not windows:
        raise AnalyzeError(
            f"{path}: too short to analyse ({duration:.2f} s of audio; at least "
            f"{config['analysis']['min_seconds']} s needed)"
        )
    try:
        preds = predict_windows(model, windows, int(config["analysis"]["max_batch"]))
    except Exception as e:  # onnxruntime raises its own exception types; name the file and carry on with the others
        raise AnalyzeError(f"{path}: inference failed: {e}") from None
    timeline = [tracker.update(m, g, w.stream_time) for w, (m, g) in zip(windows, preds)]

    mean = np.mean([m for m, _ in preds], axis=0)
    va = info.to_valence_arousal(mean)
    labels = info.mood_labels
    result: dict[str, Any] = {
        "file": str(path),
        "duration": round(duration, DECIMALS),
        "model": {"name": info.name, "version": info.version},
        "preset": tracker.preset,
        "windows": len(windows),
        "mood": labels[int(np.argmax(mean))],
        "probabilities": {label: round(float(p), DECIMALS) for label, p in zip(labels, mean)},
        "valence": round(float(va[0]), DECIMALS) + 0.0,
        "arousal": round(float(va[1]), DECIMALS) + 0.0,
    }
    genre_preds = [g for _, g in preds if g is not None]
    if info.genres and genre_preds:
        gmean = np.mean(genre_preds, axis=0)
        result["genre"] = {
            "label": info.genres[int(np.argmax(gmean))],
            "probabilities": {label: round(float(p), DECIMALS) for label, p in zip(info.genres, gmean)},
        }
    result["timeline"] = timeline
    return result


# ------------------------------------------------------------------------------------------------------ the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", metavar="FILE", nargs="+", help="audio files (wav, mp3, flac, ogg)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per file")
    parser.add_argument("--config", metavar="FILE", help="configuration YAML (defaults: `config` subcommand)")
    parser.add_argument("--model", metavar="PATH", help="ONNX model (default: config model.path, else the shipped one)")
    parser.add_argument("--preset", metavar="NAME", help="effect preset (default: config effects.default_preset)")


def format_human(result: dict[str, Any]) -> str:
    """A per-hop timeline and a summary line, for people."""
    labels = list(result["probabilities"])
    lines = [
        f"{result['file']}  ({result['duration']:.1f} s, {result['windows']} windows, model "
        f"{result['model']['name']} {result['model']['version']}, preset {result['preset']})",
        "    time  mood        conf  " + " ".join(f"{label[:7]:>7}" for label in labels) + "  valence arousal",
    ]
    for u in result["timeline"]:
        probs = " ".join(f"{u['probabilities'][label]:7.2f}" for label in labels)
        genre = f"  {u['genre']['label']}" if "genre" in u else ""
        lines.append(
            f"  {u['stream_time']:6.1f}  {u['mood']:<10} {u['confidence']:5.2f}  {probs}  "
            f"{u['valence']:+7.2f} {u['arousal']:+7.2f}{genre}"
        )
    summary = " ".join(f"{label} {p:.2f}" for label, p in result["probabilities"].items())
    genre = f"  genre {result['genre']['label']}" if "genre" in result else ""
    lines.append(
        f"  summary: {result['mood']}  ({summary})  valence {result['valence']:+.2f}  "
        f"arousal {result['arousal']:+.2f}{genre}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """0: every file analysed; 1: some file could not be analysed (others still were); 2: bad setup."""
    try:
        config = load_config(args.config, {"model.path": args.model})
        model = MoodModel(config["model"]["path"], threads=int(config["model"]["threads"]))
        presets = load_presets(config["effects"]["file"], config["effects"]["default_preset"])
        if args.preset is not None and args.preset not in presets:
            raise EffectsError(f"unknown preset {args.preset!r} (presets: {', '.join(presets.names)})")
        tracker = tracker_from_config(model.info, config, presets, args.preset)
    except (ConfigError, ModelError, EffectsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = 0
    for i, file in enumerate(args.files):
        try:
            result = analyze_file(file, model, config, tracker=tracker)
        except AnalyzeError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(("\n" if i else "") + format_human(result), flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (the package's __main__ normally dispatches to `run`)."""
    parser = argparse.ArgumentParser(prog="sendreturn_mood analyze", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""`python -m sendreturn_mood analyze FILE... [--json]`: the server's streaming path, run over audio files.

Files go through exactly what a room's source goes through (`AnalysisStream` for resampling, log-mel and windows,
`MoodModel.predict`, `TrackChangeDetector` for track changes heard in the audio, `MoodTracker` for smoothing,
hysteresis and effects), so the per-hop values and track changes printed here are the `mood` and `track_change`
messages the server would broadcast for the same audio and settings. That makes `analyze` the tool to
check what a room will see for a song, and the reference the server is tested against.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .audiofiles import AUDIO_EXTENSIONS, find_audio
from .config import ConfigError, load_config
from .effects import EffectsError, load_presets
from .model import ModelError, ModelInfo, MoodModel
from .pcm import BadAudio, check_samples
from .pipeline import AnalysisStream, Window, window_plan
from .trackchange import TrackChangeDetector, TrackChangeError, detector_from_config
from .tracker import DECIMALS, SILENT, MoodTracker, tracker_from_config

READ_BLOCK_SECONDS = 60.0  # files go through the pipeline in blocks this long: memory stays bounded, and few
# stops mid-file (libmpg123 prints spurious "part2_3_length" warnings at some block boundaries)


class AnalyzeError(ValueError):
    """A file that cannot be analysed (unreadable, no audio, too short); the message names the file."""


def read_blocks(path: Path) -> tuple[int, Iterator[np.ndarray]]:
    """(sample rate, iterator of mono float32 blocks). Raises AnalyzeError for a file soundfile cannot open."""
    import soundfile as sf

    if not path.is_file():
        raise AnalyzeError(f"{path}: no such file")
    try:
        f = sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
        raise AnalyzeError(f"{path}: corrupt or unsupported audio ({_decoder_reason(e)})") from None

    def blocks() -> Iterator[np.ndarray]:
        with f:
            size = max(1024, int(f.samplerate * READ_BLOCK_SECONDS))
            try:
                for block in f.blocks(blocksize=size, dtype="float32", always_2d=True):
                    yield block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
                raise AnalyzeError(f"{path}: corrupt or unsupported audio ({_decoder_reason(e)})") from None

    return int(f.samplerate), blocks()


def _decoder_reason(error: Exception) -> str:
    """libsndfile's reason without its "Error opening 'FILE': " prefix. For an undecodable MP3 it says the file
    "does not exist", which is wrong (the file is there): that becomes what it means."""
    reason = str(error).split("': ", 1)[-1].strip()
    if "does not exist" in reason:
        return "the decoder found no audio it can read in it"
    return reason


Row = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]


def predict_windows(model: MoodModel, windows: list[Window], max_batch: int) -> list[Row]:
    """Per-window (mood probabilities, genre probabilities or None, embedding or None), batching windows of equal
    length."""
    out: list[Row] = []
    i = 0
    while i < len(windows):
        j = i + 1
        while j < len(windows) and j - i < max_batch and windows[j].logmel.shape == windows[i].logmel.shape:
            j += 1
        pred = model.predict(np.stack([w.logmel for w in windows[i:j]]))
        for k in range(j - i):
            out.append((
                pred.moods[k],
                None if pred.genres is None else pred.genres[k],
                None if pred.embeddings is None else pred.embeddings[k],
            ))
        i = j
    return out


def analyze_file(
    path: str | Path,
    model: MoodModel,
    config: dict[str, Any],
    preset: str | None = None,
    tracker: MoodTracker | None = None,
    detector: TrackChangeDetector | None = None,
) -> dict[str, Any]:
    """Analyse one file through the server's streaming path -> the dict `--json` prints for it.

    `timeline` holds one `MoodTracker.update` result per hop (what the server broadcasts, minus type/room/seq/
    track/latency_ms); `track_changes` the changes the room's detector hears (the server's `track_change`
    messages minus type/room; each resets the smoothing, as in a room); the whole-file summary is the mean of the
    instant probabilities over all windows.
    """
    path = Path(path)
    info = model.info
    plan = window_plan(info, config)
    if tracker is None:
        presets = load_presets(config["effects"]["file"], config["effects"]["default_preset"])
        tracker = tracker_from_config(info, config, presets, preset)
    else:
        tracker.reset()
    if detector is None:
        detector = detector_from_config(config, info, info.frontend.frames_to_seconds(plan.window_frames), model.has_embedding)
    else:
        detector.reset()
    rate, blocks = read_blocks(path)
    stream = AnalysisStream(info.frontend, rate, plan)
    windows: list[Window] = []
    samples = 0
    for block in blocks:
        try:
            check_samples(block)  # the server's own check on float audio (bad_audio there)
        except BadAudio as e:
            raise AnalyzeError(f"{path}: the decoded audio is unusable: {e}") from None
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
    timeline = []
    track_changes = []
    for w, (m, g, e) in zip(windows, preds):  # the order of rooms.Room.on_window: detector, then smoothing
        change = detector.update(w.stream_time, w.logmel, e, g)
        if change is not None:
            tracker.reset()
            track_changes.append(change.to_dict())
        timeline.append(tracker.update(m, g, w.stream_time, w.logmel))
    silent = [u.get("state") == SILENT for u in timeline]
    if not all(silent):  # the summary is about the music: silent windows say nothing about mood
        preds = [p for p, quiet in zip(preds, silent) if not quiet]

    n_moods = len(info.mood_labels)
    mean = np.mean([m for m, _, _ in preds], axis=0) if not all(silent) else np.full(n_moods, 1 / n_moods)
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
    genre_preds = [g for _, g, _ in preds if g is not None]
    if info.genres and genre_preds:
        gmean = np.mean(genre_preds, axis=0)
        result["genre"] = {
            "label": info.genres[int(np.argmax(gmean))],
            "probabilities": {label: round(float(p), DECIMALS) for label, p in zip(info.genres, gmean)},
        }
    result["silent_spans"] = silent_spans(windows, silent, info.frontend.frames_to_seconds)
    result["track_detection"] = detector.enabled
    result["track_changes"] = track_changes
    result["timeline"] = timeline
    return result


def silent_spans(windows: list[Window], silent: list[bool], frames_to_seconds: Any) -> list[list[float]]:
    """[start, end] seconds of the file covered by runs of silent windows (a window spans its frames up to its
    stream_time, so a run covers from its first window's start to its last window's end)."""
    spans: list[list[float]] = []
    for w, quiet in zip(windows, silent):
        if not quiet:
            continue
        start = max(0.0, w.stream_time - frames_to_seconds(w.logmel.shape[1]))
        if spans and start <= spans[-1][1]:
            spans[-1][1] = round(w.stream_time, DECIMALS)
        else:
            spans.append([round(start, DECIMALS), round(w.stream_time, DECIMALS)])
    return spans


# ------------------------------------------------------------------------------------------------------ the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", metavar="PATH", nargs="+",
                        help="audio files (wav, mp3, flac, ogg) and/or folders (searched recursively for audio files)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per file")
    parser.add_argument("--config", metavar="FILE", help="configuration YAML (defaults: `config` subcommand)")
    parser.add_argument("--model", metavar="PATH", help="ONNX model (default: config model.path, else the shipped one)")
    parser.add_argument("--preset", metavar="NAME", help="effect preset (default: config effects.default_preset)")
    parser.add_argument(
        "--track-detection", choices=("on", "off"),
        help="hear track changes in the audio, as a room does (default: config track_detection.enabled)",
    )


def format_human(result: dict[str, Any]) -> str:
    """A per-hop timeline and a summary line, for people."""
    labels = list(result["probabilities"])
    lines = [
        f"{result['file']}  ({result['duration']:.1f} s, {result['windows']} windows, model "
        f"{result['model']['name']} {result['model']['version']}, preset {result['preset']})",
        "    time  mood        conf  " + " ".join(f"{label[:7]:>7}" for label in labels) + "  valence arousal",
    ]
    changes = {c["detected_at"]: c for c in result.get("track_changes", [])}
    for u in result["timeline"]:
        if u["stream_time"] in changes:
            c = changes[u["stream_time"]]
            lines.append(
                f"  ------  track change heard (a new track from ~{c['stream_time']:.1f} s; score {c['score']:.2f} "
                f">= {c['threshold']:.2f}): smoothing restarts"
            )
        probs = " ".join(f"{u['probabilities'][label]:7.2f}" for label in labels)
        genre = f"  {u['genre']['label']}" if "genre" in u else ""
        genre += "  (silent: held)" if u.get("state") == SILENT else ""
        lines.append(
            f"  {u['stream_time']:6.1f}  {u['mood']:<10} {u['confidence']:5.2f}  {probs}  "
            f"{u['valence']:+7.2f} {u['arousal']:+7.2f}{genre}"
        )
    summary = " ".join(f"{label} {p:.2f}" for label, p in result["probabilities"].items())
    genre = f"  genre {result['genre']['label']}" if "genre" in result else ""
    for start, end in result.get("silent_spans", []):
        lines.append(f"  silent {start:.1f}-{end:.1f} s")
    lines.append(
        f"  summary: {result['mood']}  ({summary})  valence {result['valence']:+.2f}  "
        f"arousal {result['arousal']:+.2f}{genre}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """0: every file analysed; 1: some file could not be analysed (others still were); 2: bad setup."""
    try:
        switch = {"on": True, "off": False}.get(args.track_detection or "")
        config = load_config(args.config, {"model.path": args.model, "track_detection.enabled": switch})
        model = MoodModel(config["model"]["path"], threads=int(config["model"]["threads"]))
        presets = load_presets(config["effects"]["file"], config["effects"]["default_preset"])
        if args.preset is not None and args.preset not in presets:
            raise EffectsError(f"unknown preset {args.preset!r} (presets: {', '.join(presets.names)})")
        tracker = tracker_from_config(model.info, config, presets, args.preset)
        plan = window_plan(model.info, config)
        window_seconds = model.info.frontend.frames_to_seconds(plan.window_frames)
        detector = detector_from_config(config, model.info, window_seconds, model.has_embedding)
    except (ConfigError, ModelError, EffectsError, TrackChangeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = 0
    files: list[Path] = []
    for arg in args.files:  # folders -> the audio files inside them; a missing path or an empty folder is an error
        try:
            found = find_audio([arg])
        except FileNotFoundError:
            print(f"error: {arg}: no such file or folder", file=sys.stderr)
            status = 1
            continue
        if not found:
            print(f"error: {arg}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder", file=sys.stderr)
            status = 1
        files += found
    for i, file in enumerate(files):
        try:
            result = analyze_file(file, model, config, tracker=tracker, detector=detector)
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

"""`python -m sendreturn_mood analyze FILE... [--json]`: the server's streaming path (`room.offline`) over audio files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..audio.files import AUDIO_EXTENSIONS, find_audio
from ..audio.pipeline import window_plan
from ..config import ConfigError, load_config
from ..model.contract import ModelError, MoodModel
from ..room.effects import EffectsError, load_presets
from ..room.offline import AnalyzeError, analyze_file
from ..room.trackchange import TrackChangeError, detector_from_config
from ..room.tracker import SILENT, tracker_from_config

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", metavar="PATH", nargs="+",
                        help="audio files (wav, mp3, flac, ogg) and/or folders (searched recursively for audio files)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per file")
    parser.add_argument("--config", metavar="FILE", help="configuration YAML (defaults: `config` subcommand)")
    parser.add_argument("--model", metavar="NAME|PATH", help="a shipped model's name or an ONNX file (default: config model.path, else the shipped one)")
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
        genre = f"  {u['genre']['label'] or '-'}" if "genre" in u else ""
        genre += "  (silent: held)" if u.get("state") == SILENT else ""
        lines.append(
            f"  {u['stream_time']:6.1f}  {u['mood'] or '-':<10} {u['confidence']:5.2f}  {probs}  "
            f"{u['valence']:+7.2f} {u['arousal']:+7.2f}{genre}"
        )
    summary = " ".join(f"{label} {p:.2f}" for label, p in result["probabilities"].items())
    genre = f"  genre {result['genre']['label']}" if "genre" in result else ""
    mood = result["mood"] or "none (no music heard)"
    for start, end in result.get("silent_spans", []):
        lines.append(f"  silent {start:.1f}-{end:.1f} s")
    lines.append(
        f"  summary: {mood}  ({summary})  valence {result['valence']:+.2f}  "
        f"arousal {result['arousal']:+.2f}{genre}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """0: every file analysed; 1: some file could not be analysed (others still were); 2: bad setup."""
    try:
        switch = {"on": True, "off": False}.get(args.track_detection or "")
        config = load_config(args.config, {"model.path": args.model, "track_detection.enabled": switch})
        model = MoodModel(config.model.path, threads=config.model.threads)
        presets = load_presets(config.effects.file, config.effects.default_preset)
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

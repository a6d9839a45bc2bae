"""A room played offline: the server's streaming path, run over audio files (`analyze` is its command).

Files go through exactly what a room's source goes through (`AnalysisStream` for resampling, log-mel and windows,
`MoodModel.predict`, then `Room.on_window` itself: the `TrackChangeDetector` for track changes heard in the audio and
the `MoodTracker` for smoothing, hysteresis and effects), so the per-hop values and track changes printed here are
the `mood` and `track_change` messages the server would broadcast for the same audio and settings (`room_updates`
gives the `Update` objects themselves, for callers that want more than the timeline). That makes `analyze` the tool to
check what a room will see for a song, and the reference the server is tested against.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import SendReturnError
from .effects import load_presets
from ..config import Settings
from ..model.contract import MoodModel, Prediction
from ..audio.files import TRUNCATION_TOLERANCE_SECONDS, AudioFile, DecodeError, block_frames, mono_blocks, to_mono
from ..audio.pcm import BadAudio, check_samples
from ..audio.pipeline import AnalysisStream, Window, window_plan
from .rooms import Room
from .trackchange import TrackChangeDetector, detector_from_config
from .tracker import DECIMALS, SILENT, MoodTracker, tracker_from_config
from .update import Update

OFFLINE_ROOM = "analyze"  # the name of the room a file is played in (it appears in no output of analyze)

class AnalyzeError(SendReturnError, ValueError):
    """A file that cannot be analysed (unreadable, truncated, no audio, too short); the message names the file."""


def read_blocks(path: Path) -> tuple[int, Iterator[np.ndarray]]:
    """(sample rate, iterator of mono float32 blocks), decoded by what the decoder returns (`audio.files`).
    AnalyzeError naming the file for a file that cannot be opened, or (from the iterator) decoded to its end."""
    if not Path(path).is_file():
        raise AnalyzeError(f"{path}: no such file")
    try:
        rate, blocks = mono_blocks(path)
    except DecodeError as e:
        raise AnalyzeError(f"{path}: {e}") from None

    def named() -> Iterator[np.ndarray]:
        try:
            yield from blocks
        except DecodeError as e:
            raise AnalyzeError(f"{path}: {e}") from None

    return rate, named()


class TooLong(AnalyzeError):
    """Audio longer than the caller's limit (its declared length, or what was decoded before the limit)."""


def analyze_upload(data: bytes, name: str, model: MoodModel, config: Settings, max_seconds: float) -> dict[str, Any]:
    """A whole audio file's bytes -> what `analyze --json` prints for it (the same decoding, the same blocks, the
    same `analyze_audio`) plus `features` (`trackfeatures.track_features`). AnalyzeError for audio that cannot be
    decoded to its end (truncated, corrupt) or analysed; TooLong beyond `max_seconds`, said by the file's declared
    length before decoding when it declares one, else as soon as the decoder passes the limit."""
    from ..audio.features import MAX_LOUDNESS_CHANNELS, audio_features
    from .trackfeatures import track_features

    try:
        f = AudioFile(io.BytesIO(data))
    except DecodeError as e:
        raise AnalyzeError(f"{name}: {e}") from None
    limit = f"the limit is {max_seconds:g} s"
    if f.declared_frames > (max_seconds + TRUNCATION_TOLERANCE_SECONDS) * f.rate:
        raise TooLong(f"{name}: {f.seconds(f.declared_frames):.1f} s of audio; {limit}")
    blocks: list[np.ndarray] = []
    with f:
        try:
            for block, _ in f.blocks(block_frames(f.rate)):
                if f.decoded_frames > max_seconds * f.rate:
                    raise TooLong(f"{name}: more than {max_seconds:g} s of audio; {limit}")
                blocks.append(block)
        except DecodeError as e:
            raise AnalyzeError(f"{name}: {e}") from None
    result = analyze_audio(name, f.rate, (to_mono(b) for b in blocks), model, config)
    samples = np.concatenate(blocks)
    if samples.shape[1] > MAX_LOUDNESS_CHANNELS:  # R128 weights cover 5 channels: measure a downmix instead
        samples = to_mono(samples)
    result["features"] = track_features(result, audio_features(samples, f.rate))
    return result


def predict_windows(model: MoodModel, windows: list[Window], max_batch: int) -> list[Prediction]:
    """Each window's Prediction, batching windows of equal length."""
    out: list[Prediction] = []
    i = 0
    while i < len(windows):
        j = i + 1
        while j < len(windows) and j - i < max_batch and windows[j].logmel.shape == windows[i].logmel.shape:
            j += 1
        pred = model.predict(np.stack([w.logmel for w in windows[i:j]]))
        out.extend(pred[k] for k in range(j - i))
        i = j
    return out


def room_updates(
    room: Room, windows: list[Window], preds: list[Prediction]
) -> Iterator[Update | dict[str, Any]]:
    """Play windows and their predictions through a room, as the server's inference worker does: its broadcasts
    (`Update`s, and `track_change` messages before the window that heard the change), in order."""
    for w, p in zip(windows, preds):
        yield from room.on_window(room.generation, p, w.stream_time, 0.0, w.logmel)


def analyze_file(
    path: str | Path,
    model: MoodModel,
    config: Settings,
    preset: str | None = None,
    tracker: MoodTracker | None = None,
    detector: TrackChangeDetector | None = None,
) -> dict[str, Any]:
    """Analyse one file through the server's streaming path -> the dict `--json` prints for it (`analyze_audio`)."""
    rate, blocks = read_blocks(Path(path))
    return analyze_audio(str(Path(path)), rate, blocks, model, config, preset, tracker, detector)


def analyze_audio(
    name: str,
    rate: int,
    blocks: Iterable[np.ndarray],
    model: MoodModel,
    config: Settings,
    preset: str | None = None,
    tracker: MoodTracker | None = None,
    detector: TrackChangeDetector | None = None,
) -> dict[str, Any]:
    """Analyse decoded mono audio (blocks at `rate`) through the server's streaming path -> the dict `--json`
    prints for a file (`name` is its `file`; AnalyzeError messages start with it).

    `timeline` holds one `Analysis.to_dict()` per hop (what the server broadcasts, minus type/room/seq/
    track/latency_ms); `track_changes` the changes the room's detector hears (the server's `track_change`
    messages minus type/room; each resets the smoothing, as in a room); the whole-file summary is the mean of the
    instant probabilities over all windows.
    """
    info = model.info
    plan = window_plan(info, config)
    if tracker is None:
        presets = load_presets(config.effects.file, config.effects.default_preset)
        tracker = tracker_from_config(info, config, presets, preset)
    else:
        tracker.reset()
    if detector is None:
        detector = detector_from_config(config, info, info.frontend.frames_to_seconds(plan.window_frames), model.has_embedding)
    else:
        detector.reset()
    stream = AnalysisStream(info.frontend, rate, plan)
    windows: list[Window] = []
    samples = 0
    for block in blocks:
        try:
            check_samples(block)  # the server's own check on float audio (bad_audio there)
        except BadAudio as e:
            raise AnalyzeError(f"{name}: the decoded audio is unusable: {e}") from None
        samples += block.size
        windows.extend(stream.push(block))
    duration = samples / rate
    windows.extend(stream.finish())
    if not windows:
        raise AnalyzeError(
            f"{name}: too short to analyse ({duration:.2f} s of audio; at least "
            f"{config.analysis.min_seconds} s needed)"
        )
    try:
        preds = predict_windows(model, windows, config.analysis.max_batch)
    except Exception as e:  # onnxruntime raises its own exception types; name the file and carry on with the others
        raise AnalyzeError(f"{name}: inference failed: {e}") from None
    room = Room(OFFLINE_ROOM, tracker, detector=detector)
    timeline = []
    track_changes = []
    for message in room_updates(room, windows, preds):
        if isinstance(message, Update):
            timeline.append(message.analysis)
        else:  # the server's track_change message minus its envelope
            track_changes.append({k: v for k, v in message.items() if k not in ("type", "room")})
    silent = [a.state == SILENT for a in timeline]
    # the summary is about the music: silent windows say nothing about mood (a silent file has no label, as the
    # server's updates have none before a track's first music)
    preds = [p for p, quiet in zip(preds, silent) if not quiet]

    n_moods = len(info.mood_labels)
    mean = np.mean([p.moods for p in preds], axis=0) if preds else np.full(n_moods, 1 / n_moods)
    va = info.to_valence_arousal(mean)
    labels = info.mood_labels
    result: dict[str, Any] = {
        "file": name,
        "duration": round(duration, DECIMALS),
        "model": {"name": info.name, "version": info.version},
        "preset": tracker.preset,
        "windows": len(windows),
        "mood": labels[int(np.argmax(mean))] if preds else None,
        "probabilities": {label: round(float(p), DECIMALS) for label, p in zip(labels, mean)},
        "valence": round(float(va[0]), DECIMALS) + 0.0,
        "arousal": round(float(va[1]), DECIMALS) + 0.0,
    }
    genre_preds = [p.genres for p in preds if p.genres is not None]
    if info.genres and genre_preds:
        gmean = np.mean(genre_preds, axis=0)
        result["genre"] = {
            "label": info.genres[int(np.argmax(gmean))],
            "probabilities": {label: round(float(p), DECIMALS) for label, p in zip(info.genres, gmean)},
        }
    result["silent_spans"] = silent_spans(windows, silent, info.frontend.frames_to_seconds)
    result["track_detection"] = detector.enabled
    result["track_changes"] = track_changes
    result["timeline"] = [a.to_dict() for a in timeline]
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

"""Measure tempo and key accuracy of audio.features on music rendered from MIDI whose key and tempo are known
(`keytempo-eval`), and report tempo and key on the real clips.

The renders. `plan` draws `--renders` pieces (seeded): keys cycle through all 24 (every key equally often, in a
shuffled order), tempi uniform in 60-180 BPM, and per piece a chord progression typical of its mode (minor ones use
the harmonic minor's major V), a chord rhythm, a drum groove, and General MIDI programs for the chords, the bass and
the melody. `write_midi` writes it with pretty-midi (chords, a bass line on the chord roots, a melody walking the
scale with chord tones on strong beats, drums on channel 10; about `--seconds` long), and `render` renders it with
the FluidSynth command-line synthesiser and Debian's General MIDI soundfont (FluidR3_GM) to a 44.1 kHz WAV in a
cache folder outside the repository. The audio then goes through exactly what the analyze endpoint runs.

Scores (the MIREX definitions). Tempo: accuracy 1 = the estimate within 4% of the true tempo; accuracy 2 = within
4% of the tempo or of 2x, 1/2x, 3x or 1/3x of it (the metrical-level errors). Key: mir_eval's weighted score (1 the
right key, 0.5 a fifth above, 0.3 the relative, 0.2 the parallel, 0 otherwise; an undecided key scores 0).

Honest choice. Every candidate (tempo prior x chroma x key profile) is computed on every render; the renders are
split in two halves (even / odd index) and the defaults are chosen on the `tune` half by the highest mean score
(ties: the cheaper one) and reported on the `test` half, which never took part in the choice. The undecided-key
threshold is reported as a curve (share undecided and score of the decided ones) on both the renders and the real
clips.

Real clips (`--real`): the shared 4Q, Emotify and MUSIFEAST-17 clips have no tempo or key truth, so only sanity
numbers: the distribution of the estimated tempi, the share whose metrical level is ambiguous (the two tempo priors'
estimates an octave apart: 2x or 1/2x within 4%), the share of undecided keys and the modes; beside them the same
distributions of Spotify's own tempo and key for the 686 songs in spotify-moods (different songs: a shape to compare,
not a truth).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from sendreturn_mood.audio import features as F
from sendreturn_mood.audio.files import decode

from .commandline import git_commit, invocation
from .manifest import SHARED_DATA

GENERATOR_VERSION = 1  # part of the cache key: a change to the MIDI writer never reuses old renders
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
RENDER_RATE = 44100
MIN_BPM, MAX_BPM = 60.0, 180.0
TEMPO_TOLERANCE = 0.04  # MIREX: within 4%
METRICAL_FACTORS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)  # accuracy 2's accepted multiples of the true tempo
TEMPO_PRIORS = ("lognormal", "uniform")  # librosa's default prior around 120 BPM; a flat one over 30-300 BPM
THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)  # natural minor; the V chord and the melody over it take the leading tone
# Progressions as scale degrees (0 = I/i), one chord per bar, repeated.
PROGRESSIONS = {
    F.MAJOR: ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 0, 4)),
    F.MINOR: ((0, 3, 4, 0), (0, 5, 2, 6), (0, 6, 5, 4), (0, 3, 6, 2), (0, 5, 3, 4)),
}
CHORD_PROGRAMS = (0, 4, 16, 24, 48, 88)  # GM: grand piano, e-piano, drawbar organ, nylon guitar, strings, new-age pad
BASS_PROGRAMS = (32, 33, 38)  # acoustic, finger, synth bass
LEAD_PROGRAMS = (73, 40, 56, 65, 80, 11)  # flute, violin, trumpet, alto sax, square lead, vibraphone
CHORD_RHYTHMS = ("whole", "quarters", "offbeats")
GROOVES = ("backbeat", "syncopated", "four_on_the_floor")
KICK, SNARE, CLOSED_HAT, OPEN_HAT, CRASH = 36, 38, 42, 46, 49


@dataclasses.dataclass(frozen=True)
class Piece:
    """One render's truth and its arrangement."""

    index: int
    key: int  # tonic pitch class
    mode: int  # features.MAJOR / features.MINOR
    bpm: float
    progression: tuple[int, ...]
    chord_program: int
    bass_program: int
    lead_program: int
    chord_rhythm: str
    groove: str
    seed: int
    seconds: float

    @property
    def name(self) -> str:
        return f"{self.index:04d}_{F.key_name(self.key, self.mode).replace(' ', '-')}_{self.bpm:.1f}bpm"


def plan(n: int, seed: int = 0, seconds: float = 30.0) -> list[Piece]:
    """`n` pieces: the 24 keys equally often (shuffled), tempi uniform in MIN_BPM..MAX_BPM, arrangements drawn."""
    rng = np.random.default_rng(seed)
    keys = [(k % 12, F.MAJOR if k < 12 else F.MINOR) for k in range(24)]
    order: list[tuple[int, int]] = []
    while len(order) < n:
        order += [keys[i] for i in rng.permutation(24)]
    pieces = []
    for i, (key, mode) in enumerate(order[:n]):
        progressions = PROGRESSIONS[mode]
        pieces.append(Piece(
            index=i, key=key, mode=mode, bpm=round(float(rng.uniform(MIN_BPM, MAX_BPM)), 1),
            progression=progressions[int(rng.integers(len(progressions)))],
            chord_program=int(rng.choice(CHORD_PROGRAMS)), bass_program=int(rng.choice(BASS_PROGRAMS)),
            lead_program=int(rng.choice(LEAD_PROGRAMS)), chord_rhythm=str(rng.choice(CHORD_RHYTHMS)),
            groove=str(rng.choice(GROOVES)), seed=int(rng.integers(2**31)), seconds=seconds,
        ))
    return pieces


def _scale(mode: int) -> tuple[int, ...]:
    return MAJOR_SCALE if mode == F.MAJOR else MINOR_SCALE


def chord_tones(piece: Piece, degree: int) -> list[int]:
    """The triad on a scale degree, as semitones above the tonic (the minor's V is major: the leading tone)."""
    scale = _scale(piece.mode)
    tones = [scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]
    if piece.mode == F.MINOR and degree == 4:
        tones[1] += 1  # harmonic minor: the raised seventh
    return tones


def write_midi(piece: Piece, path: Path) -> None:
    """The piece as a standard MIDI file (tempo in the file; four instruments)."""
    import pretty_midi

    rng = np.random.default_rng(piece.seed)
    beat = 60.0 / piece.bpm
    bars = max(4, int(np.ceil(piece.seconds / (4 * beat))))
    pm = pretty_midi.PrettyMIDI(initial_tempo=piece.bpm)
    chords = pretty_midi.Instrument(program=piece.chord_program, name="chords")
    bass = pretty_midi.Instrument(program=piece.bass_program, name="bass")
    lead = pretty_midi.Instrument(program=piece.lead_program, name="melody")
    drums = pretty_midi.Instrument(program=0, is_drum=True, name="drums")
    tonic_chords = 60 + piece.key - (12 if piece.key > 6 else 0)  # chords around middle C
    tonic_bass = 36 + piece.key
    tonic_lead = 72 + piece.key - (12 if piece.key > 6 else 0)
    scale = _scale(piece.mode)

    def note(inst: Any, pitch: int, start_beats: float, length_beats: float, velocity: int) -> None:
        start = start_beats * beat
        inst.notes.append(pretty_midi.Note(velocity=int(np.clip(velocity, 1, 127)), pitch=int(pitch),
                                           start=start, end=start + length_beats * beat * 0.95))

    def step_pitch(step: int) -> int:
        return scale[step % 7] + 12 * (step // 7)

    melody_step = int(rng.integers(7))
    for bar in range(bars):
        degree = piece.progression[bar % len(piece.progression)]
        tones = chord_tones(piece, degree)
        b0 = 4.0 * bar
        if piece.chord_rhythm == "whole":
            hits = [(0.0, 4.0)]
        elif piece.chord_rhythm == "quarters":
            hits = [(float(k), 1.0) for k in range(4)]
        else:
            hits = [(k + 0.5, 0.5) for k in range(4)]
        for start, length in hits:
            for t in tones:
                note(chords, tonic_chords + t, b0 + start, length, 70 + rng.integers(-8, 9))
        for k in (0.0, 2.0) if bar % 2 else (0.0, 1.0, 2.0, 3.0):
            note(bass, tonic_bass + tones[0] % 12, b0 + k, 1.0 if bar % 2 == 0 else 2.0, 90 + rng.integers(-8, 9))
        chord_classes = {t % 12 for t in tones}
        position = 0.0
        while position < 4.0:  # the melody: a walk on the scale, the nearest chord tone on the strong beats
            length = float(rng.choice((0.5, 1.0, 1.0, 2.0)))
            if position % 2 == 0:
                here = step_pitch(melody_step)
                melody_step = min((s for s in range(-3, 11) if step_pitch(s) % 12 in chord_classes),
                                  key=lambda s: abs(step_pitch(s) - here))
            else:
                melody_step = int(np.clip(melody_step + rng.choice((-2, -1, 1, 2)), -3, 10))
            pitch = step_pitch(melody_step)
            if piece.mode == F.MINOR and degree == 4 and pitch % 12 == 10:
                pitch += 1  # the leading tone over V
            if rng.random() > 0.15:  # some rests
                note(lead, tonic_lead + pitch, b0 + position, min(length, 4.0 - position), 85 + rng.integers(-10, 11))
            position += length
        for k in range(8):  # drums, in eighths
            t = b0 + 0.5 * k
            if piece.groove == "four_on_the_floor":
                kick = k % 2 == 0
            elif piece.groove == "syncopated":
                kick = k in (0, 3, 4)
            else:
                kick = k in (0, 4)
            if kick:
                note(drums, KICK, t, 0.25, 105)
            if k in (2, 6):
                note(drums, SNARE, t, 0.25, 100)
            hat = OPEN_HAT if piece.groove == "four_on_the_floor" and k % 2 == 1 else CLOSED_HAT
            note(drums, hat, t, 0.25, 65 + (15 if k % 2 == 0 else 0))
        if bar % 8 == 0:
            note(drums, CRASH, b0, 1.0, 90)
    pm.instruments += [chords, bass, lead, drums]
    path.parent.mkdir(parents=True, exist_ok=True)
    pm.write(str(path))


class RenderError(RuntimeError):
    pass


def fluidsynth_available() -> str | None:
    """Why renders cannot be made here, or None when they can."""
    if shutil.which("fluidsynth") is None:
        return "the fluidsynth command is not installed (Debian: apt-get install fluidsynth)"
    if not SOUNDFONT.is_file():
        return f"the General MIDI soundfont is not at {SOUNDFONT} (Debian: apt-get install fluid-soundfont-gm)"
    return None


def render(midi: Path, wav: Path, rate: int = RENDER_RATE) -> None:
    """MIDI -> WAV through FluidSynth's fast (non-real-time) renderer, written atomically."""
    tmp = wav.with_suffix(".part.wav")
    cmd = ["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(rate), "-T", "wav", "-F", str(tmp), str(SOUNDFONT), str(midi)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not tmp.is_file():
        raise RenderError(f"fluidsynth failed on {midi} ({done.returncode}): {done.stderr.strip()[-500:]}")
    os.replace(tmp, wav)


def default_cache() -> Path:
    """Outside the repository: $SENDRETURN_CACHE/keytempo, else the user's cache folder."""
    base = os.environ.get("SENDRETURN_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    sub = "keytempo" if os.environ.get("SENDRETURN_CACHE") else "sendreturn-mood/keytempo"
    return Path(base) / sub


def rendered(piece: Piece, cache: Path) -> Path:
    """The piece's WAV, rendered once per (generator version, piece) and then read from the cache."""
    folder = cache / f"v{GENERATOR_VERSION}"
    wav = folder / f"{piece.name}_{piece.seed}.wav"
    if not wav.is_file():
        midi = wav.with_suffix(".mid")
        write_midi(piece, midi)
        render(midi, wav)
    return wav


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Samples as every reader of the project decodes them (audio.files: what the decoder returns, never a frame-count
    estimate), float32 [frames, channels]."""
    return decode(path, mono=False)


# ---- scores ----

def tempo_scores(estimate: float, truth: float) -> tuple[bool, bool]:
    """MIREX (accuracy 1, accuracy 2)."""
    def near(target: float) -> bool:
        return abs(estimate - target) <= TEMPO_TOLERANCE * target

    return near(truth), any(near(truth * f) for f in METRICAL_FACTORS)


def _mir_key(key: int, mode: int) -> str:
    return "X" if key == F.UNDECIDED else f"{F.PITCH_CLASSES[key]} {'major' if mode == F.MAJOR else 'minor'}"


def key_score(key: int, mode: int, truth_key: int, truth_mode: int) -> float:
    """MIREX weighted key score through mir_eval (undecided: 0)."""
    import mir_eval

    return float(mir_eval.key.weighted_score(_mir_key(truth_key, truth_mode), _mir_key(key, mode)))


def octave_related(a: float, b: float) -> bool:
    """Two tempi a factor of 2 apart (within 4%)."""
    if a <= 0 or b <= 0:
        return False
    r = max(a, b) / min(a, b)
    return abs(r - 2.0) <= 2.0 * TEMPO_TOLERANCE


# ---- measurement ----

def _prior(name: str) -> Any:
    if name == "lognormal":
        return None  # librosa's default
    import scipy.stats

    return scipy.stats.uniform(30, 270)


def candidates(samples: np.ndarray, rate: int) -> dict[str, Any]:
    """Every candidate's estimate for one piece of audio: tempo per prior, key correlations per chroma x profile."""
    y = F.analysis_signal(np.asarray(samples, dtype=np.float32), rate)
    envelope = F.onset_envelope(y)
    out: dict[str, Any] = {"tempo": {}, "key": {}}
    for prior in TEMPO_PRIORS:
        bpm, confidence = F.estimate_tempo(envelope, prior=_prior(prior))
        out["tempo"][prior] = {"bpm": round(bpm, 2), "confidence": round(confidence, 3)}
    for kind in F.CHROMA_KINDS:
        chroma = F.chroma_profile(y, kind)
        for profile in F.KEY_PROFILES:
            k = F.estimate_key(chroma, profile, min_confidence=0.0)
            out["key"][f"{kind}/{profile}"] = {"key": k.key, "mode": k.mode, "confidence": round(k.confidence, 3)}
    return out


def measure_render(piece: Piece, cache: Path) -> dict[str, Any]:
    samples, rate = read_audio(rendered(piece, cache))
    started = time.perf_counter()
    shipped = F.audio_features(samples, rate)
    seconds = time.perf_counter() - started
    record = {"piece": dataclasses.asdict(piece), "duration_s": round(len(samples) / rate, 2),
              "shipped": shipped.to_dict(), "analysis_seconds": round(seconds, 3)}
    record.update(candidates(samples, rate))
    truth_key, truth_mode, truth_bpm = piece.key, piece.mode, piece.bpm
    for est in record["tempo"].values():
        est["acc1"], est["acc2"] = tempo_scores(est["bpm"], truth_bpm)
    for est in record["key"].values():
        est["score"] = key_score(est["key"], est["mode"], truth_key, truth_mode)
    return record


def _mean(values: Iterable[float]) -> float:
    v = [float(x) for x in values]
    return round(float(np.mean(v)), 4) if v else float("nan")


def summarize_renders(records: Sequence[dict[str, Any]], min_confidence: float = 0.0) -> dict[str, Any]:
    """Per candidate: tempo accuracy 1 and 2, key weighted score (keys below `min_confidence` count as undecided)."""
    out: dict[str, Any] = {"n": len(records), "tempo": {}, "key": {}}
    for prior in TEMPO_PRIORS:
        ests = [r["tempo"][prior] for r in records]
        out["tempo"][prior] = {"acc1": _mean(e["acc1"] for e in ests), "acc2": _mean(e["acc2"] for e in ests)}
    for name in records[0]["key"] if records else ():
        ests = [(r["key"][name], r["piece"]) for r in records]
        scores = [e["score"] if e["confidence"] >= min_confidence else 0.0 for e, _ in ests]
        exact = [e["score"] == 1.0 and e["confidence"] >= min_confidence for e, _ in ests]
        out["key"][name] = {"weighted": _mean(scores), "correct": _mean(exact)}
    return out


def key_breakdown(records: Sequence[dict[str, Any]], name: str) -> dict[str, float]:
    """Shares of right / fifth / relative / parallel / other for one key candidate."""
    labels = {1.0: "correct", 0.5: "fifth", 0.3: "relative", 0.2: "parallel", 0.0: "other"}
    counts = {v: 0 for v in labels.values()}
    for r in records:
        counts[labels[r["key"][name]["score"]]] += 1
    return {k: round(v / max(len(records), 1), 4) for k, v in counts.items()}


def choose(tune: dict[str, Any]) -> dict[str, str]:
    """The defaults by the tune half's mean score: tempo by accuracy 1 (the tempo a client gets), then accuracy 2,
    then librosa's default prior; key by the weighted score (ties: stft before cqt, it is cheaper, then the order of
    KEY_PROFILES)."""
    prior = max(TEMPO_PRIORS, key=lambda p: (tune["tempo"][p]["acc1"], tune["tempo"][p]["acc2"], -TEMPO_PRIORS.index(p)))
    names = list(tune["key"])
    order = {n: (0 if n.startswith("stft") else 1, list(F.KEY_PROFILES).index(n.split("/")[1])) for n in names}
    key = max(names, key=lambda n: (tune["key"][n]["weighted"], tuple(-x for x in order[n])))
    return {"tempo_prior": prior, "chroma": key.split("/")[0], "profile": key.split("/")[1]}


def threshold_curve(confidences: Sequence[float], scores: Sequence[float] | None) -> list[dict[str, float]]:
    """Per threshold: share undecided and, with truth, the mean score of the decided ones and the overall score."""
    conf = np.asarray(confidences, dtype=float)
    rows = []
    for t in THRESHOLDS:
        decided = conf >= t
        row = {"threshold": t, "undecided": round(float(1 - decided.mean()), 4) if len(conf) else float("nan")}
        if scores is not None:
            s = np.asarray(scores, dtype=float)
            row["score_decided"] = round(float(s[decided].mean()), 4) if decided.any() else float("nan")
            row["score_overall"] = round(float(np.where(decided, s, 0.0).mean()), 4)
        rows.append(row)
    return rows


# ---- real clips ----

def real_clips(data: Path, limit: int | None = None) -> list[Path]:
    files = []
    for folder in ("moods-4q", "emotify", "musifeast17"):
        files += sorted((data / folder).rglob("*.mp3"))
    if limit:
        step = max(1, len(files) // limit)
        files = files[::step][:limit]
    return files


def measure_real(path: Path, choice: dict[str, str], data: Path) -> dict[str, Any]:
    samples, rate = read_audio(path)
    started = time.perf_counter()
    shipped = F.audio_features(samples, rate)
    seconds = time.perf_counter() - started
    y = F.analysis_signal(np.asarray(samples, dtype=np.float32), rate)
    envelope = F.onset_envelope(y)
    by_prior = {p: round(F.estimate_tempo(envelope, prior=_prior(p))[0], 2) for p in TEMPO_PRIORS}
    chosen_key = F.estimate_key(F.chroma_profile(y, choice["chroma"]), choice["profile"], min_confidence=0.0)
    return {"file": str(path.relative_to(data)), "shipped": shipped.to_dict(), "analysis_seconds": round(seconds, 3),
            "tempo_by_prior": by_prior, "key_correlation": round(chosen_key.confidence, 3)}


TEMPO_BINS = (0, 60, 80, 100, 120, 140, 160, 180, 400)


def tempo_histogram(bpms: Sequence[float]) -> dict[str, float]:
    b = np.asarray([x for x in bpms if x > 0], dtype=float)
    counts, _ = np.histogram(b, bins=TEMPO_BINS)
    return {f"{lo}-{hi}": round(float(c / max(len(b), 1)), 4) for lo, hi, c in zip(TEMPO_BINS, TEMPO_BINS[1:], counts)}


def summarize_real(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    bpms = [r["shipped"]["tempo"] for r in records]
    keys = [r["shipped"] for r in records]
    return {
        "n": len(records),
        "tempo_median": round(float(np.median([b for b in bpms if b > 0])), 1) if any(b > 0 for b in bpms) else None,
        "tempo_histogram": tempo_histogram(bpms),
        "no_tempo": _mean(b <= 0 for b in bpms),
        "octave_ambiguous": _mean(octave_related(*r["tempo_by_prior"].values()) for r in records),
        "tempo_confidence_median": round(float(np.median([r["shipped"]["tempo_confidence"] for r in records])), 3),
        "key_undecided": _mean(k["key"] == F.UNDECIDED for k in keys),
        "minor_of_decided": _mean(k["mode"] == F.MINOR for k in keys if k["key"] != F.UNDECIDED),
        "key_threshold_curve": threshold_curve([r["key_correlation"] for r in records], None),
        "analysis_seconds_median": round(float(np.median([r["analysis_seconds"] for r in records])), 3),
    }


def spotify_reference(data: Path) -> dict[str, Any] | None:
    """Spotify's own tempo / key / mode distribution over the spotify-moods songs (no audio; other songs)."""
    import csv

    path = data / "spotify-moods" / "data_moods.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    bpms = [float(r["tempo"]) for r in rows]
    return {"n": len(rows), "tempo_median": round(float(np.median(bpms)), 1), "tempo_histogram": tempo_histogram(bpms),
            "key_undecided": _mean(int(r["key"]) == -1 for r in rows)}


# ---- the command ----

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--renders", type=int, default=240, help="how many MIDI pieces to write and render (>= 200 for the report)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each piece")
    parser.add_argument("--seed", type=int, default=0, help="seed of the keys' order, tempi and arrangements")
    parser.add_argument("--cache", help="render cache folder (default $SENDRETURN_CACHE/keytempo or ~/.cache/sendreturn-mood/keytempo)")
    parser.add_argument("--real", action="store_true", help="also report tempo and key on the real clips in --data")
    parser.add_argument("--real-limit", type=int, help="use only this many real clips, evenly spaced (quick runs)")
    parser.add_argument("--data", default=str(SHARED_DATA), help="the shared data folder (default ../shared/data)")
    parser.add_argument("--out", help="write the results as JSON here (e.g. docs/evaluation/features.json)")
    parser.add_argument("--report", help="write the Markdown report here (e.g. docs/evaluation/features.md)")


def run(args: argparse.Namespace) -> int:
    reason = fluidsynth_available()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    commit = git_commit()  # now: the code that runs, whatever is committed while it runs
    cache = Path(args.cache) if args.cache else default_cache()
    pieces = plan(args.renders, args.seed, args.seconds)
    records = []
    for i, piece in enumerate(pieces):
        records.append(measure_render(piece, cache))
        if (i + 1) % 20 == 0 or i + 1 == len(pieces):
            print(f"renders: {i + 1}/{len(pieces)} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    tune = [r for r in records if r["piece"]["index"] % 2 == 0]
    test = [r for r in records if r["piece"]["index"] % 2 == 1]
    tune_summary = summarize_renders(tune)
    choice = choose(tune_summary)
    chosen_key = f"{choice['chroma']}/{choice['profile']}"
    result: dict[str, Any] = {
        "command": invocation("keytempo-eval"),
        "commit": commit,
        "parameters": {"renders": args.renders, "seconds": args.seconds, "seed": args.seed,
                       "generator_version": GENERATOR_VERSION, "soundfont": str(SOUNDFONT), "render_rate": RENDER_RATE,
                       "fluidsynth": _fluidsynth_version(), "shipped": {"tempo_prior": "lognormal",
                       "chroma": F.CHROMA_KIND, "profile": F.KEY_PROFILE, "key_min_confidence": F.KEY_MIN_CONFIDENCE}},
        "choice": choice,
        "renders": {
            "tune": tune_summary,
            "test": summarize_renders(test),
            "all": summarize_renders(records),
            "test_shipped": _shipped_summary(test),
            "test_key_breakdown": key_breakdown(test, chosen_key),
            "test_octave_errors": _mean(
                (not r["tempo"][choice["tempo_prior"]]["acc1"]) and r["tempo"][choice["tempo_prior"]]["acc2"] for r in test),
            "tempo_acc1_by_bpm": _by_bpm(test, choice["tempo_prior"]),
            "key_threshold_curve": threshold_curve([r["key"][chosen_key]["confidence"] for r in records],
                                                   [r["key"][chosen_key]["score"] for r in records]),
            "analysis_seconds_median": round(float(np.median([r["analysis_seconds"] for r in records])), 3),
        },
        "long_song": long_song_timing(records, cache),
        "records": records,
    }
    if args.real:
        files = real_clips(Path(args.data), args.real_limit)
        if not files:
            print(f"error: no real clips under {args.data}", file=sys.stderr)
            return 2
        real = []
        for i, path in enumerate(files):
            real.append(measure_real(path, choice, Path(args.data)))
            if (i + 1) % 100 == 0 or i + 1 == len(files):
                print(f"real clips: {i + 1}/{len(files)} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        result["real"] = {"summary": summarize_real(real), "spotify_reference": spotify_reference(Path(args.data)),
                          "records": real}
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    text = report(result)
    if args.report:
        Path(args.report).write_text(text)
    print(text)
    return 0


def _shipped_summary(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """What audio_features itself (the shipped defaults and threshold) scores."""
    tempo = [tempo_scores(r["shipped"]["tempo"], r["piece"]["bpm"]) for r in records]
    keys = [key_score(r["shipped"]["key"], r["shipped"]["mode"], r["piece"]["key"], r["piece"]["mode"]) for r in records]
    return {"acc1": _mean(t[0] for t in tempo), "acc2": _mean(t[1] for t in tempo), "key_weighted": _mean(keys),
            "key_undecided": _mean(r["shipped"]["key"] == F.UNDECIDED for r in records)}


def _by_bpm(records: Sequence[dict[str, Any]], prior: str) -> dict[str, dict[str, float]]:
    out = {}
    for lo in range(60, 180, 30):
        sub = [r for r in records if lo <= r["piece"]["bpm"] < lo + 30]
        out[f"{lo}-{lo + 30}"] = {"n": len(sub), "acc1": _mean(r["tempo"][prior]["acc1"] for r in sub),
                                  "acc2": _mean(r["tempo"][prior]["acc2"] for r in sub)}
    return out


LONG_SECONDS = 240.0  # "a 4-minute song"


def long_song_timing(records: Sequence[dict[str, Any]], cache: Path, repeats: int = 3) -> dict[str, Any]:
    """Seconds `audio_features` takes on a 4-minute 44.1 kHz stereo song (renders played back to back), median of
    `repeats`, with the stages it spends them in."""
    parts, total = [], 0
    for r in records:
        samples, rate = read_audio(rendered(Piece(**{**r["piece"], "progression": tuple(r["piece"]["progression"])}), cache))
        parts.append(samples)
        total += len(samples)
        if total >= LONG_SECONDS * rate:
            break
    song = np.concatenate(parts)[: int(LONG_SECONDS * rate)]
    t0 = time.perf_counter()
    F.audio_features(song[: 10 * rate], rate)  # the first call in a process pays librosa's and pyloudnorm's imports
    first_call = time.perf_counter() - t0
    steps = {
        "total": lambda: F.audio_features(song, rate),
        "loudness": lambda: F.integrated_loudness(song, rate),
        "downmix_resample": lambda: F.analysis_signal(song, rate),
    }
    y = F.analysis_signal(song, rate)
    steps["tempo"] = lambda: F.estimate_tempo(F.onset_envelope(y))
    steps["key"] = lambda: F.estimate_key(F.chroma_profile(y, F.CHROMA_KIND), F.KEY_PROFILE)
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {"seconds": LONG_SECONDS, "rate": rate, "channels": song.shape[1] if song.ndim == 2 else 1,
            "first_call_10s_seconds": round(first_call, 3),
            "median_seconds": {k: round(float(np.median(v)), 3) for k, v in wall.items()},
            "median_cpu_seconds": {k: round(float(np.median(v)), 3) for k, v in cpu.items()}}


def _fluidsynth_version() -> str:
    try:
        out = subprocess.run(["fluidsynth", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return out.splitlines()[0].strip() if out else "unknown"


def report(result: dict[str, Any]) -> str:
    """The Markdown report (docs/evaluation/features.md)."""
    r = result["renders"]
    p = result["parameters"]
    c = result["choice"]
    lines = [
        "# Tempo, key and loudness: measured accuracy",
        "",
        f"Made by `{result['command']}` (commit {result['commit'][:12]}, {result['seconds']:.0f} s on this machine). "
        f"{p['renders']} pieces written with pretty-midi (chords, bass, melody, drums; {p['seconds']:g} s each; all 24 "
        f"keys equally often, tempi uniform in {MIN_BPM:g}-{MAX_BPM:g} BPM, seed {p['seed']}), rendered by "
        f"{p['fluidsynth']} with {Path(p['soundfont']).name} at {p['render_rate']} Hz. Candidates are chosen on the "
        f"even-numbered renders (`tune`, n={r['tune']['n']}) and reported on the odd-numbered ones (`test`, "
        f"n={r['test']['n']}). How the pieces are made and scored: `training/keytempo.py`.",
        "",
        "## Tempo (MIREX accuracy 1: within 4%; accuracy 2: also at 2x, 1/2x, 3x, 1/3x)",
        "",
        "| librosa tempo prior | tune acc1 | tune acc2 | test acc1 | test acc2 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for prior in TEMPO_PRIORS:
        t, s = r["tune"]["tempo"][prior], r["test"]["tempo"][prior]
        mark = " (chosen)" if prior == c["tempo_prior"] else ""
        lines.append(f"| {prior}{mark} | {t['acc1']:.3f} | {t['acc2']:.3f} | {s['acc1']:.3f} | {s['acc2']:.3f} |")
    lines += ["", f"Test renders by true tempo ({c['tempo_prior']} prior): "
              + "; ".join(f"{k} BPM: acc1 {v['acc1']:.2f}, acc2 {v['acc2']:.2f} (n={v['n']})"
                          for k, v in r["tempo_acc1_by_bpm"].items())
              + f". Octave-type errors (acc2 but not acc1): {r['test_octave_errors']:.3f} of the test renders.", ""]
    lines += ["## Key (MIREX weighted score: 1 right, 0.5 fifth, 0.3 relative, 0.2 parallel)", "",
              "| chroma / key profile | tune weighted | tune correct | test weighted | test correct |",
              "| --- | --- | --- | --- | --- |"]
    chosen = f"{c['chroma']}/{c['profile']}"
    for name in sorted(r["tune"]["key"], key=lambda n: -r["tune"]["key"][n]["weighted"]):
        t, s = r["tune"]["key"][name], r["test"]["key"][name]
        mark = " (chosen)" if name == chosen else ""
        lines.append(f"| {name}{mark} | {t['weighted']:.3f} | {t['correct']:.3f} | {s['weighted']:.3f} | {s['correct']:.3f} |")
    b = r["test_key_breakdown"]
    lines += ["", f"The chosen key estimator on the test renders: {b['correct']:.2f} right, {b['fifth']:.2f} a fifth "
              f"off, {b['relative']:.2f} the relative key, {b['parallel']:.2f} the parallel key, {b['other']:.2f} "
              "other.", "",
              "Undecided-key threshold (the winning correlation below it: key -1), on all renders:", "",
              "| threshold | undecided | score of decided | overall score |", "| --- | --- | --- | --- |"]
    for row in r["key_threshold_curve"]:
        lines.append(f"| {row['threshold']:.1f} | {row['undecided']:.3f} | {row['score_decided']:.3f} | {row['score_overall']:.3f} |")
    sh = r["test_shipped"]
    lines += ["", f"What `audio_features` ships (prior {p['shipped']['tempo_prior']}, {p['shipped']['chroma']} chroma, "
              f"{p['shipped']['profile']} profile, undecided below {p['shipped']['key_min_confidence']}) on the test "
              f"renders: tempo acc1 {sh['acc1']:.3f}, acc2 {sh['acc2']:.3f}; key weighted {sh['key_weighted']:.3f} "
              f"({sh['key_undecided']:.3f} undecided). Median analysis time per {p['seconds']:g} s render "
              f"(44.1 kHz stereo, loudness included): {r['analysis_seconds_median']:.2f} s.", ""]
    if "long_song" in result:
        song = result["long_song"]
        c, w = song["median_cpu_seconds"], song["median_seconds"]
        lines += [f"A {song['seconds']:g} s song (renders back to back, {song['rate']} Hz, {song['channels']} channels): "
                  f"`audio_features` takes {c['total']:.2f} s of CPU (median of 3, one thread; {w['total']:.2f} s of "
                  f"wall-clock time on this run's shared machine): loudness {c['loudness']:.2f} s, downmix and "
                  f"resampling {c['downmix_resample']:.2f} s, tempo {c['tempo']:.2f} s, key {c['key']:.2f} s. CPU time "
                  "is the figure that carries over to an idle core; the wall-clock time here includes waiting for the "
                  "2 cores other jobs shared. The first call in a fresh process (10 s of audio) took "
                  f"{song['first_call_10s_seconds']:.2f} s: imports and librosa's one-time set-up, which a worker pool "
                  "pays once.", ""]
    if "real" in result:
        s = result["real"]["summary"]
        sp = result["real"]["spotify_reference"]
        lines += ["## Real clips (no truth: sanity only)", "",
                  f"{s['n']} clips (4Q, Emotify, MUSIFEAST-17; ~30 s, 16 kHz mono MP3). Median tempo {s['tempo_median']} "
                  f"BPM; no tempo found: {s['no_tempo']:.3f}; median tempo confidence {s['tempo_confidence_median']}; "
                  f"octave-ambiguous (the two priors an octave apart): {s['octave_ambiguous']:.3f}; undecided keys: "
                  f"{s['key_undecided']:.3f}; minor among decided keys: {s['minor_of_decided']:.3f}; median analysis "
                  f"time per clip {s['analysis_seconds_median']:.2f} s.", "",
                  "| tempo (BPM) | " + " | ".join(s["tempo_histogram"]) + " |",
                  "| --- | " + " | ".join("---" for _ in s["tempo_histogram"]) + " |",
                  "| these clips | " + " | ".join(f"{v:.3f}" for v in s["tempo_histogram"].values()) + " |"]
        if sp:
            lines.append(f"| Spotify's tempo, spotify-moods (n={sp['n']}, other songs) | "
                         + " | ".join(f"{v:.3f}" for v in sp["tempo_histogram"].values()) + " |")
        lines += ["", "Share of undecided keys on the real clips by threshold: "
                  + ", ".join(f"{row['threshold']:.1f}: {row['undecided']:.3f}" for row in s["key_threshold_curve"])
                  + (f" (Spotify's key -1 share on spotify-moods: {sp['key_undecided']:.3f})." if sp else "."), ""]
    return "\n".join(lines) + "\n"

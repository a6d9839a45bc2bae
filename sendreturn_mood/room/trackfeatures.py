"""The `features` object of an analysed upload: one track's features on the scales a recommender used from Spotify.

From the analysis (the model's whole-file summary, what `analyze --json` prints):

- `valence` = (model valence + 1) / 2: the model's valence is on -1..1 (the probability-weighted mood coordinates,
  `ModelInfo.to_valence_arousal`), Spotify's on 0..1; the map is linear, so 0.5 is the model's neutral.
- `energy` = 0.7 * (model arousal + 1) / 2 + 0.3 * level, with level = (loudness + 30) / 25 clipped to 0..1
  (-30 LUFS or quieter: 0, -5 LUFS or louder: 1); arousal alone when the audio has no integrated loudness. Spotify
  describes energy as "a perceptual measure of intensity and activity", built from loudness among other things; the
  weights are a choice, documented here, not fitted (Spotify's values for our audio are not available to fit to).
- `mood`, `mood_probabilities`, `genre`, `genre_probabilities`: the summary's labels and probabilities.

From the audio (`audio.features`): `tempo` (BPM) + `tempo_confidence`, `key` (0-11, -1 undecided) + `mode` (1 major,
0 minor, -1 undecided) + `key_confidence`, `loudness` (integrated, EBU R128, LUFS) and `duration_ms`.

`spotify_compatible` holds Spotify's audio-features field names and scales for what is computed, and null for what
this project does not compute (danceability, speechiness, acousticness, instrumentalness, liveness, time_signature),
so a k-means over Spotify's columns drops those explicitly instead of reading made-up numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..audio.features import UNDECIDED, AudioFeatures

DECIMALS = 3
ENERGY_AROUSAL_WEIGHT = 0.7  # the rest is the level term
LEVEL_FLOOR_LUFS = -30.0  # level 0 at or below this integrated loudness
LEVEL_SPAN_LU = 25.0  # level 1 at LEVEL_FLOOR_LUFS + this (-5 LUFS: a loud modern master)
NOT_COMPUTED = ("danceability", "speechiness", "acousticness", "instrumentalness", "liveness", "time_signature")


def unit(x: float) -> float:
    return float(np.clip(x, 0.0, 1.0))


def valence01(valence: float) -> float:
    """The model's valence (-1..1) on Spotify's 0..1."""
    return unit((valence + 1.0) / 2.0)


def energy01(arousal: float, loudness: float | None) -> float:
    """Arousal (-1..1) and integrated loudness (LUFS, or None) -> 0..1 (the module's docstring has the map)."""
    a = (arousal + 1.0) / 2.0
    if loudness is None:
        return unit(a)
    level = unit((loudness - LEVEL_FLOOR_LUFS) / LEVEL_SPAN_LU)
    return unit(ENERGY_AROUSAL_WEIGHT * a + (1.0 - ENERGY_AROUSAL_WEIGHT) * level)


def track_features(summary: dict[str, Any], audio: AudioFeatures) -> dict[str, Any]:
    """`summary` is an analysis as `analyze --json` prints it; `audio` the audio's own features."""
    valence = round(valence01(summary["valence"]), DECIMALS)
    energy = round(energy01(summary["arousal"], audio.loudness), DECIMALS)
    genre = summary.get("genre")
    out: dict[str, Any] = {
        "valence": valence,
        "energy": energy,
        "mood": summary["mood"],
        "mood_probabilities": summary["probabilities"],
        "genre": genre["label"] if genre else None,
        "genre_probabilities": genre["probabilities"] if genre else None,
        **audio.to_dict(),
    }
    decided = audio.key != UNDECIDED
    out["spotify_compatible"] = {
        "valence": valence,
        "energy": energy,
        "tempo": audio.tempo if audio.tempo > 0 else None,
        "key": audio.key,  # Spotify: -1 when no key was detected, as here
        "mode": audio.mode if decided else None,
        "loudness": audio.loudness,
        "duration_ms": audio.duration_ms,
        **{name: None for name in NOT_COMPUTED},
    }
    return out

"""Files and folders -> the audio files to read, shared by `analyze` and the client (one rule for both)."""

from __future__ import annotations

from pathlib import Path

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff")


def find_audio(paths: list[str | Path] | list[str] | list[Path]) -> list[Path]:
    """Files as given (any extension: the decoder decides), folders expanded recursively, sorted, to the files
    with an audio extension inside them. FileNotFoundError for a path that does not exist."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return out

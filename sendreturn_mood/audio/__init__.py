"""Audio: PCM decoding and checks, resampling, the log-mel front end, window levels, the streaming pipeline that
turns a source's PCM into model windows, audio files on disk, and a piece's track-level features (tempo, key, mode,
loudness).

The bottom layer above the base modules (errors, config, protocol): numpy, scipy, soxr, librosa, pyloudnorm and
soundfile; nothing else from this package.
"""

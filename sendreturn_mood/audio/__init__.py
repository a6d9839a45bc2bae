"""Audio: PCM decoding and checks, resampling, the log-mel front end, window levels, the streaming pipeline that
turns a source's PCM into model windows, and audio files on disk.

The bottom layer: numpy, scipy, soxr, librosa's filterbank and soundfile only; nothing else from this package.
"""

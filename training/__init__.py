"""sendreturn-mood training: dataset builders, features, CNN training, evaluation, baselines and ONNX export.

Installed with the `train` extra and never imported by the runtime (`sendreturn_mood`), which only reads the ONNX
files this package exports. Entry point: `python -m training --help`.
"""

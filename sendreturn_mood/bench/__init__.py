"""Benchmarks: `python -m sendreturn_mood.bench audio | model | server`.

Commands, never timed test assertions: the machine they run on is shared and noisy, so each command measures the
things it compares side by side in one run (alternating repeats) and reports medians and ratios. Shared pieces
(CPU clocks, one BLAS thread, test signals) live in `common`; each subcommand is one module with `add_arguments`
and `run`.
"""

"""The reproduce-this line of a `python -m training` command, as it was typed: recorded in reports, experiments,
checkpoints and model metadata so every number can be re-run."""

from __future__ import annotations

import shlex
import subprocess
import sys

from training.manifest import REPO

PROG = ["python", "-m", "training"]


def invocation(name: str, argv: list[str] | None = None) -> str:
    """`python -m training NAME ARGS...` for the running process (the arguments after NAME), or for `argv`."""
    if argv is None:
        argv = sys.argv[sys.argv.index(name) + 1 :] if name in sys.argv else sys.argv[1:]
    return shlex.join([*PROG, name, *argv])


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"

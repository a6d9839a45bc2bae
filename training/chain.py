"""Run the strict per-fold training chain of the shipped recipe unattended: every fold, then everything.

For each fold K (and `all`, the model that ships) the chain is: distillation on the mood data's audio without fold
K's test clips, then the supervised fine-tune with WiSE averaging from that student (`training.recipe.DISTILL`,
`FINE_TUNE`), and optionally the genre branch (`GENRE_BRANCH`, from the `all` distilled student, without Emotify
fold K). No stage of the chain that scores fold K hears fold K's test clips, so `evaluate` with the printed
command measures strict CV. Runs are subprocesses (`python -m training train ...`), one after another; a finished
run (its `history.json` exists) is skipped and an interrupted one resumed, so the chain can be restarted at will.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from training.commandline import PROG
from training.recipe import DEFAULT_TEACHERS, DISTILL, FINE_TUNE, GENRE_BRANCH, N_SPLITS

STAGES = ("distill", "finetune", "genre")


def options(d: dict) -> list[str]:
    """A recipe stage's settings as train options."""
    out: list[str] = []
    for k, v in d.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            out.append(flag)
        elif isinstance(v, (list, tuple)):
            out += [flag, *map(str, v)]
        else:
            out += [flag, str(v)]
    return out


def run_dir(root: Path, stage: str, fold: str) -> Path:
    return root / f"{stage}_x{fold}"


def commands(root: Path, folds: list[str], stages: list[str], teachers: list[str], threads: int, seed: int,
             mood_data: str, genre_data: str, channels: list[int] | None = None,
             genre_epochs: int | None = None, genre_posterior: bool = False,
             genre_init: str | None = None) -> list[tuple[Path, list[str]]]:
    """(run folder, train argv) for every run, in the order they must run. `channels` (None: train's default
    network) applies to every stage, since each stage starts from the previous one's weights; `genre_epochs` (None:
    the recipe's) lengthens the genre stage (its patience follows, so early stopping does not cut it short);
    `genre_posterior` adds the teachers' SVM posterior target to the genre stage (`train --genre-posterior`);
    `genre_init` (None: this chain's `all` distilled student) is the checkpoint the genre stage starts from."""
    common = ["--threads", str(threads), "--quiet"] + (["--seed", str(seed)] if seed else [])
    if list(teachers) != list(DEFAULT_TEACHERS):
        common += ["--teachers", *teachers]
    if channels:
        common += ["--channels", *map(str, channels)]
    genre = dict(GENRE_BRANCH, **({"epochs": genre_epochs, "patience": genre_epochs} if genre_epochs else {}))
    runs = []
    for k in folds:
        excl = [] if k == "all" else ["--exclude-fold", k]
        d = run_dir(root, "distill", k)
        if "distill" in stages:
            runs.append((d, ["--data", mood_data, *options(DISTILL), *excl, *common, "--out", str(d)]))
        if "finetune" in stages:
            f = run_dir(root, "ftw", k)
            runs.append((f, ["--data", mood_data, "--init", str(d / "best.ckpt"), *options(FINE_TUNE), *excl, *common,
                             "--out", str(f)]))
    if "genre" in stages:
        init = Path(genre_init) if genre_init else run_dir(root, "distill", "all") / "best.ckpt"
        extra = ["--genre-posterior"] if genre_posterior else []
        for k in folds:
            excl = [] if k == "all" else ["--exclude-fold", k]
            g = run_dir(root, "genre", k)
            runs.append((g, ["--data", mood_data, genre_data, "--init", str(init), *options(genre),
                             "--fold-data", genre_data, *excl, *extra, *common, "--out", str(g)]))
    return runs


def evaluate_command(root: Path, stages: list[str]) -> str:
    """The `evaluate` command that scores the chain (strict: fold K by the runs without fold K)."""
    mood = "ftw" if "finetune" in stages else "distill"
    parts = [*PROG, "evaluate", "--ckpt", str(run_dir(root, mood, "all") / "best.ckpt")]
    for k in range(N_SPLITS):
        parts += ["--fold-ckpt", f"{k}={run_dir(root, mood, str(k)) / 'best.ckpt'}"]
    if "genre" in stages:
        parts += ["--genre-ckpt", str(run_dir(root, "genre", "all") / "best.ckpt")]
        for k in range(N_SPLITS):
            parts += ["--genre-fold-ckpt", f"{k}={run_dir(root, 'genre', str(k)) / 'best.ckpt'}"]
    return shlex.join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.teacher import TEACHERS

    parser.add_argument("--out", required=True, help="folder of the chain's runs (RUN/<stage>_x<fold>)")
    parser.add_argument("--folds", nargs="+", default=[*map(str, range(N_SPLITS)), "all"],
                        help="folds to run ('all' = no fold left out: the model that ships)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=["distill", "finetune"], help="stages to run")
    parser.add_argument("--teachers", nargs="+", choices=sorted(TEACHERS), default=list(DEFAULT_TEACHERS),
                        help="teachers the students distil from (together)")
    parser.add_argument("--mood-data", default="4q", help="mood dataset (audio for distillation, labels for the fine-tune)")
    parser.add_argument("--genre-data", default="emotify", help="genre dataset of the genre stage")
    parser.add_argument("--channels", type=int, nargs="+", default=None,
                        help="CNN block channels of every run (None: train's default, the shipped students' width)")
    parser.add_argument("--genre-epochs", type=int, default=None,
                        help=f"epochs of the genre stage (None: the recipe's {GENRE_BRANCH['epochs']})")
    parser.add_argument("--genre-posterior", action="store_true",
                        help="genre stage: also learn the teachers' RBF-SVM genre posterior (train --genre-posterior)")
    parser.add_argument("--genre-init", default=None, metavar="CKPT",
                        help="checkpoint the genre stage starts from (None: OUT/distill_xall/best.ckpt)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (the machine is shared)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")


def run(args: argparse.Namespace) -> int:
    root = Path(args.out)
    for out, argv in commands(root, args.folds, args.stages, args.teachers, args.threads, args.seed,
                              args.mood_data, args.genre_data, args.channels, args.genre_epochs, args.genre_posterior,
                              args.genre_init):
        cmd = [*PROG, "train", *argv]
        if (out / "history.json").is_file():
            print(f"done already: {out}", flush=True)
            continue
        if (out / "last.ckpt").is_file():
            cmd.append("--resume")
        print(f"{time.strftime('%H:%M:%S')} {shlex.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        t0 = time.time()
        rc = subprocess.run([sys.executable, *cmd[1:]]).returncode
        print(f"{time.strftime('%H:%M:%S')} exit {rc} after {time.time() - t0:.0f} s: {out}", flush=True)
        if rc:
            return rc
    print("evaluate with:\n" + evaluate_command(root, args.stages), flush=True)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

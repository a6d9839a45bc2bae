"""Compute and cache log-mel features (and the teachers' outputs) of datasets with the runtime's own front end.

The work is done by the library modules `training.cache` (decoding, log-mels) and `training.teacher` (musicnn
outputs on the window grid); this command fills the cache ahead of training so the training runs themselves only
read it. Datasets: `4q`, `emotify`, a manifest CSV or a ROOT/<label>/ folder.
"""

from __future__ import annotations

import argparse
import sys
import time

from training.cache import DEFAULT_CACHE, cache_dir, dataset_logmels, resolve_dataset
from training.recipe import DEFAULT_TEACHERS, FRONTEND, HOP_FRAMES
from training.teacher import TEACHERS, dataset_teacher_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("datasets", nargs="+", help="4q, emotify, a manifest CSV or a ROOT/<label>/ folder")
    parser.add_argument("--cache", default=None,
                        help=f"feature cache folder (default: $SENDRETURN_CACHE, else {DEFAULT_CACHE})")
    parser.add_argument("--teacher", action="store_true", help="also cache the teachers' outputs on every window (default: off)")
    parser.add_argument("--teachers", nargs="+", choices=sorted(TEACHERS), default=list(DEFAULT_TEACHERS),
                        help=f"which teachers --teacher runs (default: {' '.join(DEFAULT_TEACHERS)})")
    parser.add_argument("--teacher-hop", type=int, default=HOP_FRAMES,
                        help=f"teacher patch hop in frames (default: {HOP_FRAMES}, the runtime's hop)")


def run(args: argparse.Namespace) -> int:
    cache = cache_dir(args.cache)
    for name in args.datasets:
        items = resolve_dataset(name)
        t0 = time.time()
        mels = dataset_logmels(items, FRONTEND, cache)
        frames = sum(m.shape[1] for m in mels)
        print(f"{name}: {len(items)} clips, {frames} frames ({FRONTEND.frames_to_seconds(frames) / 3600:.2f} h) "
              f"log-mel cached under {cache / 'logmel' / FRONTEND.key()} in {time.time() - t0:.0f} s")
        for teacher in args.teachers if args.teacher else ():
            t0 = time.time()
            outs = dataset_teacher_outputs(items, cache, args.teacher_hop, name=teacher)
            print(f"{name}: teacher {teacher} outputs for {sum(len(o['starts']) for o in outs)} patches in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

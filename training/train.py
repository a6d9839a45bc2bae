"""Train the small CNN: distil the musicnn teacher on 3 s log-mel crops, optionally with mood/genre labels.

One readable loop. Each epoch visits every cached teacher patch of every clip once (in random order), with
augmentation on the student's input only: random crop jitter around the patch, random gain (applied in the power
domain, exactly as louder audio would be), optional mixing of two crops (distillation targets mixed linearly) and
spectrogram masking (time and mel bands). The target is the teacher's standardised embedding + tag logits, so the
student learns the teacher's view of the music without needing any label. With `--teachers msd mtt` the target is
both teachers' embeddings + tag logits side by side (one regression head predicts all of them): the MagnaTagATune
model describes instrumentation and texture, the MSD model era, scene and genre words, and the student learns both. With `--supervised`, labelled clips add
a cross-entropy term (mood labels for 4Q-style datasets, genre labels for Emotify-style ones), balanced per class.

Honesty in cross-validation: `--exclude-fold K` leaves the audio of 4Q fold K's test clips out of training entirely
(no audio, no label), so evaluating fold K afterwards measures a student that never heard those clips. Without it
the student is distilled on all audio it is given (no labels unless --supervised).

Early stopping on the loss (distillation, plus cross-entropy when supervised) of a held-out 10 % of groups; a checkpoint after every epoch (`last.ckpt`,
resumable with `--resume`) and the best one (`best.ckpt`); fixed seeds.

`--wise ALPHA` (fine-tuning only): the shipped `best.ckpt` is the weight average (1 - ALPHA) * init + ALPHA * tuned of
the checkpoint it started from and the best fine-tuned weights (kept as `tuned.ckpt`). Why: WiSE-FT (Wortsman et al.,
"Robust fine-tuning of zero-shot models", CVPR 2022) - the fine-tune learns the labels, the distilled weights keep
the teacher's broader view that 2 epochs on ~540 labelled clips overfit away. On strict 4Q CV the average scored
above the fine-tune alone and the distilled student alone (clip macro-F1 0.719 vs 0.708 vs 0.713: experiments
`shipped_wise`, `shipped_strict_cv`, `distill_strict_lr`), but that is one seed: the same recipe with seed 1 gets
0.708 (`wise_seed1`), so the gaps are within seed noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sendreturn_mood.model.contract import GENRE_OUTPUT
from training.checkpoints import interpolate
from training.commandline import PROG
from training.manifest import GENRES_EMOTIFY, MOODS_4Q, Item
from training.recipe import DEFAULT_TEACHERS, FOLD_SEED, GENRE_POSTERIOR, HOP_FRAMES, N_SPLITS, PATCH_FRAMES

DEFAULT_OUT = Path("runs") / "student"
VALID_FRACTION = 0.1
JITTER_FRAMES = 16  # random crop offset around a cached teacher patch (teacher targets barely change)
GAIN_DB = 6.0
MASK_TIME = 24  # max frames per time mask
MASK_FREQ = 12  # max mel bands per frequency mask
MIX_PROB = 0.3
WARMUP_FRACTION = 0.05
TASKS = ("mood", "genre")  # label tasks a supervised run can learn
LOG_SCALE = 10000.0  # the front end's log10(LOG_SCALE * mel + 1) compression; gain is applied through it


@dataclass
class Patch:
    clip: int  # index into the clip list
    start: int  # start frame of the cached teacher patch
    target: int  # row into the target matrix


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def label_tasks(items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
    """Per clip: mood index (or -1) and genre index (or -1), from the label's vocabulary."""
    mood = np.array([MOODS_4Q.index(it.label) if it.label in MOODS_4Q else -1 for it in items])
    genre = np.array([GENRES_EMOTIFY.index(it.label) if it.label in GENRES_EMOTIFY else -1 for it in items])
    return mood, genre


def split_groups(items: list[Item], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation clips: whole groups (artists), about `fraction` of the clips."""
    groups = sorted({it.group or it.file for it in items})
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    chosen, count = set(), 0
    for g in groups:
        if count >= fraction * len(items):
            break
        chosen.add(g)
        count += sum(1 for it in items if (it.group or it.file) == g)
    return np.array([(it.group or it.file) in chosen for it in items])


def augment(x, rng: np.random.Generator, masks: bool = True):
    """Batch [b, n_mels, t] log-mel (torch) -> gain-changed and masked copy."""
    import torch

    b, n_mels, t = x.shape
    gain = torch.from_numpy(10 ** (rng.uniform(-GAIN_DB, GAIN_DB, size=(b, 1, 1)) / 10)).float()
    power = (torch.pow(10.0, x) - 1.0).clamp_min(0.0)  # back to (scaled) mel power
    x = torch.log10(power * gain + 1.0)
    if masks:
        x = x.clone()
        for i in range(b):
            w = rng.integers(0, MASK_TIME + 1)
            s = rng.integers(0, max(1, t - w))
            x[i, :, s : s + w] = x[i].mean()
            w = rng.integers(0, MASK_FREQ + 1)
            s = rng.integers(0, max(1, n_mels - w))
            x[i, s : s + w, :] = x[i].mean()
    return x


def mix(x, targets, rng: np.random.Generator):
    """Mix a fraction of the batch with another crop in the power domain (as overlapping audio would add);
    the distillation target is mixed with the same weight, labels keep the dominant crop's class (weight >= 0.6)."""
    import torch

    b = x.shape[0]
    chosen = rng.random(b) < MIX_PROB
    if not chosen.any() or targets is None:
        return x, targets
    perm = torch.from_numpy(rng.permutation(b))
    lam = torch.from_numpy(np.where(chosen, rng.uniform(0.6, 1.0, size=b), 1.0)).float()
    p = torch.pow(10.0, x) - 1.0
    mixed = torch.log10((lam[:, None, None] * p + (1 - lam[:, None, None]) * p[perm]).clamp_min(0.0) + 1.0)
    return mixed, lam[:, None] * targets + (1 - lam[:, None]) * targets[perm]


class Data:
    """Clips' log-mels in memory, the list of patches and (with the teacher) their distillation targets."""

    def __init__(self, items: list[Item], cache: Path | None, hop_frames: int, teachers: tuple[str, ...] = DEFAULT_TEACHERS) -> None:
        from training.cache import dataset_logmels
        from training.recipe import FRONTEND
        from training.teacher import dataset_teacher_outputs, patch_starts

        self.items = items
        self.patch = PATCH_FRAMES
        self.mels = [np.ascontiguousarray(m, dtype=np.float32) for m in dataset_logmels(items, FRONTEND, cache)]
        self.patches: list[Patch] = []
        self.targets: np.ndarray | None = None
        if teachers:  # every teacher runs on the same window grid, so their rows line up
            per_teacher = [dataset_teacher_outputs(items, cache, hop_frames, name=t) for t in teachers]
            rows = []
            for c, outs in enumerate(zip(*per_teacher)):
                for i, s in enumerate(outs[0]["starts"]):
                    self.patches.append(Patch(c, int(s), len(rows)))
                    rows.append(np.concatenate([np.concatenate([o["embedding"][i], o["logits"][i]]) for o in outs]))
            self.targets = np.stack(rows).astype(np.float32)
        else:
            for c, m in enumerate(self.mels):
                self.patches += [Patch(c, int(s), -1) for s in patch_starts(m.shape[1], PATCH_FRAMES, hop_frames)]
        self.mood, self.genre = label_tasks(items)

    def crop(self, p: Patch, rng: np.random.Generator | None) -> np.ndarray:
        m = self.mels[p.clip]
        start = p.start
        if rng is not None and m.shape[1] > self.patch:
            start = int(np.clip(start + rng.integers(-JITTER_FRAMES, JITTER_FRAMES + 1), 0, m.shape[1] - self.patch))
        c = m[:, start : start + self.patch]
        if c.shape[1] < self.patch:
            c = np.pad(c, ((0, 0), (0, self.patch - c.shape[1])), mode="edge")
        return c


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up then cosine decay to 5 % of the peak; a pure function of the step, so resuming (even with
    more epochs) needs no scheduler state."""
    warm = max(1, int(WARMUP_FRACTION * total))
    if step < warm:
        return peak * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def class_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """Inverse-frequency weights over the labelled clips (class balance), mean 1."""
    counts = np.bincount(idx[idx >= 0], minlength=n).astype(float)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n, 0.0)
    return w.astype(np.float32)


def train(args: argparse.Namespace) -> Path:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from training.cache import cache_dir, resolve_dataset
    from training.cv import dataset_folds
    from training.net import MoodNet, NetConfig, count_parameters

    if args.wise is not None and not (args.init and 0.0 <= args.wise <= 1.0):
        raise SystemExit("--wise needs --init (the weights to average with) and a value in [0, 1]")
    tuned_name = "tuned.ckpt" if args.wise is not None else "best.ckpt"
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    excluded = 0
    for name in args.data:
        ds = resolve_dataset(name)
        if args.exclude_fold is not None and name in args.fold_data:
            test = set(dataset_folds(ds, args.folds, args.fold_seed)[args.exclude_fold][1].tolist())
            excluded += len(test)
            ds = [it for k, it in enumerate(ds) if k not in test]
        items += ds
    use_teacher = not args.no_teacher
    supervised = args.supervised or not use_teacher
    data = Data(items, cache_dir(args.cache), args.teacher_hop, tuple(args.teachers) if use_teacher else ())
    valid_clip = split_groups(items, VALID_FRACTION, args.seed)
    train_p = [p for p in data.patches if not valid_clip[p.clip]]
    valid_p = [p for p in data.patches if valid_clip[p.clip]]
    targets, t_mean, t_std = None, None, None
    if data.targets is not None:
        rows = np.array([p.target for p in train_p])
        t_mean = data.targets[rows].mean(axis=0)
        t_std = data.targets[rows].std(axis=0) + 1e-3
        targets = torch.from_numpy((data.targets - t_mean) / t_std)
    posterior = None
    if args.genre_posterior:
        from training.cv import softmax
        from training.teacher_svm import window_decisions

        if data.targets is None:
            raise SystemExit("--genre-posterior needs the teachers' cached windows (not --no-teacher)")
        decisions = window_decisions(items, data.genre, cache_dir(args.cache), hop_frames=args.teacher_hop)
        posterior = torch.from_numpy(softmax(decisions, GENRE_POSTERIOR["temperature"]).astype(np.float32))
    mood_w = torch.from_numpy(class_weights(data.mood[~valid_clip], len(MOODS_4Q)))
    genre_w = torch.from_numpy(class_weights(data.genre[~valid_clip], len(GENRES_EMOTIFY)))

    cfg = NetConfig(channels=tuple(args.channels), embedding=args.embedding, distill_dim=0 if data.targets is None else data.targets.shape[1])
    net = MoodNet(cfg)
    if args.init:
        init = torch.load(args.init, map_location="cpu", weights_only=False)
        if init["cfg"] != cfg.to_dict():
            raise SystemExit(f"--init {args.init}: its network {init['cfg']} differs from this run's {cfg.to_dict()}")
        net.load_state_dict(init["net"])
        print(f"initialised from {args.init}", file=sys.stderr)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_p) / args.batch)
    total = args.epochs * steps_per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * steps_per_epoch)
    state = {"epoch": 0, "step": 0, "best_val": float("inf"), "best_epoch": -1, "history": []}
    last = out / "last.ckpt"
    if args.resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        print(f"resumed from {last} at epoch {state['epoch']}", file=sys.stderr)
    print(f"{len(items)} clips ({excluded} excluded test-fold clips), {len(train_p)} train / {len(valid_p)} valid patches, "
          f"{count_parameters(net)} parameters", file=sys.stderr)

    def batch_tensors(ps: list[Patch], rng: np.random.Generator | None):
        x = torch.from_numpy(np.stack([data.crop(p, rng) for p in ps]))
        t = None if targets is None else targets[[p.target for p in ps]]
        if posterior is not None:  # the posterior rides along with the targets (mixed with the same weights)
            t = torch.cat([t, posterior[[p.target for p in ps]]], dim=1)
        mood = torch.from_numpy(data.mood[[p.clip for p in ps]])
        genre = torch.from_numpy(data.genre[[p.clip for p in ps]])
        return x, t, mood, genre

    def loss_fn(o, t, mood, genre):
        loss, parts = torch.zeros(()), {}
        if posterior is not None:
            t, q = t[:, : -posterior.shape[1]], t[:, -posterior.shape[1] :]
            temp = GENRE_POSTERIOR["temperature"]
            soft = -(q * F.log_softmax(o[GENRE_OUTPUT] / temp, dim=1)).sum(dim=1).mean() * temp**2
            loss = loss + GENRE_POSTERIOR["weight"] * soft
            parts["posterior"] = soft.item()
        if t is not None:
            mse = F.mse_loss(o["distill"], t)
            loss = loss + mse
            parts["distill"] = mse.item()
        if supervised:
            for name, lab, w in (("mood", mood, mood_w), ("genre", genre, genre_w)):
                if name not in args.tasks:
                    continue
                key = f"{name}_logits"
                m = lab >= 0
                if m.any() and key in o:
                    ce = F.cross_entropy(o[key][m], lab[m], weight=w)
                    loss = loss + (args.ce_weight if t is not None else 1.0) * ce * m.float().mean()
                    parts[name] = ce.item()
        return loss, parts

    patience_left = args.patience
    while state["epoch"] < args.epochs and state["step"] < total:
        epoch = state["epoch"]
        rng = np.random.default_rng(args.seed * 1000 + epoch)
        order = rng.permutation(len(train_p))
        net.train()
        t0, sums, n = time.time(), {}, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", file=sys.stderr, disable=args.quiet)
        for b in bar:
            if state["step"] >= total:
                break
            ps = [train_p[i] for i in order[b * args.batch : (b + 1) * args.batch]]
            x, t, mood, genre = batch_tensors(ps, rng)
            if args.mix:
                x, t = mix(x, t, rng)
            x = augment(x, rng, masks=not args.no_masks)
            loss, parts = loss_fn(net(x), t, mood, genre)
            for g in opt.param_groups:
                g["lr"] = lr_at(state["step"], total, args.lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.set_postfix({k: f"{v / n:.3f}" for k, v in sums.items()})
        net.eval()
        with torch.no_grad():
            vl, vn = 0.0, 0
            for b in range(0, len(valid_p), 128):
                x, t, mood, genre = batch_tensors(valid_p[b : b + 128], None)
                loss, _ = loss_fn(net(x), t, mood, genre)
                vl += float(loss) * len(x)
                vn += len(x)
        val = vl / max(vn, 1)
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "train": {k: v / max(n, 1) for k, v in sums.items()}, "valid_loss": val,
                                 "seconds": time.time() - t0})
        print(f"epoch {epoch + 1}: train {json.dumps({k: round(v / max(n, 1), 4) for k, v in sums.items()})} "
              f"valid loss {val:.4f} ({time.time() - t0:.0f} s)", file=sys.stderr)
        ckpt = {"net": net.state_dict(), "cfg": cfg.to_dict(), "opt": opt.state_dict(),
                "state": state, "target_mean": t_mean, "target_std": t_std, "args": vars(args), "items": [it.file for it in items],
                "command": training_command(vars(args)),
                "genre_posterior": dict(GENRE_POSTERIOR) if posterior is not None else None}
        improved = val < state["best_val"]
        if improved:
            state["best_val"], state["best_epoch"] = val, epoch + 1
            patience_left = args.patience
        else:
            patience_left -= 1
        torch.save(ckpt, out / "last.tmp")
        os.replace(out / "last.tmp", last)
        if improved:
            torch.save(ckpt, out / "best.tmp")
            os.replace(out / "best.tmp", out / tuned_name)
        if patience_left <= 0:
            print(f"early stop: no improvement for {args.patience} epochs (best epoch {state['best_epoch']})", file=sys.stderr)
            break
    (out / "history.json").write_text(json.dumps(state, indent=1))
    if args.wise is not None:  # recomputed from tuned.ckpt every time, so a resumed run gives the same best.ckpt
        averaged = interpolate(init, torch.load(out / tuned_name, map_location="cpu", weights_only=False), args.wise)
        torch.save(averaged, out / "best.tmp")
        os.replace(out / "best.tmp", out / "best.ckpt")
        print(f"best.ckpt = {1 - args.wise:g} x {args.init} + {args.wise:g} x {out / tuned_name}", file=sys.stderr)
    return out / "best.ckpt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.teacher import TEACHERS

    parser.add_argument("--data", nargs="+", default=["4q", "emotify"],
                        help="datasets whose audio is used (4q, emotify, manifest CSV, folder)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="run folder for checkpoints and history")
    parser.add_argument("--cache", default=None, help="feature cache folder (None: $SENDRETURN_CACHE, else cache/)")
    parser.add_argument("--epochs", type=int, default=12, help="maximum number of epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests; None: no limit)")
    parser.add_argument("--batch", type=int, default=64, help="windows per optimisation step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW, warm-up then cosine)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--patience", type=int, default=3, help="early stopping patience in epochs")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], help="channels of the CNN blocks")
    parser.add_argument("--embedding", type=int, default=128, help="embedding size (the linear heads' input)")
    parser.add_argument("--supervised", action="store_true", help="add mood/genre cross-entropy on labelled clips")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS),
                        help="which labels --supervised learns from (e.g. only genre for a genre branch)")
    parser.add_argument("--no-teacher", action="store_true", help="no distillation: supervised cross-entropy only")
    parser.add_argument("--teachers", nargs="+", choices=sorted(TEACHERS), default=list(DEFAULT_TEACHERS),
                        help="distil from these teachers together (their embeddings + tag logits side by side)")
    parser.add_argument("--ce-weight", type=float, default=0.5, help="weight of the cross-entropy next to the distillation loss")
    parser.add_argument("--genre-posterior", action="store_true",
                        help="add a soft cross-entropy of the genre output to the teachers' RBF-SVM genre posterior on "
                             "every window (the SVM fitted on this run's labelled genre clips only; "
                             "recipe.GENRE_POSTERIOR)")
    parser.add_argument("--mix", action="store_true", help="mix pairs of crops (power domain)")
    parser.add_argument("--no-masks", action="store_true", help="no spectrogram masking")
    parser.add_argument("--exclude-fold", type=int, default=None,
                        help="leave out the test clips of this fold of --fold-data (None: train on everything)")
    parser.add_argument("--fold-data", nargs="+", default=["4q"],
                        help="datasets whose fold --exclude-fold is left out (the same folds as `evaluate`)")
    parser.add_argument("--folds", type=int, default=N_SPLITS, help="number of grouped folds --exclude-fold counts in")
    parser.add_argument("--fold-seed", type=int, default=FOLD_SEED, help="seed of the grouped folds")
    parser.add_argument("--teacher-hop", type=int, default=HOP_FRAMES, help="frames between cached teacher windows")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and augmentation")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (use 1 on a shared machine)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt")
    parser.add_argument("--init", default=None,
                        help="start from this checkpoint's weights (fine-tuning a distilled student; None: random)")
    parser.add_argument("--wise", type=float, default=None, metavar="ALPHA",
                        help="with --init: best.ckpt = (1 - ALPHA) * init + ALPHA * fine-tuned weights (WiSE-FT); "
                             "the fine-tuned ones stay in tuned.ckpt (None: no averaging)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def training_command(args: dict) -> str:
    """The `python -m training train ...` command that reproduces a run, rebuilt from its parsed arguments (only
    the options that differ from the defaults), so it is exact however the run was started."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    parts = [*PROG, "train"]
    for action in p._actions:
        if not action.option_strings or action.dest == "help" or action.dest not in args:
            continue
        value = args[action.dest]
        if isinstance(value, str) and isinstance(action.default, list):
            value = [value]  # older checkpoints stored single-dataset options as a string
        if action.dest == "teacher_hop" and value is None:
            continue  # older checkpoints stored the default hop as None
        if value == action.default or (isinstance(value, (list, tuple)) and list(value) == list(action.default or [])):
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    best = train(args)
    print(f"best checkpoint: {best}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))

"""Training checkpoints as the other commands read them: load a student (or an ensemble), average two, describe
what a chain of checkpoints heard.

A checkpoint (written by `python -m training train`) holds the network weights and config, the parsed arguments and
the exact command that made it (`command`), so `evaluate`, `export` and the card read what happened from data
instead of re-deriving it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENSEMBLE_SEP = ","  # `--ckpt A,B`: the mood students of one ensemble (see training.net.MoodEnsemble)
NOT_RECORDED = "(training command not recorded)"


def read(path: str | os.PathLike[str]) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def load_net(ckpt_path: str | os.PathLike[str]):
    """(MoodNet in eval mode, checkpoint dict) from a training checkpoint."""
    from training.net import MoodNet, NetConfig

    ck = read(ckpt_path)
    net = MoodNet(NetConfig.from_dict(ck["cfg"]))
    net.load_state_dict(ck["net"])
    net.eval()
    return net, ck


def ensemble_members(spec: str) -> list[str]:
    """The checkpoint paths in a `--ckpt` value: one for a single student, several for an ensemble `A,B`."""
    return spec.split(ENSEMBLE_SEP)


def load_student(spec: str):
    """(net in eval mode, [checkpoint dicts]) from `PATH` (one MoodNet) or `PATH,PATH,...` (a MoodEnsemble)."""
    from training.net import MoodEnsemble

    loaded = [load_net(p) for p in ensemble_members(spec)]
    if len(loaded) == 1:
        return loaded[0][0], [loaded[0][1]]
    return MoodEnsemble([n for n, _ in loaded]).eval(), [ck for _, ck in loaded]


def interpolate(init: dict, tuned: dict, alpha: float) -> dict:
    """Checkpoint `tuned` with every floating-point tensor replaced by (1 - alpha) * init + alpha * tuned (integer
    buffers such as batch-norm counters stay the tuned ones). Both must be the same network: a fine-tune and its init."""
    if init["cfg"] != tuned["cfg"]:
        raise ValueError(f"cannot average different networks: {init['cfg']} vs {tuned['cfg']}")
    net = {k: (1 - alpha) * init["net"][k] + alpha * v if v.is_floating_point() else v for k, v in tuned["net"].items()}
    return {**tuned, "net": net}


def command_of(ck: dict) -> str:
    """The `python -m training train ...` command recorded in a checkpoint."""
    return ck.get("command") or NOT_RECORDED


def init_command(ck: dict) -> str | None:
    """The training command of the checkpoint a fine-tuning run started from (read from that checkpoint)."""
    init = ck.get("args", {}).get("init")
    if not init or not Path(init).is_file():
        return None
    return command_of(read(init))


def teachers_of(ck: dict) -> list[str]:
    """The teachers a student was distilled from (checkpoints older than `--teachers` used MSD only)."""
    args = ck.get("args", {})
    if not ck["cfg"].get("distill_dim"):
        return []
    return list(args.get("teachers") or ["msd"])


def chain_stages(path: str, fold: int, dataset: str) -> list[dict]:
    """Each stage of the checkpoint chain behind one student (itself, then what it started from): whether it was
    fine-tuned with labels, on which data, and whether it heard `dataset` fold `fold`'s test clips."""
    stages, p = [], path
    while p and Path(p).is_file():
        a = read(p).get("args", {})
        data, fold_data = a.get("data", []), a.get("fold_data", [])
        fold_data = [fold_data] if isinstance(fold_data, str) else fold_data
        stages.append({"supervised": bool(a.get("supervised")), "wise": a.get("wise"), "data": list(data),
                       "genre_posterior": bool(a.get("genre_posterior")),
                       "teachers": a.get("teachers") or ["msd"], "heard_dataset": dataset in data,
                       "heard_test_fold": dataset in data and not (a.get("exclude_fold") == fold and dataset in fold_data)})
        p = a.get("init")
    return stages


def heard_test_fold(path: str, fold: int, dataset: str) -> bool:
    """Did any stage of any member's chain hear this fold's test clips (audio or labels)?"""
    return any(s["heard_test_fold"] for m in ensemble_members(path) for s in chain_stages(m, fold, dataset))


def describe_chain(path: str, fold: int, dataset: str) -> str:
    """What the student that scores `fold` has seen, in words, from its checkpoint chain (never typed by hand); for
    an ensemble (`A,B`), each member's chain joined by " + "."""
    if len(members := ensemble_members(path)) > 1:
        return " + ".join(describe_chain(p, fold, dataset) for p in members)
    parts = []
    for s in chain_stages(path, fold, dataset):
        stage = "fine-tuned with labels" if s["supervised"] else "distilled (no labels)"
        if s["teachers"] != ["msd"]:
            stage += f" (teachers {'+'.join(s['teachers'])})"
        if s["genre_posterior"]:  # its SVM was fitted on this stage's own labelled clips: it heard what the stage heard
            stage += " (+ the teachers' genre SVM posterior)"
        if s["wise"] is not None:
            stage += f" (weights averaged with its init, alpha {s['wise']:g})"
        if not s["heard_dataset"]:
            seen = f"(never heard {dataset})"
        elif not s["heard_test_fold"]:
            seen = f"without {dataset} fold {fold} (audio and labels)"
        else:
            seen = f"incl. {dataset} fold {fold}'s test clips" + (" (WITH labels)" if s["supervised"] else " (audio only)")
        parts.append(f"{stage} on {'+'.join(s['data'])} {seen}")
    return f"{path}: " + ", from: ".join(parts)

"""`python -m training <subcommand>`: build datasets, extract features, train, evaluate, run baselines, export.

Subcommands implemented in other modules (features, train, evaluate, export, bench) are imported only when they are
the one being run, so `--help` stays fast (no torch import) and the CLI keeps working, with a clear message, in a
checkout where one of them has not landed yet. Their one-line help is read from the module's docstring without
importing it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Sequence

PROG = "python -m training"

# name -> (module, fallback help). Each module exposes add_arguments(parser) and run(args) -> int; the first line of
# its docstring is the help text.
MODULE_COMMANDS = {
    "features": ("training.features", "compute log-mel features with the runtime's front end, cached by recipe"),
    "train": ("training.train", "train the mood/genre CNN"),
    "evaluate": ("training.evaluate", "artist-grouped cross-validated evaluation and report"),
    "export": ("training.export", "export a trained model to ONNX with the runtime's metadata and a model card"),
    "bench": ("training.bench", "measure inference time per window"),
    "baselines": ("training.baselines", "non-CNN baselines on the same artist-grouped folds"),
    "ceiling": ("training.ceiling", "what the teacher's features reach on a task (the students' ceiling)"),
    "quantize": ("training.quantize", "static int8 quantisation of an exported model, checked against the float model"),
    "trackchange-eval": ("training.trackchange", "evaluate the track-change detector on streams of real songs"),
    "keytempo-eval": ("training.keytempo", "measure tempo and key accuracy on FluidSynth renders of MIDI with known truth"),
    "chain": ("training.chain", "run the strict per-fold training chain of the shipped recipe unattended"),
    "robust": ("training.robust", "robustness to audio the data never had, valence/arousal vs MUSIFEAST, sad vs calm"),
}

EPILOG = """\
typical workflow:
  python -m training dataset 4q --out data/4q.csv
  python -m training dataset emotify --out data/emotify.csv
  python -m training baselines --out docs/evaluation/baselines.json
  python -m training features ... ; python -m training train ... ; python -m training evaluate ...
  python -m training export ...
`python -m training <subcommand> --help` explains each one."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (unless the help already says what the default is)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text.lower():
            return text
        return text + " (default: %(default)s)"


class Unavailable(Exception):
    """A subcommand whose module is not in this checkout."""


def _module_doc(module: str) -> str | None:
    """The module's docstring, read from source without importing it (so `--help` never imports torch)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        return ast.get_docstring(ast.parse(Path(spec.origin).read_text()))
    except (OSError, SyntaxError):
        return None


def _first_line(doc: str | None, fallback: str) -> str:
    return doc.strip().splitlines()[0].rstrip(".") if doc and doc.strip() else fallback


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise Unavailable(
                f"{PROG}: '{module.rsplit('.', 1)[-1]}' is not available yet ({module.replace('.', '/')}.py is not in this checkout)"
            ) from None
        raise


def _add_module_command(sub: argparse._SubParsersAction, name: str, selected: bool) -> None:
    module, fallback = MODULE_COMMANDS[name]
    doc = _module_doc(module)
    help_text = _first_line(doc, fallback) + ("" if doc is not None else " (not available yet)")
    if not selected:
        sub.add_parser(name, help=help_text, add_help=False)
        return
    mod = _load(module)
    p = sub.add_parser(name, help=help_text, description=mod.__doc__, formatter_class=HelpFormatter)
    mod.add_arguments(p)
    p.set_defaults(func=mod.run)


def _add_dataset_common(p: argparse.ArgumentParser, default_labels: Sequence[str] | None = None) -> None:
    p.add_argument("--out", required=True, help="manifest CSV to write (columns file,label,group,source)")
    p.add_argument(
        "--map", action="append", default=[], metavar="OLD=NEW",
        help="rename a label (repeatable); OLD=- drops that label's clips",
    )
    p.add_argument(
        "--labels",
        help="comma-separated expected labels (after --map): any other label is an error, and so is an empty one"
        + (f" (default: {','.join(default_labels)}, with --map applied)" if default_labels else " (default: whatever is found)"),
    )
    p.add_argument("--min-per-class", type=int, default=1, help="fail when a class has fewer clips (default 1)")
    p.add_argument("--absolute", action="store_true", help="write absolute paths (default: relative to the manifest)")
    p.add_argument("--no-check-files", action="store_true", help="do not check that every audio file exists")


def _dataset_parser(sub: argparse._SubParsersAction) -> None:
    from .manifest import GENRES_EMOTIFY, MOODS_4Q

    p = sub.add_parser(
        "dataset", help="build a validated manifest from a folder, a CSV, the shared 4Q/Emotify data or Spotify",
        description="Build one manifest (file,label,group,source) from a source of labelled audio, validate it "
        "(missing files, unknown labels, empty classes, a file under two labels) and write it with --out.",
        formatter_class=HelpFormatter,
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    f = kinds.add_parser("folder", help="ROOT/<label>/*.{wav,mp3,flac,ogg}; each file is its own group",
                         description="Folder layout: the label is the sub-folder's name. No artist information, "
                         "so each file is its own group.", formatter_class=HelpFormatter)
    f.add_argument("root", help="the ROOT folder")
    f.add_argument("--source", help="source name stored in the manifest (default: the folder's name)")
    _add_dataset_common(f)
    c = kinds.add_parser("csv", help="a CSV with columns file,label[,group] (relative paths resolve against the CSV)",
                         description="A CSV manifest: columns file and label, optional group and source. Relative "
                         "paths resolve against the CSV's folder.", formatter_class=HelpFormatter)
    c.add_argument("file", help="the CSV file")
    c.add_argument("--group-column", default=None, help="group clips by this column instead of 'group' (e.g. artist)")
    _add_dataset_common(c)
    q = kinds.add_parser("4q", help="the shared 4Q mood data (../shared/data/moods-4q), grouped by artist",
                         description="4Q audio emotion dataset (Panda, Malheiro & Paiva 2018): label = the quadrant's "
                         "mood (happy, angry, sad, calm), group = artist, for artist-disjoint splits.",
                         formatter_class=HelpFormatter)
    q.add_argument("--root", help="dataset folder (default ../shared/data/moods-4q)")
    _add_dataset_common(q, MOODS_4Q)
    e = kinds.add_parser("emotify", help="the shared Emotify genre data (../shared/data/emotify)",
                         description="Emotify (Aljanaki, Wiering & Veltkamp 2015): label = genre (classical, "
                         "electronic, pop, rock); no artist column, so each clip is its own group.",
                         formatter_class=HelpFormatter)
    e.add_argument("--root", help="dataset folder (default ../shared/data/emotify)")
    _add_dataset_common(e, GENRES_EMOTIFY)
    s = kinds.add_parser(
        "spotify", help="search playlists per mood on Spotify and download 30 s previews (the original SEND/RETURN way)",
        description=_module_doc("training.spotify"), formatter_class=HelpFormatter,
    )
    from . import spotify

    spotify.add_arguments(s)
    p.set_defaults(func=_run_dataset)


def _run_dataset(args: argparse.Namespace) -> int:
    from . import datasets

    if args.kind == "spotify":
        from . import spotify

        return spotify.run(args)
    builders: dict[str, Callable[[], list]] = {
        "folder": lambda: datasets.build_folder(args.root, args.source),
        "csv": lambda: datasets.build_csv(args.file, args.group_column),
        "4q": lambda: datasets.build_4q(args.root),
        "emotify": lambda: datasets.build_emotify(args.root),
    }
    mapping = datasets.parse_label_map(args.map)
    items = datasets.relabel(builders[args.kind](), mapping)
    if args.labels:
        labels: list[str] | None = [s for s in args.labels.split(",") if s]
    elif args.kind in datasets.KNOWN_LABELS:
        labels = [mapping.get(lab, lab) for lab in datasets.KNOWN_LABELS[args.kind] if mapping.get(lab, lab) != "-"]
    else:
        labels = None
    items = datasets.validate(items, labels, args.min_per_class, check_files=not args.no_check_files)
    out = datasets.write_relative(items, args.out, absolute=args.absolute)
    print(f"{out}: {datasets.summarize(items).text()}")
    return 0


def _spotify_predict_parser(sub: argparse._SubParsersAction) -> None:
    from . import spotify

    p = sub.add_parser(
        "spotify-predict", help="fetch a Spotify track's 30 s preview (if Spotify offers one) and print its mood",
        description=spotify.predict_description(), formatter_class=HelpFormatter,
    )
    spotify.add_predict_arguments(p)
    p.set_defaults(func=spotify.run_predict)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI; only the `selected` module subcommand is imported (the others just list their help line)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.splitlines()[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    _dataset_parser(sub)
    for name in MODULE_COMMANDS:
        _add_module_command(sub, name, selected == name)
    _spotify_predict_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(selected if selected in MODULE_COMMANDS else None)
    except Unavailable as e:
        print(e, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    from sendreturn_mood.model.contract import ModelError

    from .manifest import ManifestError

    try:
        return int(args.func(args) or 0)
    except (ManifestError, ModelError) as e:
        print(f"{PROG} {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

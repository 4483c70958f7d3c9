"""Options shared by several subcommands, declared once as argparse parent parsers, and the
helpers that turn parsed options into the library's arguments."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass

from ..config import Config, load_config
from ..data.records import Dataset
from ..errors import AudiotagError
from ..inference.standardize import MIN_CLIPS_PER_LABEL, MODES
from ..runs import DataSpec

DATA_HELP = "dataset folder (Kaggle FAT2019 layout, a folder with a labels CSV, or one folder per class)"


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


@dataclass(frozen=True)
class Shared:
    """The parent parsers a subcommand picks from: ``parents=[shared.data, shared.quiet]``."""

    data: argparse.ArgumentParser
    config: argparse.ArgumentParser
    device: argparse.ArgumentParser
    cache: argparse.ArgumentParser
    workers: argparse.ArgumentParser
    skip_bad: argparse.ArgumentParser
    standardize: argparse.ArgumentParser
    quiet: argparse.ArgumentParser


def shared_options() -> Shared:
    data = _parent()
    data.add_argument("--data", metavar="DIR", help=DATA_HELP)
    g = data.add_argument_group("generic CSV datasets")
    g.add_argument("--csv", metavar="FILE", help="a CSV naming files and labels (instead of detecting the layout)")
    g.add_argument("--audio-dir", metavar="DIR", help="folder holding the files the CSV names (default: DATA or the CSV's folder)")
    g.add_argument("--file-col", metavar="NAME", help="column with file names (default: fname/filename/file/path/...)")
    g.add_argument("--label-col", metavar="NAME", help="column with labels (default: labels/label/category/class)")
    g.add_argument("--fold-col", metavar="NAME", help="column with predefined CV folds (default: fold, when present)")
    g.add_argument("--label-sep", default=",", metavar="SEP", help="separator between labels of one clip (default ',')")
    g.add_argument("--vocabulary", metavar="FILE", help="vocabulary.csv fixing the label set and order")
    g.add_argument("--only-listed", action="store_true",
                   help="the CSV is the selection: audio files it does not name are not errors")

    config = _parent()
    config.add_argument("--config", metavar="FILE", help="YAML config (only the keys it changes); default: built-in")
    config.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set features.n_mels=128 (repeatable)")

    device = _parent()
    device.add_argument("--device", choices=("auto", "cpu", "cuda"),
                        help="where to compute (default: auto = a CUDA GPU when there is one, else the CPU)")

    cache = _parent()
    cache.add_argument("--cache-dir", metavar="DIR",
                       help="feature cache folder (default: the run's, else $AUDIOTAG_CACHE or ~/.cache/audiotag)")

    workers = _parent()
    workers.add_argument("--workers", type=int, metavar="N",
                         help="worker processes for decoding/features (default: one per core)")

    skip_bad = _parent()
    skip_bad.add_argument("--skip-bad", action="store_true",
                          help="leave out clips that fail validation instead of stopping")

    standardize = _parent()
    standardize.add_argument(
        "--standardize", choices=MODES, default="auto",
        help="standardise each label's scores over the whole test set before writing the submission, which ranks "
             "labels better on unseen recordings; the scores then rank labels and are no longer probabilities "
             f"(default: auto = when the test set has at least {MIN_CLIPS_PER_LABEL} clips per label)")

    quiet = _parent()
    quiet.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return Shared(data=data, config=config, device=device, cache=cache, workers=workers, skip_bad=skip_bad,
                  standardize=standardize, quiet=quiet)


def add_data_positional(p: argparse.ArgumentParser) -> None:
    """DATA as a positional argument too (the older spelling of ``--data DATA``)."""
    p.add_argument("data_positional", nargs="?", metavar="DATA", help=f"same as --data: {DATA_HELP}")


def resolve_data_positional(args: argparse.Namespace) -> None:
    positional = getattr(args, "data_positional", None)
    if positional is None:
        return
    if getattr(args, "data", None) not in (None, positional):
        raise AudiotagError(f"two datasets given: {positional} and --data {args.data}", hint="give one of them")
    args.data = positional


def add_subcommand(subs, name: str, help: str, description: str, example: str, *, parents=()) -> argparse.ArgumentParser:
    return subs.add_parser(name, help=help, description=description, parents=list(parents),
                           epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "),
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` options plus the dedicated options that are settings too (--device, --workers, --skip-bad)."""
    out = list(getattr(args, "overrides", []))
    if getattr(args, "device", None):
        out.append(f"train.device={args.device}")
    if getattr(args, "workers", None) is not None:
        out.append(f"data.num_workers={args.workers}")
    if getattr(args, "skip_bad", False):
        out.append("data.skip_bad=true")
    return out


def config_of(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None), overrides(args))


def data_spec(args: argparse.Namespace) -> DataSpec:
    if args.data is None and args.csv is None:
        raise AudiotagError("no dataset given", hint="pass --data DIR, or --csv FILE --audio-dir DIR")
    return DataSpec(root=args.data, csv=args.csv, audio_dir=args.audio_dir, file_col=args.file_col,
                    label_col=args.label_col, fold_col=args.fold_col, label_sep=args.label_sep,
                    vocabulary=args.vocabulary, only_listed=args.only_listed)


def load(args: argparse.Namespace, *, audio: bool = True) -> Dataset:
    return data_spec(args).load(audio=audio)


def print_skipped(skipped) -> None:
    """One line per file left out, with all of its problems (a file can have several)."""
    codes: dict[tuple[str, str], list[str]] = {}
    for p in skipped:
        codes.setdefault((p.split, p.fname), []).append(p.code)
    if codes:
        print(f"skipped {len(codes)} bad file{'s' if len(codes) != 1 else ''} (--skip-bad):")
        for (split, fname), found in list(codes.items())[:20]:
            print(f"  {split}/{fname}: {', '.join(dict.fromkeys(found))}")
        if len(codes) > 20:
            print(f"  ... and {len(codes) - 20} more")

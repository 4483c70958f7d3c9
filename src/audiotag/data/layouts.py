"""Readers for the dataset layouts audiotag understands, all producing a :class:`Dataset`.

* ``kaggle``: the FAT2019 competition layout (``train_curated.csv``, ``train_noisy.csv``,
  ``sample_submission.csv``, ``vocabulary.csv`` and the matching audio folders).
* ``csv``: any CSV of file names and labels, with an optional fold column (ESC-50's
  ``esc50.csv``, UrbanSound8K's metadata, your own).
* ``folder``: one sub-folder per class (``root/<label>/*.wav``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import DataError
from .csvio import read_table, read_vocabulary, resolve_column
from .records import Clip, Dataset, Problem

FILE_COLUMNS = ("fname", "filename", "file", "path", "slice_file_name", "file_name")
LABEL_COLUMNS = ("labels", "label", "category", "class", "tags")
FOLD_COLUMNS = ("fold",)
# Files with these endings are audio for the purpose of "a file no CSV row names".
AUDIO_LIKE = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".w64", ".rf64", ".m4a",
              ".aac", ".wma", ".opus", ".webm", ".mp4")
TRUTH_FILES = ("test_labels.csv", "test_post_competition.csv")


def safe_audio_path(folder: Path, fname: str) -> Path | None:
    """``folder / fname`` if ``fname`` is a relative name that stays inside ``folder``, else None."""
    if not fname or "\x00" in fname or "\\" in fname:
        return None
    posix = PurePosixPath(fname)
    if posix.is_absolute() or PureWindowsPath(fname).drive or ".." in posix.parts:
        return None
    return folder / posix


def _unsafe(split: str, fname: str, source: str, row: int) -> Problem:
    return Problem("unsafe-path", f"{fname!r} points outside the audio folder", split=split, fname=fname, source=source,
                   row=row, hint="file names must be relative names inside the audio folder (no '..', no absolute paths)")


def _parse_labels(text: str, *, sep: str, split: str, fname: str, source: str, row: int,
                  problems: list[Problem], required: bool) -> tuple[str, ...]:
    if not text:
        if required:
            problems.append(Problem("empty-labels", f"{fname} has no labels", split=split, fname=fname, source=source,
                                    row=row, hint="give every training clip at least one label, or remove the row"))
        return ()
    parts = [p.strip() for p in text.split(sep)] if sep else [text]
    if any(not p for p in parts):
        problems.append(Problem("empty-label", f"{fname}: the label list {text!r} has an empty entry",
                                split=split, fname=fname, source=source, row=row,
                                hint="remove the doubled or trailing separator"))
    labels = [p for p in parts if p]
    if len(set(labels)) != len(labels):
        problems.append(Problem("repeated-label", f"{fname}: a label is repeated in {text!r}; counted once",
                                severity="warning", source=source, row=row))
    return tuple(dict.fromkeys(labels))


def _read_clip_table(path: Path, *, split: str, audio_dir: Path | None, problems: list[Problem],
                     file_col: str | None = None, label_col: str | None = None, fold_col: str | None = None,
                     label_sep: str = ",", labels_required: bool = True, labels_optional: bool = False,
                     fold_subdirs: bool = False, duplicates: list[Clip] | None = None) -> list[Clip]:
    """The table's clips. A repeated file name is a problem and its row is not a clip, but its
    labels are still parsed and, with ``duplicates``, returned there so they can be checked too."""
    table = read_table(path, problems, expect=("fname", "labels"))
    fcol = resolve_column(table.columns, file_col, FILE_COLUMNS, what="file names", path=path)
    lcol = resolve_column(table.columns, label_col, LABEL_COLUMNS, what="labels", path=path,
                          required=not labels_optional)
    kcol = resolve_column(table.columns, fold_col, FOLD_COLUMNS, what="fold", path=path, required=False)
    clips: list[Clip] = []
    first_row: dict[str, int] = {}
    for line, row in table.rows:
        fname = row[fcol]
        if not fname:
            problems.append(Problem("empty-fname", "the file name is empty", source=path.name, row=line,
                                    hint="fill in the file name or delete the row"))
            continue
        if fname in first_row:
            problems.append(Problem("duplicate-fname", f"{fname} appears again (first at line {first_row[fname]})",
                                    split=split, fname=fname, source=path.name, row=line,
                                    hint="keep one row per file (merge their labels if both are right)"))
            labels = _parse_labels(row[lcol] if lcol else "", sep=label_sep, split=split, fname=fname,
                                   source=path.name, row=line, problems=problems, required=labels_required)
            if duplicates is not None:
                duplicates.append(Clip(fname=fname, split=split, path=None, labels=labels, source=path.name, row=line))
            continue
        first_row[fname] = line
        labels = _parse_labels(row[lcol] if lcol else "", sep=label_sep, split=split, fname=fname, source=path.name,
                               row=line, problems=problems, required=labels_required)
        fold = None
        if kcol:
            try:
                fold = int(row[kcol])
            except ValueError:
                problems.append(Problem("bad-fold", f"{fname}: fold {row[kcol]!r} is not an integer", split=split,
                                        fname=fname, source=path.name, row=line))
        audio_path = None
        if audio_dir is not None:
            audio_path = safe_audio_path(audio_dir, fname)
            if audio_path is None:
                problems.append(_unsafe(split, fname, path.name, line))
            elif fold_subdirs and fold is not None and not audio_path.exists():
                nested = audio_dir / f"fold{fold}" / fname  # UrbanSound8K keeps audio in fold<k>/
                audio_path = nested if nested.exists() else audio_path
        clips.append(Clip(fname=fname, split=split, path=audio_path, labels=labels, fold=fold, source=path.name,
                          row=line))
    return clips


def _check_vocabulary(clips: list[Clip], vocabulary: tuple[str, ...], problems: list[Problem]) -> None:
    known = set(vocabulary)
    for clip in clips:
        for label in clip.labels:
            if label not in known:
                close = difflib.get_close_matches(label, vocabulary, n=1)
                problems.append(Problem(
                    "unknown-label", f"{clip.fname}: label {label!r} is not in the vocabulary", split=clip.split,
                    fname=clip.fname, source=clip.source, row=clip.row,
                    hint=f"did you mean {close[0]!r}?" if close else "add it to vocabulary.csv or fix the row"))


# ----------------------------------------------------------------------------- kaggle


def load_kaggle(root: Path, *, audio: bool = True) -> Dataset:
    problems: list[Problem] = []
    vocab_file, submission = root / "vocabulary.csv", root / "sample_submission.csv"
    vocabulary: tuple[str, ...] | None = None
    if vocab_file.exists():
        vocabulary = read_vocabulary(vocab_file, problems)
    header_vocab: tuple[str, ...] | None = None
    test_clips: list[Clip] = []
    test_dir = root / "test"
    if submission.exists():
        table = read_table(submission, problems, expect=("fname",))
        fcol = resolve_column(table.columns, None, FILE_COLUMNS, what="file names", path=submission)
        header_vocab = tuple(c for c in table.columns if c != fcol)
        seen: dict[str, int] = {}
        for line, row in table.rows:
            fname = row[fcol]
            if fname in seen:
                problems.append(Problem("duplicate-fname", f"{fname} appears again (first at line {seen[fname]})",
                                        split="test", fname=fname, source=submission.name, row=line))
                continue
            seen[fname] = line
            path = safe_audio_path(test_dir, fname) if audio else None
            if audio and path is None:
                problems.append(_unsafe("test", fname, submission.name, line))
            test_clips.append(Clip(fname=fname, split="test", path=path, source=submission.name, row=line))
    elif audio and test_dir.is_dir():
        for path in sorted(p for p in test_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_LIKE):
            test_clips.append(Clip(fname=path.name, split="test", path=path, source="test/"))

    if vocabulary is not None and header_vocab is not None and vocabulary != header_vocab:
        missing = [v for v in vocabulary if v not in header_vocab]
        extra = [v for v in header_vocab if v not in vocabulary]
        detail = (f"missing {missing[:5]}" if missing else "") + (f" extra {extra[:5]}" if extra else "")
        problems.append(Problem("vocabulary-mismatch",
                                f"the columns of sample_submission.csv differ from vocabulary.csv ({detail.strip() or 'different order'})",
                                hint="both must list the same labels in the same order", source=submission.name))
    vocabulary = vocabulary or header_vocab

    clips: list[Clip] = []
    duplicates: list[Clip] = []
    audio_dirs: dict[str, Path] = {}
    for split in ("curated", "noisy"):
        csv_path, folder = root / f"train_{split}.csv", root / f"train_{split}"
        if not csv_path.exists():
            continue
        if audio and not folder.is_dir():
            problems.append(Problem("missing-folder", f"{csv_path.name} exists but its audio folder {folder.name}/ does not",
                                    hint=f"put the audio in {folder}, or run with --no-audio for CSV-only work",
                                    source=csv_path.name))
        clips += _read_clip_table(csv_path, split=split, audio_dir=folder if audio else None, problems=problems,
                                  file_col="fname", label_col="labels", duplicates=duplicates)
        if audio and folder.is_dir():
            audio_dirs[split] = folder
    if audio and test_dir.is_dir():
        audio_dirs["test"] = test_dir
    if audio and test_clips and not test_dir.is_dir():
        problems.append(Problem("missing-folder", "sample_submission.csv lists test clips but there is no test/ folder",
                                hint="put the test audio in test/", source=submission.name))

    test_labelled = False
    truth = next((root / name for name in TRUTH_FILES if (root / name).exists()), None)
    if truth is not None and test_clips:
        table = read_table(truth, problems, expect=("fname", "labels"))
        labels_by_name = {row["fname"]: (line, row.get("labels", "")) for line, row in table.rows if "fname" in row}
        labelled = []
        for clip in test_clips:
            if clip.fname in labels_by_name:
                line, text = labels_by_name[clip.fname]
                labels = _parse_labels(text, sep=",", split="test", fname=clip.fname, source=truth.name, row=line,
                                       problems=problems, required=True)
                clip = Clip(fname=clip.fname, split="test", path=clip.path, labels=labels, source=truth.name, row=line)
            labelled.append(clip)
        n_truth = sum(1 for c in labelled if c.labels)
        # test_post_competition.csv covers stage-2 clips too; only the ones we have matter.
        test_labelled = n_truth == len(test_clips)
        if 0 < n_truth < len(test_clips):
            problems.append(Problem("partial-truth", f"{truth.name} labels {n_truth} of {len(test_clips)} test clips",
                                    severity="warning", source=truth.name,
                                    hint="test lwlrap is only computed when every test clip is labelled"))
        test_clips = labelled
    clips += test_clips

    if vocabulary is None:
        vocabulary = tuple(sorted({label for c in clips for label in c.labels}))
        problems.append(Problem("no-vocabulary", "neither vocabulary.csv nor sample_submission.csv is present; the "
                                f"vocabulary is the {len(vocabulary)} labels seen in the training CSVs",
                                severity="warning", hint="add vocabulary.csv to fix the label order"))
    _check_vocabulary(clips + duplicates, vocabulary, problems)
    if not clips:
        raise DataError(f"{root}: no clips found in train_curated.csv, train_noisy.csv or sample_submission.csv")
    return Dataset(root=root, layout="kaggle", vocabulary=vocabulary, clips=clips, problems=problems,
                   audio_dirs=audio_dirs, test_labelled=test_labelled)


# ----------------------------------------------------------------------------- generic csv


def load_csv(csv_path: Path, audio_dir: Path, *, file_col: str | None = None, label_col: str | None = None,
             fold_col: str | None = None, label_sep: str = ",", vocabulary: Path | None = None,
             audio: bool = True) -> Dataset:
    problems: list[Problem] = []
    if audio and not audio_dir.is_dir():
        raise DataError(f"audio folder {audio_dir} does not exist", hint="pass the folder holding the files with --audio-dir")
    duplicates: list[Clip] = []
    clips = _read_clip_table(csv_path, split="curated", audio_dir=audio_dir if audio else None, problems=problems,
                             file_col=file_col, label_col=label_col, fold_col=fold_col, label_sep=label_sep,
                             fold_subdirs=True, duplicates=duplicates)
    if vocabulary is not None:
        vocab = read_vocabulary(vocabulary, problems)
        _check_vocabulary(clips + duplicates, vocab, problems)
    else:
        vocab = tuple(sorted({label for c in clips for label in c.labels}))
        problems += joined_label_warnings(vocab, label_sep=label_sep, source=csv_path.name)
    if not clips:
        raise DataError(f"{csv_path}: has no rows")
    return Dataset(root=audio_dir, layout="csv", vocabulary=vocab, clips=clips, problems=problems,
                   audio_dirs={"curated": audio_dir} if audio else {})


SEPARATORS = (",", ";", "|", "/", "+")


def joined_label_warnings(vocabulary: tuple[str, ...], *, label_sep: str, source: str) -> list[Problem]:
    """Labels that look like several labels joined by a separator other than ``label_sep``: the
    sign of a wrong ``--label-sep``, which silently makes up new classes."""
    known = set(vocabulary)
    out = []
    for sep in SEPARATORS:
        if sep == label_sep:
            continue
        holding = [label for label in vocabulary if sep in label]
        joined = [label for label in holding
                  if len(parts := [p.strip() for p in label.split(sep)]) > 1 and all(p in known for p in parts)]
        if joined:
            out.append(Problem("joined-labels", f"{len(joined)} label(s) are other labels joined by {sep!r} (e.g. "
                               f"{joined[0]!r}): they became classes of their own", severity="warning", source=source,
                               hint=f"if a clip lists several labels separated by {sep!r}, pass --label-sep {sep!r}"))
        elif len(holding) >= 2:
            out.append(Problem("separator-in-labels", f"{len(holding)} labels contain {sep!r} (e.g. {holding[0]!r})",
                               severity="warning", source=source,
                               hint=f"if {sep!r} separates several labels of a clip, pass --label-sep {sep!r}"))
    return out


# ----------------------------------------------------------------------------- class folders


def load_folder(root: Path) -> Dataset:
    problems: list[Problem] = []
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    clips: list[Clip] = []
    for folder in classes:
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            fname = path.relative_to(root).as_posix()
            if path.suffix.lower() not in AUDIO_LIKE:
                continue
            clips.append(Clip(fname=fname, split="curated", path=path, labels=(folder.name,), source=f"{folder.name}/"))
    for path in sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_LIKE):
        problems.append(Problem("stray-file", f"{path.name} sits in the top folder, outside every class folder",
                                severity="warning", source=path.name, hint="move it into the folder of its class"))
    if not clips:
        raise DataError(f"{root}: no audio files found in class sub-folders",
                        hint="expected root/<label>/*.wav; for a CSV of labels use --csv FILE --audio-dir DIR")
    vocabulary = tuple(sorted({c.labels[0] for c in clips}))
    return Dataset(root=root, layout="folder", vocabulary=vocabulary, clips=clips, problems=problems)


# ----------------------------------------------------------------------------- detection


def _single_label_csv(root: Path) -> Path | None:
    """A CSV directly in ``root`` (or ESC-50's ``meta/``, UrbanSound8K's ``metadata/``) that names files and labels."""
    candidates = sorted(root.glob("*.csv")) + sorted((root / "meta").glob("*.csv")) + sorted((root / "metadata").glob("*.csv"))
    for path in candidates:
        try:
            with open(path, encoding="utf-8-sig") as f:
                header = [c.strip() for c in f.readline().split(",")]
        except (OSError, UnicodeDecodeError):
            continue
        if any(c in header for c in FILE_COLUMNS) and any(c in header for c in LABEL_COLUMNS):
            return path
    return None


def load_dataset(root: str | Path | None = None, *, csv: str | Path | None = None, audio_dir: str | Path | None = None,
                 file_col: str | None = None, label_col: str | None = None, fold_col: str | None = None,
                 label_sep: str = ",", vocabulary: str | Path | None = None, audio: bool = True,
                 only_listed: bool = False) -> Dataset:
    """Read a dataset in any supported layout.

    ``root`` alone: the layout is detected (Kaggle CSVs, a labelled CSV with its audio, or class
    folders). ``csv`` (+ ``audio_dir``, default: the CSV's folder or ``root``): a generic CSV.
    ``audio=False`` reads only the CSVs (no audio folders needed). ``only_listed``: the CSVs are
    the selection, and audio files they do not name are not problems.
    """
    ds = _detect_and_load(root, csv=csv, audio_dir=audio_dir, file_col=file_col, label_col=label_col,
                          fold_col=fold_col, label_sep=label_sep, vocabulary=vocabulary, audio=audio)
    return dataclasses.replace(ds, audio_dirs={}) if only_listed else ds


def _detect_and_load(root, *, csv, audio_dir, file_col, label_col, fold_col, label_sep, vocabulary,
                     audio) -> Dataset:
    # Folders are made absolute once here, so every clip path is absolute without per-file resolving.
    if csv is not None:
        csv = Path(csv).absolute()
        if not csv.is_file():
            raise DataError(f"CSV file {csv} does not exist", hint="check the path given to --csv")
        folder = Path(audio_dir) if audio_dir is not None else (Path(root) if root is not None else csv.parent)
        folder = folder.resolve()
        return load_csv(csv, folder, file_col=file_col, label_col=label_col, fold_col=fold_col, label_sep=label_sep,
                        vocabulary=Path(vocabulary) if vocabulary else None, audio=audio)
    if root is None:
        raise DataError("no dataset given", hint="pass a dataset folder, or --csv FILE --audio-dir DIR")
    if not Path(root).exists():
        raise DataError(f"dataset folder {root} does not exist",
                        hint="check the path; a dataset is a folder (Kaggle layout, a labels CSV with its audio, or "
                             "one sub-folder per class), or --csv FILE --audio-dir DIR")
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a dataset folder",
                        hint="for a CSV of labels use --csv FILE --audio-dir DIR")
    if any((root / name).exists() for name in ("train_curated.csv", "train_noisy.csv", "sample_submission.csv")):
        return load_kaggle(root, audio=audio)
    table = _single_label_csv(root)
    if table is not None:
        default_audio = root / "audio" if (root / "audio").is_dir() else table.parent
        folder = Path(audio_dir).resolve() if audio_dir is not None else default_audio
        return load_csv(table, folder, file_col=file_col, label_col=label_col, fold_col=fold_col, label_sep=label_sep,
                        vocabulary=Path(vocabulary) if vocabulary else None, audio=audio)
    if any(p.is_dir() for p in root.iterdir()):
        return load_folder(root)
    hint = ("expected the Kaggle files (train_curated.csv ...), a CSV naming files and labels, "
            "or one sub-folder per class; or pass --csv FILE --audio-dir DIR")
    if any(p.suffix.lower() in AUDIO_LIKE for p in root.iterdir()):
        hint += f"; to tag a folder of unlabelled audio with a trained run: audiotag tag --run RUN {root}"
    raise DataError(f"cannot tell the layout of {root}", hint=hint)


def audio_files_under(folder: Path) -> list[Path]:
    """Every audio-like file under ``folder`` (recursively, hidden files skipped)."""
    return [Path(p) for p in audio_paths_under(folder)]


def audio_paths_under(folder: str | Path) -> list[str]:
    """:func:`audio_files_under` as strings (a Path costs ~10 us to build: 40 ms for 4,000 files)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_LIKE:
                out.append(os.path.join(dirpath, name))
    # Path order (part by part, so "a/b" comes before "a-b"), without building a Path per comparison.
    out.sort(key=lambda p: p.split(os.sep))
    return out



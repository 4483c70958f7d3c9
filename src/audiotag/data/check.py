"""Validation of a whole dataset in one pass, before any heavy work.

:func:`check_dataset` collects every problem (CSV rows, labels, paths, missing and stray files,
undecodable or unusable audio) into a :class:`CheckReport`; :func:`validate` is what training,
feature extraction and prediction call: it either returns the dataset (without the bad clips when
``skip_bad``) or raises :class:`ValidationFailed` listing everything.
"""

from __future__ import annotations

import csv
import io
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from .. import fsutil
from ..audio.inventory import AudioVerdict, FileStat, Inventory, default_cache_dir, scan_file
from ..audio.io import AudioInfo, is_supported
from ..errors import ValidationFailed
from ..parallel import parallel_map
from .layouts import audio_paths_under
from .records import Clip, Dataset, Problem

INVENTORY_FILE = "inventory.sqlite"
LOOKUP_BLOCK = 256  # files looked up in the inventory per query
EXAMPLES_PER_KIND = 5  # problems of one kind printed before they are counted instead


@dataclass
class CheckReport:
    problems: list[Problem]
    clip_counts: dict[str, int]
    audio_checked: bool
    # (split, fname) -> what decoding found, for every clip whose audio is usable.
    audio: dict[tuple[str, str], AudioInfo] = field(default_factory=dict)
    digests: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def bad_clips(self) -> set[tuple[str, str]]:
        return {(p.split, p.fname) for p in self.errors if p.skippable}

    def ok(self, *, skip_bad: bool = False) -> bool:
        errors = self.errors
        return not errors or (skip_bad and all(p.skippable for p in errors))

    def format(self, *, limit: int | None = None, warnings: bool = True, per_kind: int = EXAMPLES_PER_KIND) -> str:
        """Every problem, except that a kind (severity and code) met more than ``per_kind`` times shows
        ``per_kind`` examples and a count: a warning that hits every file is said once, not 3,000 times."""
        shown = self.errors + (self.warnings if warnings else [])
        counts = Counter((p.severity, p.code) for p in shown)
        seen: Counter = Counter()
        lines = []
        for p in shown:
            kind = (p.severity, p.code)
            seen[kind] += 1
            if seen[kind] <= per_kind:
                lines.append(p.format())
            if seen[kind] == per_kind and counts[kind] > per_kind:
                lines.append(f"    ... and {counts[kind] - per_kind} more {p.severity}s of this kind ({p.code}); "
                             "--report FILE lists every one")
        if limit is not None and len(lines) > limit:
            lines = lines[:limit] + ["... and more (all of them are in the problems CSV)"]
        return "\n".join(lines)

    def summary(self) -> str:
        counts = ", ".join(f"{n} {split}" for split, n in self.clip_counts.items())
        by_code = Counter(p.code for p in self.errors)
        text = f"{sum(self.clip_counts.values())} clips ({counts}); "
        if not self.errors:
            text += "no errors"
        else:
            text += f"{len(self.errors)} errors (" + ", ".join(f"{n} {c}" for c, n in by_code.most_common()) + ")"
            bad = len(self.bad_clips)
            if bad:
                text += f"; --skip-bad would leave out {bad} file{'s' if bad != 1 else ''}"
        if self.warnings:
            text += f"; {len(self.warnings)} warnings"
        return text + ("" if self.audio_checked else " (audio not checked)")

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["severity", "code", "split", "fname", "source", "row", "message", "hint"])
        for p in self.errors + self.warnings:
            writer.writerow([p.severity, p.code, p.split or "", p.fname or "", p.source or "", p.row or "", p.message,
                             p.hint])
        return out.getvalue()


def _where(clip: Clip) -> dict:
    return {"split": clip.split, "fname": clip.fname, "source": clip.source, "row": clip.row}


def file_problems(ds: Dataset) -> tuple[list[Problem], list[tuple[Clip, FileStat]]]:
    """Missing, unsupported and stray files; returns them and the clips whose file can be decoded,
    each with its file's identity (one stat a file)."""
    problems: list[Problem] = []
    decodable: list[tuple[Clip, FileStat]] = []
    for clip in ds.clips:
        if clip.path is None:
            continue  # unsafe name, already reported
        try:
            st = os.stat(clip.path)
            what = "" if stat.S_ISREG(st.st_mode) else "is a folder" if stat.S_ISDIR(st.st_mode) else "is not a file"
        except FileNotFoundError:
            what = "does not exist"
        except OSError as e:
            what = f"cannot be reached ({e.strerror})"
        if what:
            problems.append(Problem("missing-file", f"{clip.fname}: the CSV row's file {clip.path} {what}",
                                    hint="restore the file, or delete the row", **_where(clip)))
        elif not is_supported(clip.path):
            problems.append(Problem("unsupported-format", f"{clip.fname}: {clip.path.suffix or 'no extension'} "
                                    "is not a supported audio format", **_where(clip),
                                    hint="convert it to WAV or FLAC (e.g. ffmpeg -i in.m4a out.wav)"))
        else:
            decodable.append((clip, FileStat.from_stat(clip.path, st)))
    for split, folder in ds.audio_dirs.items():
        named = {os.path.normpath(c.path) for c in ds.clips if c.split == split and c.path is not None}
        for path in audio_paths_under(folder):
            if os.path.normpath(path) not in named:
                rel = Path(path).relative_to(folder).as_posix()
                problems.append(Problem("stray-file", f"{folder.name}/{rel} has no row in the CSV", split=split,
                                        fname=rel, source=f"{folder.name}/",
                                        hint="add a row for it, or move it out of the audio folder; when the CSV "
                                             "is the selection, pass --only-listed"))
    return problems, decodable


@dataclass
class AudioScan:
    """How files are examined during validation.

    ``fn(task) -> (FileStat, AudioVerdict)`` runs in worker processes on ``(path, name)`` tasks
    (or on lists of them, returning lists, when ``chunked``);
    ``needs_work(verdict)`` says when a verdict cached from an earlier run is not enough (the
    feature cache uses it to decode and extract features in the same pass as the checks).
    """

    fn: Callable = scan_file
    chunked: bool = False  # fn takes a list of tasks and returns a list of results
    chunk_size: int = 8  # tasks sent to a worker at once
    initializer: Callable | None = None
    initargs: tuple = ()
    needs_work: Callable[[AudioVerdict], bool] = field(default=lambda verdict: False)
    desc: str = "checking audio"
    expected: int = 0  # files expected to need work: with enough, the workers start before the files are listed


def check_dataset(ds: Dataset, *, audio: bool = True, cache_dir: Path | None = None, num_workers: int = 0,
                  progress: bool = False, sample_rate: int | None = None, scan: AudioScan | None = None,
                  stop_early: bool = False) -> CheckReport:
    """Every problem with ``ds``; with ``audio``, each file is decoded (once: verdicts are cached).

    ``stop_early``: when the cheap checks (CSV, labels, paths, missing files) already found an
    error, return without decoding anything.
    """
    problems = list(ds.problems)
    counts = {split: len(ds.split(split)) for split in ds.splits}
    if not audio:
        return CheckReport(problems, counts, audio_checked=False)

    scan = scan or AudioScan()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    verdicts: dict[str, AudioVerdict] = {}
    decodable: list[Clip] = []
    stopped = False
    inventory: Inventory | None = None
    with ExitStack() as stack:
        def pending() -> Iterator[tuple[str, str]]:
            """Files whose cached verdict is missing or not enough; the rest go straight to ``verdicts``."""
            nonlocal stopped, inventory
            # Listed here, inside the task stream: when a pool was started early, its workers start
            # up meanwhile.
            missing, usable = file_problems(ds)
            problems.extend(missing)
            decodable.extend(clip for clip, _ in usable)
            if stop_early and any(p.severity == "error" for p in problems):
                stopped = True
                return  # before the inventory: a cache folder that cannot be written must not hide these
            inventory = stack.enter_context(Inventory(cache_dir / INVENTORY_FILE))
            queued: set[str] = set()
            read_ahead = fsutil.ReadAhead()
            for start in range(0, len(usable), LOOKUP_BLOCK):
                block = usable[start : start + LOOKUP_BLOCK]
                digests = inventory.digests_of([stat for _, stat in block])
                known = inventory.verdicts_of(set(digests.values()))
                for clip, stat in block:
                    verdict = known.get(digests.get(stat.path, ""))
                    if verdict is not None and not scan.needs_work(verdict):
                        verdicts[stat.path] = verdict
                    elif stat.path not in queued:
                        queued.add(stat.path)
                        # 2-4 chunks per worker wait in the pool's queue (parallel_map): their reads overlap the work
                        read_ahead(stat.path, stat.size)
                        yield stat.path, clip.fname

        found: list[tuple[FileStat, AudioVerdict]] = []
        for stat, verdict in parallel_map(scan.fn, pending(), total=len(ds.clips), num_workers=num_workers,
                                          desc=scan.desc, progress=progress, initializer=scan.initializer,
                                          initargs=scan.initargs, chunked=scan.chunked,
                                          chunk_size=scan.chunk_size, expected=scan.expected):
            verdicts[stat.path] = verdict  # results only come for tasks, made once the inventory is open
            if verdict.digest:
                found.append((stat, verdict))
            if len(found) >= 500:
                inventory.record(found)
                found = []
        if inventory is not None:
            inventory.record(found)
    if stopped:
        return CheckReport(problems, counts, audio_checked=False)

    report = CheckReport(problems, counts, audio_checked=True)
    by_digest: dict[str, list[Clip]] = defaultdict(list)
    for clip in decodable:
        verdict = verdicts[str(clip.path)]
        if not verdict.ok:
            error = verdict.error(clip.fname)
            report.problems.append(Problem(verdict.code, error.message, hint=verdict.hint, **_where(clip)))
            continue
        report.audio[clip.key] = verdict.info
        report.digests[clip.key] = verdict.digest
        by_digest[verdict.digest].append(clip)
        if sample_rate and verdict.info.sample_rate < sample_rate:
            report.problems.append(Problem(
                "low-sample-rate", f"{clip.fname} is {verdict.info.sample_rate} Hz, below audio.sample_rate = "
                f"{sample_rate}: it is upsampled and its top band stays empty", severity="warning", **_where(clip)))
    for clips in by_digest.values():
        splits = {c.split for c in clips}
        if len(clips) > 1 and "test" in splits and len(splits) > 1:
            names = ", ".join(f"{c.split}/{c.fname}" for c in clips[:4])
            report.problems.append(Problem("train-test-duplicate", f"identical audio in training and test: {names}",
                                           severity="warning", hint="test scores will be optimistic; remove the copies"))
    return report


def validate(ds: Dataset, *, skip_bad: bool = False, **kwargs) -> tuple[Dataset, CheckReport]:
    """Check ``ds``; return it (without the bad clips if ``skip_bad``) or raise ValidationFailed."""
    report = check_dataset(ds, **kwargs)
    if not report.ok(skip_bad=skip_bad):
        raise ValidationFailed(report)
    return ds.without(report.errors), report

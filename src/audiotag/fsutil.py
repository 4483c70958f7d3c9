"""Atomic file writes: a file either appears complete under its name or not at all.

Every output audiotag produces (cache entries, checkpoints, predictions, submissions, reports) is
written to a temporary file in the same folder and renamed into place, so a killed process or a
full disk never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import AudiotagError

TMP_PREFIX = ".tmp-"
_HOST = socket.gethostname().replace("-", "_")  # "-" separates a temporary name's fields
_counter = itertools.count()
_writes_enabled = True


def set_writes_enabled(enabled: bool) -> None:
    """Turn this process's outputs off (the non-zero ranks of a distributed run compute what rank 0
    computes; only rank 0 may write the shared run folder)."""
    global _writes_enabled
    _writes_enabled = enabled


def writes_enabled() -> bool:
    return _writes_enabled


class OutputError(AudiotagError):
    """An output cannot be written (read-only folder, full disk...)."""


def write_error(path: Path, e: OSError) -> OutputError:
    """Why ``path`` could not be written, with what to do."""
    if e.errno == errno.ENOSPC:
        hint = "the disk is full: free some space (or point the output/cache elsewhere) and run again"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "the folder is not writable: choose another output folder"
    else:
        hint = "choose an output path whose folders are folders (not files) and can be written"
    return OutputError(f"cannot write {path}: {e.strerror or e}", hint=hint)


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before its rename: unique per machine, process and call, and
    ending like ``path`` so writers that pick a format from the suffix (matplotlib, numpy) still do."""
    return path.parent / f"{TMP_PREFIX}{os.getpid()}@{_HOST}-{next(_counter)}-{path.name}"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``."""
    path = Path(path)
    if not _writes_enabled:  # written to a private scratch folder and dropped
        with tempfile.TemporaryDirectory(prefix="audiotag-discard-") as scratch:
            yield Path(scratch) / path.name
        return
    tmp_path = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def check_writable(path: str | Path, *, folder: bool = False, option: str = "--out") -> Path:
    """Fail now, not after the compute, when ``path`` (a file, or a folder with ``folder``) cannot
    be written: it is the wrong kind of thing, or its folder refuses a file. Creates nothing: the
    folders still missing are made by the first write, so a command that fails later leaves none."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder", hint=f"give {option} a folder to write into")
    if not folder and path.is_dir():
        raise OutputError(f"{option} {path} is a folder, not a file", hint=f"give {option} a file name")
    if not _writes_enabled:
        return path
    where = path if folder else path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise OutputError(f"{option} {path}: cannot write under {where}, which is a file",
                          hint=f"choose another {option}, or move {where} away")
    try:
        probe = temporary_path(where / ".write-probe")
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{option} {path}: cannot write in {where} ({e.strerror or e})",
                          hint=f"choose a writable {option}") from None
    return path


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    return Path(path)


def read_ahead(path: str | Path) -> None:
    """Ask the kernel to start reading ``path`` into the page cache now, so a worker that reads it
    later does not wait on the disk. A hint only: any error is ignored, and so are systems without it."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def _cached_at(fd: int, offset: int) -> bool | None:
    """Whether the byte at ``offset`` of open file ``fd`` is in memory: a one-byte read that may
    not wait for the disk. None where that cannot be told (e.g. a filesystem without such reads)."""
    try:
        return os.preadv(fd, [bytearray(1)], max(offset, 0), os.RWF_NOWAIT) == 1
    except BlockingIOError:
        return False
    except OSError:
        return None


def in_page_cache(path: str | Path, offset: int) -> bool | None:
    """Whether the byte at ``offset`` of ``path`` is in memory; None where that cannot be told."""
    if not hasattr(os, "RWF_NOWAIT"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _cached_at(fd, offset)
    finally:
        os.close(fd)


def read_cached(path: str | Path, size: int) -> bytes | None:
    """The ``size`` bytes of ``path`` when they are in memory, so reading them does not wait on the
    disk; None otherwise (not cached, a different size now, an error, or no non-blocking reads).

    Only the last byte is probed (sequential read-ahead brings it in last): a non-blocking read of
    the whole file would need a buffer zeroed first, where this reads into a fresh bytes object.
    """
    if not hasattr(os, "RWF_NOWAIT"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if size and not _cached_at(fd, size - 1):
            return None
        data = os.pread(fd, size, 0)
        if len(data) != size or os.pread(fd, 1, size):  # shorter or longer than its size when it was taken
            return None
    except OSError:
        return None
    finally:
        os.close(fd)
    return data


class ReadAhead:
    """:func:`read_ahead` for a stream of files, skipped while they are already in memory.

    The hints speed up a build from a cold disk but cost the feeding process time when the files are
    already cached (BENCHMARKS.md). Every ``probe_every``-th file is probed (the last byte, which the kernel's sequential
    read-ahead fetches last), and the hints follow what the latest probe found.
    """

    def __init__(self, probe_every: int = 32):
        self.probe_every = probe_every
        self.hinting = True
        self._seen = 0

    def __call__(self, path: str | Path, size: int) -> None:
        if self._seen % self.probe_every == 0:
            self.hinting = in_page_cache(path, size - 1) is not True
        self._seen += 1
        if self.hinting:
            read_ahead(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphaned_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files under ``folder`` whose writer no longer runs (a killed process's
    half-written output; never read, but litter). Files of live processes are left alone, and so
    are other machines' (fold jobs of a cluster share a run folder; their pids mean nothing here)."""
    removed = []
    for path in Path(folder).rglob(f"{TMP_PREFIX}*"):
        pid, _, host = path.name[len(TMP_PREFIX):].split("-", 1)[0].partition("@")
        if host != _HOST or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and not _process_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed

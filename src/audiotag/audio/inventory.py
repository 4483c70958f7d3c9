"""What is known about each audio file, remembered across runs and processes.

Two tables in one SQLite file (safe for several processes at once):

* ``files``: a file's identity on disk (path, size, mtime, inode) -> the digest of its bytes, so an
  unchanged file is never hashed twice;
* ``audio``: digest -> what decoding found (rate, channels, frames, peak) or why it is unusable.

Everything downstream (validation, the feature cache) is keyed by the content digest, so an edited
or replaced file is noticed, and a renamed or copied one is not decoded again.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

from .. import fsutil
from ..errors import AudioError, DataError
from .io import AudioInfo, decode

# Bumped when decode() learns a new check or digests change, so earlier verdicts are re-examined.
CHECK_VERSION = 3  # bumped when a verdict can change for the same bytes (3: levels above +60 dBFS refused)


def digest_bytes(data: bytes) -> str:
    """128 bits of BLAKE3: cryptographic, so distinct files never share an entry, and ~4x faster
    than SHA-256 here (hashing is a tenth of a cold cache build otherwise)."""
    return blake3(data).hexdigest(length=16)


@dataclass(frozen=True)
class FileStat:
    path: str
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path, *, resolved: bool = False) -> "FileStat":
        """``resolved``: ``path`` is already absolute with no links to follow (saves the syscalls)."""
        return cls.from_stat(path if resolved else Path(path).resolve(), os.stat(path))

    @classmethod
    def from_stat(cls, path: Path | str, st: os.stat_result) -> "FileStat":
        """The identity of resolved ``path`` from a stat already taken."""
        return cls(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True)
class AudioVerdict:
    """The outcome of decoding one file's bytes: ``info`` when usable, else the reason."""

    digest: str
    info: AudioInfo | None
    code: str = ""
    detail: str = ""
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.info is not None

    def error(self, name: str) -> AudioError:
        return AudioError(self.detail, code=self.code, path=name, hint=self.hint or None)


def examine(data: bytes, *, name: str) -> tuple[AudioVerdict, tuple | None]:
    """Digest and decode ``data``; returns the verdict and, when usable, ``(samples, rate)``."""
    digest = digest_bytes(data)
    try:
        y, sr, info = decode(data, name=name)
    except AudioError as e:
        return AudioVerdict(digest, None, e.code, e.detail, e.hint or ""), None
    return AudioVerdict(digest, info), (y, sr)


class Inventory:
    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.db_path, timeout=120, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 120000")
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError:
                pass  # some network filesystems refuse WAL; the default journal still works
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,
                                                  inode INTEGER, digest TEXT);
                CREATE TABLE IF NOT EXISTS audio (digest TEXT PRIMARY KEY, check_version INTEGER,
                    sample_rate INTEGER, channels INTEGER, frames INTEGER, subtype TEXT, container TEXT,
                    peak_dbfs REAL, code TEXT, detail TEXT, hint TEXT);
                """
            )
        except (OSError, sqlite3.Error) as e:
            raise DataError(f"cannot open the audio inventory {self.db_path}: {e}",
                            hint="the cache folder must be writable; choose another with --cache-dir or AUDIOTAG_CACHE") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Inventory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def digests_of(self, stats: list[FileStat]) -> dict[str, str]:
        """path -> digest for the files of ``stats`` unchanged since their digest was recorded (one query:
        4,000 single lookups cost ~50 ms of the process that feeds the workers)."""
        rows = self._rows_where("SELECT path, size, mtime_ns, inode, digest FROM files WHERE path",
                                [s.path for s in stats])
        known = {path: (tuple(identity), digest) for path, *identity, digest in rows}
        out = {}
        for s in stats:
            identity, digest = known.get(s.path, (None, None))
            if identity == (s.size, s.mtime_ns, s.inode):
                out[s.path] = digest
        return out

    def verdicts_of(self, digests: set[str]) -> dict[str, AudioVerdict]:
        """digest -> verdict for those of ``digests`` examined by this version of the checks."""
        rows = self._rows_where("SELECT digest, check_version, sample_rate, channels, frames, subtype, container, "
                                "peak_dbfs, code, detail, hint FROM audio WHERE digest", list(digests))
        out = {}
        for digest, version, sr, ch, frames, subtype, container, peak, code, detail, hint in rows:
            if version != CHECK_VERSION:
                continue
            out[digest] = (AudioVerdict(digest, None, code, detail, hint or "") if code else
                           AudioVerdict(digest, AudioInfo(sr, ch, frames, subtype, container, float(peak))))
        return out

    def _rows_where(self, query: str, keys: list[str]) -> list[tuple]:
        """``query`` + `` IN (keys)``, 500 keys a statement (older SQLite allows 999 variables)."""
        rows = []
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            rows += self._db.execute(f"{query} IN ({', '.join('?' * len(part))})", part).fetchall()
        return rows

    def record(self, items: list[tuple[FileStat, AudioVerdict]]) -> None:
        if not items:
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                [(s.path, s.size, s.mtime_ns, s.inode, v.digest) for s, v in items])
            self._db.executemany(
                "INSERT OR REPLACE INTO audio VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(v.digest, CHECK_VERSION,
                  *((v.info.sample_rate, v.info.channels, v.info.frames, v.info.subtype, v.info.container,
                     v.info.peak_dbfs) if v.info else (None,) * 6),
                  v.code or None, v.detail or None, v.hint or None) for _, v in items])


def default_cache_dir() -> Path:
    """``$AUDIOTAG_CACHE``, else ``$XDG_CACHE_HOME/audiotag``, else ``~/.cache/audiotag``."""
    if os.environ.get("AUDIOTAG_CACHE"):
        return Path(os.environ["AUDIOTAG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "audiotag"


def stat_and_read(path: Path, *, wait: bool = True) -> tuple[FileStat, bytes | OSError] | None:
    """A file's identity and bytes, or why they cannot be read (it may have gone since it was listed).

    ``wait=False``: None unless the file is in memory (see :func:`fsutil.read_cached`).
    """
    try:
        stat = FileStat.of(path, resolved=True)  # before reading: a later change must look like a change
    except OSError as e:
        return None if not wait else (FileStat(str(path), -1, -1, -1), e)
    if not wait:
        data = fsutil.read_cached(path, stat.size)
        return None if data is None else (stat, data)
    try:
        return stat, path.read_bytes()
    except OSError as e:
        return stat, e


def unreadable(e: OSError) -> AudioVerdict:
    return AudioVerdict("", None, "unreadable", f"cannot be read ({e.strerror})",
                        "check that the file is still there and readable")


def scan_file(task: tuple[str, str]) -> tuple[FileStat, AudioVerdict]:
    """Worker: ``(path, display name)`` -> its identity and verdict. Never raises for bad audio."""
    stat, data = stat_and_read(Path(task[0]))
    if isinstance(data, OSError):
        return stat, unreadable(data)
    verdict, _ = examine(data, name=task[1])
    return stat, verdict

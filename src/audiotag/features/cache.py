"""The feature cache: features computed once per (settings, audio content, library versions).

Layout under the cache folder::

    inventory.sqlite                    file identity -> content digest -> decode verdict
    features/<key>/meta.json            the settings and versions behind <key>
    features/<key>/index.sqlite         content digest -> (pack, offset, shape, dtype)
    features/<key>/packs/<name>.pack    the raw arrays of the clips one process computed,
                                        [shape=(C, F, T)] each, float16 or float32, 64-byte aligned

``<key>`` hashes the audio and feature settings, this module's version and the versions of the
libraries that compute them; the digest hashes the file's bytes. Changing either builds new
entries and never reads stale ones. Each worker appends the features of a chunk of clips to its
own pack and only then records their entries in the index: one file per worker rather than one per
clip or chunk (creating a file cost 0.05-0.6 ms on this project's disks, as much as a clip's
log-mel, and tens of thousands of small files are slow everywhere). An interrupted build leaves at
most unindexed bytes at the end of a pack (a pack nothing references is deleted once an hour old),
never an index row pointing at missing or partial data. Several processes can build the same cache
at once (at worst computing an entry twice; the first indexed copy is kept, so a location once
handed out stays valid). Entries are read memory-mapped, so datasets larger than RAM train without
loading everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile
import soxr
import torch

from .. import fsutil, mkl
from ..audio.inventory import (AudioVerdict, FileStat, default_cache_dir, digest_bytes, examine, stat_and_read,
                               unreadable)
from ..audio.io import prepare_waveform
from ..config import AudioConfig, Config, FeatureConfig
from ..data.check import AudioScan, CheckReport, check_dataset
from ..data.records import Clip, Dataset
from ..errors import AudiotagError, DataError, ValidationFailed
from .frontend import FrontEnd

# Bumped whenever this package computes or stores features differently for the same settings
# (what each bump changed is in git's history and BENCHMARKS.md).
FEATURE_CODE_VERSION = 7
STALE_PACK_S = 3600
ALIGN = 64  # bytes: every array starts on a cache line (and a SIMD-friendly address)
CACHE_DIR_HINT = "the cache folder must be writable; choose another with --cache-dir or AUDIOTAG_CACHE"
_pack_counter = itertools.count()


def library_versions() -> dict[str, str]:
    """The libraries behind the features, and how MKL picks its kernels (the paths round differently)."""
    return {"torch": torch.__version__.split("+")[0], "numpy": np.__version__, "soxr": soxr.__version__,
            "soundfile": soundfile.__version__, "libsndfile": soundfile.__libsndfile_version__,
            "mkl_dispatch": mkl.dispatch()}


def feature_key(audio: AudioConfig, features: FeatureConfig) -> str:
    payload = {"audio": dataclasses.asdict(audio), "features": dataclasses.asdict(features),
               "code": FEATURE_CODE_VERSION, "versions": library_versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class Entry(NamedTuple):
    """Where one clip's features are: ``nbytes`` from ``offset`` in ``pack``."""

    pack: str
    offset: int
    shape: tuple[int, ...]
    dtype: str
    checksum: str  # BLAKE3 of the entry's bytes: damage inside a pack is found, not served

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


COLUMNS = "digest, pack, offset, shape, dtype, checksum"


def _entry(row: tuple) -> Entry:
    """An :class:`Entry` from an index row (``COLUMNS``, digest first)."""
    _, pack, offset, shape, dtype, checksum = row
    return Entry(pack, offset, tuple(json.loads(shape)), dtype, checksum or "")


class FeatureStore:
    """Cached features of one (audio, features) setting, addressed by audio content digest."""

    def __init__(self, cache_dir: str | Path, audio: AudioConfig, features: FeatureConfig):
        self.cache_dir = Path(cache_dir)
        self.audio, self.features = audio, features
        self.key = feature_key(audio, features)
        self.dir = self.cache_dir / "features" / self.key
        self.packs = self.dir / "packs"
        self.dtype = np.dtype(features.cache_dtype)
        self._entries: dict[str, Entry] = {}
        self._pack_sizes: dict[str, int] = {}
        self._pack: tuple[int, str] | None = None  # (pid, name) of the pack this process appends to
        self._verified: set[tuple[str, int]] = set()  # (pack, offset) of entries whose bytes checked out
        self.damaged: list[str] = []  # digests of entries found damaged by this process (then recomputed)

    def connect(self) -> sqlite3.Connection:
        """A connection to the index. Each process opens its own: SQLite must not be used (or
        closed) on both sides of a fork."""
        path = self.dir / "index.sqlite"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=120, isolation_level=None)
            db.execute("PRAGMA busy_timeout = 120000")
            try:
                if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() == "wal":
                    # No fsync per commit: WAL keeps the index consistent through a crash, and entries a
                    # power cut rolls back are just rebuilt.
                    db.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.OperationalError:
                pass  # some network filesystems refuse WAL; the default journal still works
            db.execute("CREATE TABLE IF NOT EXISTS entries (digest TEXT PRIMARY KEY, pack TEXT, offset INTEGER, "
                       "shape TEXT, dtype TEXT, checksum TEXT)")
        except (OSError, sqlite3.Error) as e:
            raise DataError(f"cannot open the feature index {path}: {e}", hint=CACHE_DIR_HINT) from None
        return db

    @contextmanager
    def _index(self) -> Iterator[sqlite3.Connection]:
        db = self.connect()
        try:
            yield db
        finally:
            db.close()

    def refresh(self) -> None:
        """Read the whole index (one query; later lookups of known digests touch no database)."""
        with self._index() as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM entries").fetchall()
        self._entries = {row[0]: _entry(row) for row in rows}
        self._pack_sizes.clear()

    def ensure(self) -> None:
        meta = self.dir / "meta.json"
        if not meta.exists():
            try:
                fsutil.write_text(meta, json.dumps({
                    "key": self.key, "audio": dataclasses.asdict(self.audio), "features": dataclasses.asdict(self.features),
                    "code_version": FEATURE_CODE_VERSION, "versions": library_versions()}, indent=2))
            except AudiotagError as e:
                raise DataError(f"cannot create the feature cache in {self.cache_dir}: {e.message}",
                                hint=CACHE_DIR_HINT) from None
        now = time.time()
        files = list(self.packs.glob("*")) if self.packs.is_dir() else []
        self.refresh()  # after listing: a pack indexed in between is in the index
        referenced = {e.pack for e in self._entries.values()}
        for path in files:
            if path.name in referenced:
                continue
            try:
                # a pack none of whose entries was indexed: its build was killed first (a fresh one
                # may be about to be indexed by a live process)
                if now - path.stat().st_mtime > STALE_PACK_S:
                    path.unlink()
            except FileNotFoundError:
                pass

    def __len__(self) -> int:
        """Entries indexed at the last :meth:`refresh`."""
        return len(self._entries)

    def entries(self) -> dict[str, Entry]:
        """Every indexed entry, read afresh."""
        self.refresh()
        return dict(self._entries)

    def entry(self, digest: str) -> Entry | None:
        found = self._entries.get(digest)
        if found is None:
            with self._index() as db:
                row = db.execute(f"SELECT {COLUMNS} FROM entries WHERE digest = ?", (digest,)).fetchone()
            if row is None:
                return None
            found = self._entries[digest] = _entry(row)
        return found

    def has(self, digest: str) -> bool:
        """True when an entry was indexed at the last :meth:`refresh`, its pack holds all of its
        bytes and they match its checksum (an entry another process adds meanwhile is at worst
        computed twice). A damaged entry is listed in :attr:`damaged`."""
        entry = self._entries.get(digest)
        if entry is None or not self._complete(entry):
            return False
        if self._sound(entry):
            return True
        self.damaged.append(digest)
        return False

    def _complete(self, entry: Entry) -> bool:
        size = self._pack_sizes.get(entry.pack)
        if size is None:
            try:
                size = self._pack_sizes[entry.pack] = (self.packs / entry.pack).stat().st_size
            except OSError:
                return False
        return entry.offset + entry.nbytes <= size

    def _sound(self, entry: Entry) -> bool:
        """Whether the entry's bytes match its checksum (read once per process and entry)."""
        if (entry.pack, entry.offset) in self._verified:
            return True
        try:
            with open(self.packs / entry.pack, "rb") as f:
                f.seek(entry.offset)
                data = f.read(entry.nbytes)
        except OSError:
            return False
        if digest_bytes(data) != entry.checksum:
            return False
        self._verified.add((entry.pack, entry.offset))
        return True

    def _intact(self, entry: Entry) -> bool:
        return self._complete(entry) and self._sound(entry)

    def load(self, digest: str, *, mmap: bool = True) -> np.ndarray:
        """``[shape=(C, F, T)]`` features of one clip (memory-mapped, read-only)."""
        entry = self.entry(digest)
        path = self.packs / entry.pack if entry else self.dir
        try:
            if entry is None:
                raise ValueError(f"no entry for content {digest}")
            if mmap:
                return np.memmap(path, dtype=entry.dtype, mode="r", offset=entry.offset, shape=entry.shape)
            data = np.fromfile(path, dtype=entry.dtype, count=int(np.prod(entry.shape)), offset=entry.offset)
            if data.size != int(np.prod(entry.shape)):
                raise ValueError("the pack is shorter than its index says")
            return data.reshape(entry.shape)
        except (OSError, ValueError) as e:
            raise AudiotagError(f"cache entry {digest} in {path} is missing or damaged ({e})",
                                hint="run `audiotag features` again: missing entries are rebuilt") from None

    def write(self, items: list[tuple[str, np.ndarray]], *, db: sqlite3.Connection | None = None) -> None:
        """Append ``(digest, features)`` pairs to this process's pack, then index them (through
        ``db``, an open :meth:`connect`-ion, when given)."""
        if not items or not fsutil.writes_enabled():
            return
        if self._pack is None or self._pack[0] != os.getpid():  # one pack per process and store
            self._pack = (os.getpid(), f"{os.getpid()}-{time.time_ns()}-{next(_pack_counter)}.pack")
        name = self._pack[1]
        path = self.packs / name
        rows = []
        try:
            self.packs.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                start = offset = f.tell()
                for digest, features in items:
                    array = np.ascontiguousarray(features, dtype=self.dtype)
                    pad = -offset % ALIGN
                    f.write(b"\0" * pad)
                    offset += pad
                    f.write(array.data)
                    rows.append((digest, name, offset, json.dumps(array.shape), array.dtype.str,
                                 digest_bytes(array.reshape(-1).view(np.uint8))))
                    offset += array.nbytes
        except OSError as e:
            raise fsutil.write_error(path, e) from None  # a full disk says so
        if not self._index_rows(rows, db):
            os.truncate(path, start)  # all computed twice: nobody will read these bytes
            self._pack_sizes.pop(name, None)  # the size just cached for this pack's earlier entries

    def _index_rows(self, rows: list[tuple], db: sqlite3.Connection | None) -> list[tuple]:
        """Index ``rows`` (written and complete); returns those that were new."""
        with self._index() if db is None else nullcontext(db) as db, db:
            db.execute("BEGIN IMMEDIATE")
            # An intact entry another process indexed meanwhile stays: readers may hold its location,
            # so a pack, once referenced, stays referenced (unless damaged).
            found = db.execute(f"SELECT {COLUMNS} FROM entries WHERE digest IN ({', '.join('?' * len(rows))})",
                               [r[0] for r in rows]).fetchall()
            kept = {row[0]: _entry(row) for row in found}
            self._pack_sizes.clear()
            kept = {d: e for d, e in kept.items() if self._intact(e)}
            new = [r for r in rows if r[0] not in kept]
            db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)", new)
        for row in new:
            self._entries[row[0]] = _entry(row)
        self._entries.update(kept)
        return new


@dataclass
class FeatureSet:
    """Features of a validated dataset: every clip of ``dataset`` has an entry in ``store``."""

    dataset: Dataset
    store: FeatureStore
    digests: dict[tuple[str, str], str]
    report: CheckReport

    def load(self, clip: Clip, *, mmap: bool = True) -> np.ndarray:
        return self.store.load(self.digests[clip.key], mmap=mmap)

    def n_frames(self, clip: Clip) -> int:
        return int(self.load(clip).shape[-1])


# ----------------------------------------------------------------------------- workers

_WORKER: dict = {}
_INHERITED: list = []


def _init_worker(config: dict, cache_dir: str) -> None:
    audio, features = AudioConfig(**config["audio"]), FeatureConfig(**config["features"])
    _WORKER["store"] = FeatureStore(cache_dir, audio, features)
    _WORKER["frontend"] = FrontEnd(audio, features).eval()
    # Reading a file is I/O wait (~1 ms per clip on this project's network disk): threads fetch the
    # chunk's next files while this process computes features, so the wait overlaps the work.
    _WORKER["reader"] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="audiotag-read")
    # A process's first clip pays MKL's and OpenBLAS's set-up (~13 ms): paid here, while the
    # parent still lists the files when the pool was started early.
    compute_features(np.zeros(audio.sample_rate, dtype=np.float32), _WORKER["frontend"])


def compute_features(waveform: np.ndarray, frontend: FrontEnd, *, dtype: str = "float32") -> np.ndarray:
    """``[shape=(n,)]`` waveform -> ``[shape=(C, F, T)]`` features (torch casts to float16 ~10x faster than numpy).

    One clip per call and one torch thread, on purpose: cached features must not depend on how
    work was split. In a padded batch a clip's values can differ in the last bit with its
    batch-mates, and MKL splits one long FFT (the CQT's whole-clip one) differently over several
    threads than on the single thread of a pool worker.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~0.2 us, against ~1 ms for a clip's features
    try:
        with torch.inference_mode():
            return frontend(torch.from_numpy(waveform)[None])[0].to(getattr(torch, dtype)).numpy()
    finally:
        torch.set_num_threads(threads)


def _extract(tasks: list[tuple[str, str]]) -> list[tuple[FileStat, AudioVerdict]]:
    """Worker: decode and check a chunk of files, and cache the features of the usable ones.

    The caller only sends files whose cache entry is missing.
    """
    store: FeatureStore = _WORKER["store"]
    audio = store.audio
    results, computed = [], []
    contents = _contents([Path(path) for path, _ in tasks])
    for (_, name), (stat, data) in zip(tasks, contents):
        if isinstance(data, OSError):
            results.append((stat, unreadable(data)))
            continue
        verdict, decoded = examine(data, name=name)
        if decoded is not None:
            y = prepare_waveform(*decoded, sample_rate=audio.sample_rate, quality=audio.resample_quality,
                                 trim_top_db=audio.trim_top_db if audio.trim_silence else None)
            features = compute_features(y, _WORKER["frontend"], dtype=store.features.cache_dtype)
            if np.isfinite(features).all():
                computed.append((verdict.digest, features))
            else:  # caught here, per clip, never cached: a NaN would poison every score downstream
                verdict = AudioVerdict(verdict.digest, None, "nonfinite-features",
                                       "its features came out NaN or infinite",
                                       "the audio holds values the front-end cannot take; re-export the file")
        results.append((stat, verdict))
    if computed:
        store.write(computed, db=_worker_index(store))
    return results


def _contents(paths: list[Path]) -> Iterator[tuple[FileStat, bytes | OSError]]:
    """``stat_and_read`` of each path, in order: here while the files are in memory, and from the
    first that is not, by the reader threads, which fetch the rest while this process computes.
    Reading in this thread when nothing waits on the disk spares the threads' hand-offs."""
    for i, path in enumerate(paths):
        got = stat_and_read(path, wait=False)
        if got is None:
            yield from _WORKER["reader"].map(stat_and_read, paths[i:])
            return
        yield got


def _worker_index(store: FeatureStore) -> sqlite3.Connection:
    """This process's connection to ``store``'s index, kept open between chunks."""
    held = _WORKER.get("index")
    if held is None or held[:2] != (os.getpid(), store.dir):
        if held is not None and held[0] == os.getpid():
            held[2].close()
        elif held is not None:
            _INHERITED.append(held)  # the parent's, inherited by fork: never used or closed here
        held = _WORKER["index"] = (os.getpid(), store.dir, store.connect())
    return held[2]


def build_features(ds: Dataset, config: Config, *, cache_dir: str | Path | None = None, splits: tuple[str, ...] | None = None,
                   skip_bad: bool | None = None, progress: bool = True) -> FeatureSet:
    """Validate ``ds`` and make sure every usable clip of ``splits`` (default: all) is cached.

    Cheap checks (CSV rows, labels, paths, missing files) run first and stop before any decoding
    unless ``skip_bad``. Files are then decoded once, in parallel: the decode both checks the
    audio and feeds the front-end. Raises :class:`ValidationFailed` listing every problem when
    bad clips remain and ``skip_bad`` is off.
    """
    skip_bad = config.data.skip_bad if skip_bad is None else skip_bad
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if splits is not None:
        unknown = [s for s in splits if s not in ds.splits]
        if unknown:
            raise DataError(f"no split named {', '.join(map(repr, unknown))} in this dataset",
                            hint=f"its splits are {', '.join(ds.splits) or 'none'}")
        ds = dataclasses.replace(ds, clips=[c for c in ds.clips if c.split in splits],
                                 audio_dirs={s: d for s, d in ds.audio_dirs.items() if s in splits})
    store = FeatureStore(cache_dir, config.audio, config.features)
    store.ensure()
    # 32 clips per chunk (one index transaction and one message each way): fewer round trips, and a
    # progress bar that still moves every ~50 ms
    scan = AudioScan(fn=_extract, chunked=True, chunk_size=32, initializer=_init_worker,
                     initargs=(config.to_dict(), str(cache_dir)),
                     needs_work=lambda verdict: verdict.ok and not store.has(verdict.digest), desc="features",
                     expected=len(ds.clips) - len(store))
    report = check_dataset(ds, cache_dir=cache_dir, num_workers=config.data.num_workers, progress=progress,
                           sample_rate=config.audio.sample_rate, scan=scan, stop_early=not skip_bad)
    if not report.ok(skip_bad=skip_bad):
        raise ValidationFailed(report)
    store.refresh()  # the entries the workers just wrote
    if store.damaged:
        names = {d: f"{split}/{fname}" for (split, fname), d in report.digests.items()}
        damaged = sorted({names.get(d, d) for d in store.damaged})
        print(f"audiotag: warning: {len(damaged)} damaged feature-cache entr{'ies' if len(damaged) != 1 else 'y'} "
              f"in {store.dir} recomputed: {', '.join(damaged[:10])}" + (" ..." if len(damaged) > 10 else ""),
              file=sys.stderr, flush=True)
    kept = ds.without(report.errors)
    return FeatureSet(dataset=kept, store=store, digests={c.key: report.digests[c.key] for c in kept.clips},
                      report=report)

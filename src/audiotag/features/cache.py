"""The feature cache: features computed once per (settings, audio content, library versions).

Layout under the cache folder::

    inventory.sqlite                    file identity -> content digest -> decode verdict
    features/<key>/meta.json            the settings and versions behind <key>
    features/<key>/<dd>/<digest>.npy    one clip, [shape=(C, F, T)], float16 or float32

``<key>`` hashes the audio and feature settings, this module's version and the versions of the
libraries that compute them; ``<digest>`` hashes the file's bytes. Changing either builds new
entries and never reads stale ones. Entries are written to a temporary file and renamed, so an
interrupted build leaves nothing half-written under a real name, and several processes can build
the same cache at once (at worst computing an entry twice). Entries are read memory-mapped, so
datasets larger than RAM train without loading everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from .. import fsutil
from ..audio.inventory import AudioVerdict, FileStat, default_cache_dir, examine
from ..audio.io import prepare_waveform
from ..config import AudioConfig, Config, FeatureConfig
from ..data.check import AudioScan, CheckReport, check_dataset
from ..data.records import Clip, Dataset
from ..errors import AudiotagError, ValidationFailed
from .frontend import FrontEnd

# Bumped whenever this package computes features differently for the same settings.
FEATURE_CODE_VERSION = 1
STALE_TMP_S = 3600


def library_versions() -> dict[str, str]:
    return {"torch": torch.__version__.split("+")[0], "numpy": np.__version__, "soxr": soxr.__version__,
            "soundfile": soundfile.__version__, "libsndfile": soundfile.__libsndfile_version__}


def feature_key(audio: AudioConfig, features: FeatureConfig) -> str:
    payload = {"audio": dataclasses.asdict(audio), "features": dataclasses.asdict(features),
               "code": FEATURE_CODE_VERSION, "versions": library_versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class FeatureStore:
    """Cached features of one (audio, features) setting, addressed by audio content digest."""

    def __init__(self, cache_dir: str | Path, audio: AudioConfig, features: FeatureConfig):
        self.cache_dir = Path(cache_dir)
        self.audio, self.features = audio, features
        self.key = feature_key(audio, features)
        self.dir = self.cache_dir / "features" / self.key
        self.dtype = np.dtype(features.cache_dtype)

    def ensure(self) -> None:
        meta = self.dir / "meta.json"
        if not meta.exists():
            fsutil.write_text(meta, json.dumps({
                "key": self.key, "audio": dataclasses.asdict(self.audio), "features": dataclasses.asdict(self.features),
                "code_version": FEATURE_CODE_VERSION, "versions": library_versions()}, indent=2))
        now = time.time()
        for tmp in self.dir.glob(f"*/{fsutil.TMP_PREFIX}*"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_S:  # left by a killed process
                    tmp.unlink()
            except FileNotFoundError:
                pass

    def path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npy"

    def has(self, digest: str) -> bool:
        """True when a complete entry exists (its size matches its header)."""
        path = self.path(digest)
        try:
            with open(path, "rb") as f:
                fmt = np.lib.format
                version = fmt.read_magic(f)
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read_header(f)
                expected = f.tell() + int(np.prod(shape)) * dtype.itemsize
            return path.stat().st_size == expected
        except (OSError, ValueError):
            return False

    def load(self, digest: str, *, mmap: bool = True) -> np.ndarray:
        """``[shape=(C, F, T)]`` features of one clip (memory-mapped, read-only)."""
        path = self.path(digest)
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise AudiotagError(f"cache entry {path} is missing or damaged ({e})",
                                hint="run `audiotag features` again: missing entries are rebuilt") from None

    def write(self, digest: str, features: np.ndarray) -> None:
        fsutil.save_npy(self.path(digest), np.ascontiguousarray(features, dtype=self.dtype))


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


def _init_worker(config: dict, cache_dir: str) -> None:
    audio, features = AudioConfig(**config["audio"]), FeatureConfig(**config["features"])
    _WORKER["store"] = FeatureStore(cache_dir, audio, features)
    _WORKER["frontend"] = FrontEnd(audio, features).eval()
    # Reading a file is I/O wait (~1 ms per clip on this project's network disk): threads fetch the
    # chunk's next files while this process computes features, so the wait overlaps the work.
    _WORKER["reader"] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="audiotag-read")


def _read(path: Path) -> tuple[FileStat, bytes | OSError]:
    stat = FileStat.of(path, resolved=True)  # before reading: a later change must look like a change
    try:
        return stat, path.read_bytes()
    except OSError as e:
        return stat, e


def compute_features(waveform: np.ndarray, frontend: FrontEnd, *, dtype: str = "float32") -> np.ndarray:
    """``[shape=(n,)]`` waveform -> ``[shape=(C, F, T)]`` features (torch casts to float16 ~10x faster than numpy).

    One clip per call on purpose: in a padded batch a clip's values can differ in the last bit
    with its batch-mates, and cached features must not depend on how work was split.
    """
    with torch.inference_mode():
        return frontend(torch.from_numpy(waveform)[None])[0].to(getattr(torch, dtype)).numpy()


def _extract(tasks: list[tuple[str, str]]) -> list[tuple[FileStat, AudioVerdict]]:
    """Worker: decode and check a chunk of files, and cache the features of the usable ones.

    The caller only sends files whose cache entry is missing.
    """
    store: FeatureStore = _WORKER["store"]
    audio = store.audio
    results = []
    paths = [Path(path) for path, _ in tasks]
    contents = _WORKER["reader"].map(_read, paths)
    for (_, name), (stat, data) in zip(tasks, contents):
        if isinstance(data, OSError):
            e = data
            results.append((stat, AudioVerdict("", None, "unreadable", f"cannot be read ({e.strerror})",
                                               "check the file's permissions")))
            continue
        verdict, decoded = examine(data, name=name)
        results.append((stat, verdict))
        if decoded is not None:
            y = prepare_waveform(*decoded, sample_rate=audio.sample_rate, quality=audio.resample_quality,
                                 trim_top_db=audio.trim_top_db if audio.trim_silence else None)
            store.write(verdict.digest, compute_features(y, _WORKER["frontend"], dtype=store.features.cache_dtype))
    return results


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
        ds = dataclasses.replace(ds, clips=[c for c in ds.clips if c.split in splits],
                                 audio_dirs={s: d for s, d in ds.audio_dirs.items() if s in splits})
    store = FeatureStore(cache_dir, config.audio, config.features)
    store.ensure()
    scan = AudioScan(fn=_extract, chunked=True, initializer=_init_worker, initargs=(config.to_dict(), str(cache_dir)),
                     needs_work=lambda verdict: verdict.ok and not store.has(verdict.digest), desc="features")
    report = check_dataset(ds, cache_dir=cache_dir, num_workers=config.data.num_workers, progress=progress,
                           sample_rate=config.audio.sample_rate, scan=scan, stop_early=not skip_bad)
    if not report.ok(skip_bad=skip_bad):
        raise ValidationFailed(report)
    kept = ds.without(report.errors)
    return FeatureSet(dataset=kept, store=store, digests={c.key: report.digests[c.key] for c in kept.clips},
                      report=report)

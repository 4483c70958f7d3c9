"""From cached features to training batches and inference windows.

:class:`ClipBank` holds the (memory-mapped) features of a list of clips and cuts fixed-length
pieces out of them, padding short clips by wrapping or with the floor value. :class:`CropSampler`
decides which clips and which crops make each training batch; its choices are a pure function of
(seed, fold, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..data.records import Clip
from ..features.cache import FeatureSet


class ClipBank:
    """Features ``(C, F, T_i)`` of a list of clips, in order, with their targets ``(n, K)``."""

    def __init__(self, arrays: list[np.ndarray], targets: np.ndarray | None = None):
        self.arrays = arrays
        self.targets = targets
        self.lengths = np.array([a.shape[-1] for a in self.arrays])
        first = self.arrays[0] if self.arrays else None
        self.channels, self.bands = (first.shape[0], first.shape[1]) if first is not None else (0, 0)

    @classmethod
    def from_features(cls, features: FeatureSet, clips: list[Clip], targets: np.ndarray | None = None) -> "ClipBank":
        return cls([features.load(c) for c in clips], targets)  # memory-mapped: nothing is read yet

    def __len__(self) -> int:
        return len(self.arrays)

    def piece(self, i: int, start: int, length: int, *, pad_mode: str = "wrap") -> np.ndarray:
        """``length`` frames of clip ``i`` from ``start`` (float32 ``(C, F, length)``).

        A clip shorter than ``length`` is repeated (``wrap``, starting ``start`` frames in) or
        placed at ``start`` within a crop filled with the clip's floor value (``constant``).
        """
        a = self.arrays[i]
        n = a.shape[-1]
        if n >= length:
            return np.asarray(a[..., start : start + length], dtype=np.float32)
        out = np.empty((a.shape[0], a.shape[1], length), dtype=np.float32)
        clip = np.asarray(a, dtype=np.float32)
        if pad_mode == "wrap":
            reps = -(-(length + start) // n)
            out[:] = np.tile(clip, (1, 1, reps))[..., start % n : start % n + length]
        else:
            out[:] = clip.min()
            start = min(start, length - n)
            out[..., start : start + n] = clip
        return out


def class_balanced_weights(targets: np.ndarray) -> np.ndarray:
    """Sampling weight per clip: the mean inverse frequency of its labels (multi-label aware)."""
    counts = targets.sum(0)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    w = (targets * inverse).sum(1) / np.maximum(targets.sum(1), 1)
    w = np.where(w > 0, w, inverse[inverse > 0].min() if (inverse > 0).any() else 1.0)
    return w / w.sum()


@dataclass
class CropSampler:
    """Batches of random crops. With ``noisy`` (a bool per clip) and ``noisy_fraction``, every batch
    holds that share of noisy clips and the rest curated; an epoch is one pass over the curated ones."""

    bank: ClipBank
    crop_frames: int
    batch_size: int
    seed: int
    stream: int = 0  # e.g. the fold: different folds get different (but fixed) batch orders
    pad_mode: str = "wrap"
    balanced: bool = False
    noisy: np.ndarray | None = None
    noisy_fraction: float = 0.0

    def __post_init__(self):
        mask = np.zeros(len(self.bank), bool) if self.noisy is None else np.asarray(self.noisy, bool)
        self._noisy_idx, self._curated_idx = np.flatnonzero(mask), np.flatnonzero(~mask)
        mixing = self.noisy_fraction > 0 and len(self._noisy_idx) and len(self._curated_idx)
        self._per_batch_noisy = max(1, int(round(self.batch_size * self.noisy_fraction))) if mixing else 0
        if self._per_batch_noisy >= self.batch_size:
            self._per_batch_noisy = self.batch_size - 1

    @property
    def batches_per_epoch(self) -> int:
        if self._per_batch_noisy:
            return max(1, len(self._curated_idx) // (self.batch_size - self._per_batch_noisy))
        return max(1, len(self.bank) // self.batch_size)

    def _order(self, rng: np.random.Generator, idx: np.ndarray) -> np.ndarray:
        if self.balanced:
            return rng.choice(idx, size=len(idx), replace=True, p=class_balanced_weights(self.bank.targets[idx]))
        return rng.permutation(idx)

    def _batches(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        if not self._per_batch_noisy:
            order, size = self._order(rng, np.arange(len(self.bank))), min(self.batch_size, len(self.bank))
            for b in range(self.batches_per_epoch):
                yield order[b * size : (b + 1) * size]
            return
        n_cur = self.batch_size - self._per_batch_noisy
        curated = self._order(rng, self._curated_idx)
        need = self.batches_per_epoch * self._per_batch_noisy
        noisy = np.concatenate([rng.permutation(self._noisy_idx) for _ in range(-(-need // len(self._noisy_idx)))])
        for b in range(self.batches_per_epoch):
            yield np.concatenate([curated[b * n_cur : (b + 1) * n_cur],
                                  noisy[b * self._per_batch_noisy : (b + 1) * self._per_batch_noisy]])

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch: ``x (B, C, F, crop_frames)`` float32, ``y (B, K)`` float32."""
        rng = np.random.default_rng([self.seed, self.stream, epoch])
        for idx in self._batches(rng):
            starts = [int(rng.integers(0, max(1, self.bank.lengths[i] - self.crop_frames + 1))) if
                      self.bank.lengths[i] >= self.crop_frames else int(rng.integers(0, self.bank.lengths[i]))
                      for i in idx]
            x = np.stack([self.bank.piece(i, s, self.crop_frames, pad_mode=self.pad_mode) for i, s in zip(idx, starts)])
            yield torch.from_numpy(x), torch.from_numpy(self.bank.targets[idx].astype(np.float32))


def prefetch(batches: Iterable, *, depth: int = 3, pin_memory: bool = False) -> Iterator:
    """The same batches, made by a background thread up to ``depth`` ahead of the consumer, so a GPU
    does not wait for crops to be cut from the cache; ``pin_memory`` page-locks tensors so their
    copies to the GPU are asynchronous. An exception in the thread is raised to the consumer; a
    consumer that stops early stops the thread."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for batch in batches:
                if pin_memory:
                    batch = tuple(t.pin_memory() for t in batch)
                if not put(batch):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)

    worker = threading.Thread(target=produce, daemon=True, name="audiotag-prefetch")
    worker.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def window_starts(n_frames: int, window: int, hop: int, *, offset: int = 0) -> list[int]:
    """Start frames of sliding windows covering ``n_frames``: every ``hop`` from ``offset``, and the
    last window aligned to the end so no frame is left out. A short clip gets one window."""
    if n_frames < window:  # padded to the window: an offset moves where the wrap begins
        return [offset % max(n_frames, 1)] if offset else [0]
    if n_frames == window:
        return [0]
    last = n_frames - window
    starts = list(range(offset % hop if offset else 0, last + 1, hop))
    if not starts or starts[-1] != last:
        starts.append(last)
    return starts

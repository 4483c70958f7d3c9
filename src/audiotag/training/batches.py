"""Training batches from cached features.

:class:`CropSampler` decides which clips and which crops make each training batch; its choices are
a pure function of (seed, fold, epoch), so a resumed run sees exactly the batches an uninterrupted
one would. :func:`prefetch` makes them ahead of a GPU.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..features.bank import ClipBank


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
    holds that share of noisy clips and the rest curated; an epoch is one pass over the curated ones.
    ``test_rows`` (a subset of the noisy rows: pseudo-labelled test clips) with ``test_fraction``
    draws those rows as their own share of each batch instead of among the noisy ones."""

    bank: ClipBank
    crop_frames: int
    batch_size: int
    seed: int
    stream: int = 0  # e.g. the fold: different folds get different (but fixed) batch orders
    pad_mode: str = "wrap"
    balanced: bool = False
    noisy: np.ndarray | None = None
    noisy_fraction: float = 0.0
    test_rows: np.ndarray | None = None
    test_fraction: float = 0.0
    crop_energy: float = 0.0  # > 0: a crop's start drawn with weight (its mean power) ** crop_energy
    energy_channel: int = 0  # the channel in dB of a power that weighs them

    def __post_init__(self):
        self._crop_cdfs: dict[int, np.ndarray] = {}
        mask = np.zeros(len(self.bank), bool) if self.noisy is None else np.asarray(self.noisy, bool)
        test = (np.asarray(self.test_rows, bool) & mask if self.test_rows is not None and self.test_fraction > 0
                else np.zeros(len(self.bank), bool))
        self._curated_idx = np.flatnonzero(~mask)
        self._noisy_idx, self._test_idx = np.flatnonzero(mask & ~test), np.flatnonzero(test)

        def per_batch(idx: np.ndarray, fraction: float) -> int:
            mixing = fraction > 0 and len(idx) and len(self._curated_idx)
            return max(1, int(round(self.batch_size * fraction))) if mixing else 0

        self._per_batch_noisy = per_batch(self._noisy_idx, self.noisy_fraction)
        self._per_batch_test = per_batch(self._test_idx, self.test_fraction)
        while self._per_batch_noisy + self._per_batch_test >= self.batch_size:  # keep one curated clip
            if self._per_batch_test > self._per_batch_noisy:
                self._per_batch_test -= 1
            else:
                self._per_batch_noisy -= 1

    @property
    def _per_batch_extra(self) -> int:
        return self._per_batch_noisy + self._per_batch_test

    @property
    def batches_per_epoch(self) -> int:
        if self._per_batch_extra:
            return max(1, len(self._curated_idx) // (self.batch_size - self._per_batch_extra))
        return max(1, len(self.bank) // self.batch_size)

    def _order(self, rng: np.random.Generator, idx: np.ndarray) -> np.ndarray:
        if self.balanced:
            return rng.choice(idx, size=len(idx), replace=True, p=class_balanced_weights(self.bank.targets[idx]))
        return rng.permutation(idx)

    def _cycled(self, rng: np.random.Generator, idx: np.ndarray, per_batch: int) -> np.ndarray:
        """Enough shuffled passes over ``idx`` for ``per_batch`` rows in every batch of the epoch."""
        if not per_batch:
            return idx[:0]
        need = self.batches_per_epoch * per_batch
        return np.concatenate([rng.permutation(idx) for _ in range(-(-need // len(idx)))])

    def _batches(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        if not self._per_batch_extra:
            order, size = self._order(rng, np.arange(len(self.bank))), min(self.batch_size, len(self.bank))
            for b in range(self.batches_per_epoch):
                yield order[b * size : (b + 1) * size]
            return
        n_cur, n_noisy, n_test = self.batch_size - self._per_batch_extra, self._per_batch_noisy, self._per_batch_test
        curated = self._order(rng, self._curated_idx)
        noisy = self._cycled(rng, self._noisy_idx, n_noisy)
        test = self._cycled(rng, self._test_idx, n_test)
        for b in range(self.batches_per_epoch):
            yield np.concatenate([curated[b * n_cur : (b + 1) * n_cur], noisy[b * n_noisy : (b + 1) * n_noisy],
                                  test[b * n_test : (b + 1) * n_test]])

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch: ``x (B, C, F, crop_frames)`` float32, ``y (B, K)`` float32."""
        rng = np.random.default_rng([self.seed, self.stream, epoch])
        for idx in self._batches(rng):
            starts = [self._start(rng, int(i)) for i in idx]
            x = np.stack([self.bank.piece(i, s, self.crop_frames, pad_mode=self.pad_mode) for i, s in zip(idx, starts)])
            yield torch.from_numpy(x), torch.from_numpy(self.bank.targets[idx].astype(np.float32))

    def _start(self, rng: np.random.Generator, i: int) -> int:
        n = int(self.bank.lengths[i])
        if n < self.crop_frames:  # a short clip is wrapped: its start only moves where the repeat begins
            return int(rng.integers(0, n))
        if self.crop_energy <= 0:
            return int(rng.integers(0, n - self.crop_frames + 1))
        return min(int(np.searchsorted(self._crop_cdf(i), rng.random(), side="right")), n - self.crop_frames)

    def _crop_cdf(self, i: int) -> np.ndarray:
        """Cumulative start weights of clip ``i``: in a long clip with a short event, most uniform
        crops hold only the background yet carry the event's label; weighting them by their power
        makes such crops rarer."""
        if i not in self._crop_cdfs:
            db = np.asarray(self.bank.arrays[i][self.energy_channel], np.float64)
            power = np.power(10.0, (db - db.max()) / 10).mean(axis=0)  # per frame, relative to the loudest bin
            crops = np.convolve(power, np.ones(self.crop_frames), mode="valid") / self.crop_frames
            weights = np.exp(self.crop_energy * np.log(np.maximum(crops / crops.max(), 1e-30)))
            cdf = np.cumsum(weights)
            self._crop_cdfs[i] = cdf / cdf[-1]
        return self._crop_cdfs[i]


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

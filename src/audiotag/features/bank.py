"""The cached features of a list of clips, cut into fixed-length pieces for training and inference.

:class:`ClipBank` holds the (memory-mapped) features of a list of clips and cuts fixed-length
pieces out of them, padding short clips by wrapping or with the floor value.
"""

from __future__ import annotations

import numpy as np

from ..data.records import Clip
from .cache import FeatureSet


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

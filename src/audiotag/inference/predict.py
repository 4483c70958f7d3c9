"""Clip-level predictions from models trained on fixed-length crops.

Every clip, whatever its length, is cut into sliding windows (``window`` frames, ``overlap``
between neighbours, the last one aligned to the clip's end); window probabilities are aggregated
per clip by mean or max. Test-time augmentation predicts ``views`` shifted copies as well and
blends them fastai-style: ``beta * clean + (1 - beta) * mean(views)``. Several fold models are
averaged arithmetically or geometrically. Under torchrun the processes share out the clips and
pool their sums.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import Config, PredictConfig
from ..engine import distributed
from ..engine.precision import autocast
from ..features.bank import ClipBank


def frames_per_second(config: Config) -> float:
    return config.audio.sample_rate / config.features.hop_length


def window_frames(config: Config) -> int:
    seconds = config.predict.window_seconds or config.train.crop_seconds
    return max(1, int(round(seconds * frames_per_second(config))))


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


@dataclass
class InferenceSpec:
    window: int  # frames
    hop: int  # frames between window starts
    aggregate: str = "mean"
    pad_mode: str = "wrap"
    views: int = 0
    beta: float = 0.4
    batch_size: int = 64
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: PredictConfig, *, window: int, pad_mode: str, seed: int, views: int | None = None):
        return cls(window=window, hop=max(1, int(round(window * (1 - cfg.overlap)))), aggregate=cfg.aggregate,
                   pad_mode=pad_mode, views=cfg.tta_views if views is None else views, beta=cfg.tta_beta,
                   batch_size=cfg.batch_size, seed=seed)


def inference_spec(config: Config, *, views: int | None = None) -> InferenceSpec:
    """How a run of ``config`` predicts: its windows, TTA views (``views`` overrides) and batch size."""
    return InferenceSpec.from_config(config.predict, window=window_frames(config), pad_mode=config.train.pad_mode,
                                     seed=config.seed, views=views)


def _view_pieces(bank: ClipBank, spec: InferenceSpec, view: int) -> list[tuple[int, int, int]]:
    """(clip, start, roll) for every window of one view; view 0 is the clean one."""
    rng = np.random.default_rng([spec.seed, view])
    pieces = []
    for i, n in enumerate(bank.lengths):
        offset = 0 if view == 0 else int(rng.integers(1, max(2, min(spec.hop, n))))
        roll = 0 if view == 0 else int(rng.integers(0, spec.window))
        pieces += [(i, start, roll) for start in window_starts(int(n), spec.window, spec.hop, offset=offset)]
    return pieces


@torch.inference_mode()
def _predict_view(model: nn.Module, bank: ClipBank, spec: InferenceSpec, view: int, *, device: torch.device,
                  precision: str) -> np.ndarray:
    pieces = _view_pieces(bank, spec, view)
    processes = distributed.world_size()
    if processes > 1:  # each process predicts every ``processes``-th clip; the sums are then shared
        pieces = [p for p in pieces if p[0] % processes == distributed.rank()]
    n_classes = None
    sums = counts = maxima = None
    for b in range(0, len(pieces), spec.batch_size):
        chunk = pieces[b : b + spec.batch_size]
        x = np.stack([np.roll(bank.piece(i, s, spec.window, pad_mode=spec.pad_mode), r, axis=-1) if r else
                      bank.piece(i, s, spec.window, pad_mode=spec.pad_mode) for i, s, r in chunk])
        with autocast(device, precision):
            logits = model(torch.from_numpy(x).to(device))["logits"]
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        if n_classes is None:
            n_classes = probs.shape[1]
            sums = np.zeros((len(bank), n_classes))
            counts = np.zeros(len(bank))
            maxima = np.zeros((len(bank), n_classes))
        idx = np.array([i for i, _, _ in chunk])
        np.add.at(sums, idx, probs)
        np.add.at(counts, idx, 1)
        np.maximum.at(maxima, idx, probs)
    if processes > 1:
        n_classes = distributed.broadcast(n_classes)  # rank 0 always has clip 0
        if sums is None:
            sums, counts, maxima = np.zeros((len(bank), n_classes)), np.zeros(len(bank)), np.zeros((len(bank), n_classes))
        # Every clip's windows were all predicted by one process: adding the others' zeros is exact.
        sums, counts, maxima = (distributed.all_reduce(sums), distributed.all_reduce(counts),
                                distributed.all_reduce(maxima, op="max"))
    if n_classes is None:
        raise ValueError("no clips to predict")
    return maxima if spec.aggregate == "max" else sums / counts[:, None]


def predict_views(model: nn.Module, bank: ClipBank, spec: InferenceSpec, *, device: torch.device,
                  precision: str = "fp32") -> np.ndarray:
    """Probabilities ``(1 + views, n_clips, n_classes)`` of one model: the clean view, then each TTA
    view. View v is the same whatever ``spec.views`` is, so a prefix is what fewer views predict."""
    model.eval()
    return np.stack([_predict_view(model, bank, spec, v, device=device, precision=precision)
                     for v in range(spec.views + 1)])


def blend_views(views: np.ndarray, beta: float, n_views: int | None = None) -> np.ndarray:
    """The fastai-style TTA blend of ``predict_views``' output using its first ``n_views`` TTA views
    (all by default), as float32 (what is saved, so predictions combined in memory and ones reloaded
    from disk agree to the bit)."""
    n_views = len(views) - 1 if n_views is None else n_views
    if n_views == 0:
        return views[0].astype(np.float32)
    return (beta * views[0] + (1 - beta) * np.mean(views[1 : n_views + 1], axis=0)).astype(np.float32)


def predict_model(model: nn.Module, bank: ClipBank, spec: InferenceSpec, *, device: torch.device,
                  precision: str = "fp32") -> np.ndarray:
    """Probabilities ``(n_clips, n_classes)`` of one model, TTA included, as float32."""
    return blend_views(predict_views(model, bank, spec, device=device, precision=precision), spec.beta)


def average_folds(predictions: list[np.ndarray], how: str = "arithmetic") -> np.ndarray:
    stack = np.stack(predictions)
    if how == "geometric":
        return np.exp(np.log(np.clip(stack, 1e-7, 1.0)).mean(axis=0))
    return stack.mean(axis=0)


def predict_models(models: list[nn.Module], bank: ClipBank, spec: InferenceSpec, *, device: torch.device,
                   precision: str = "fp32", fold_mean: str = "arithmetic") -> tuple[np.ndarray, float]:
    """Fold-averaged probabilities and the seconds spent per clip."""
    start = time.perf_counter()
    out = average_folds([predict_model(m, bank, spec, device=device, precision=precision) for m in models], fold_mean)
    return out, (time.perf_counter() - start) / max(len(bank), 1)

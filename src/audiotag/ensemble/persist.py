"""Fitted blenders saved as data: JSON for the settings, ``.npz`` (no pickle) for the numbers.

A saved blender loads without executing code and predicts what the fitted one did: means and
weights exactly, stacks by the same arithmetic scikit-learn does (a logistic regression's
``expit(x @ coef.T + b)``, an MLP's ReLU layers and logistic output).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.special import expit

from .. import fsutil
from ..errors import DataError
from .estimators import CaruanaBlend, LogisticStack, MeanBlend, MLPStack, WeightedBlend, as_stack, logit, weighted_mean

FORMAT = 1


def blender_state(name: str, blender) -> tuple[dict, dict[str, np.ndarray]]:
    """``(settings, arrays)`` describing the fitted ``blender`` registered as ``name``."""
    if isinstance(blender, MeanBlend):
        return {"name": name, "type": "mean", "kind": blender.kind}, {}
    if isinstance(blender, (WeightedBlend, CaruanaBlend)):
        return {"name": name, "type": "weighted"}, {"weights": np.asarray(blender.weights_, np.float64)}
    if isinstance(blender, LogisticStack):
        constant = [m if isinstance(m, float) else None for m in blender.models_]
        arrays = {}
        for c, model in enumerate(blender.models_):
            if not isinstance(model, float):
                arrays[f"coef_{c}"] = model.coef_.astype(np.float64)
                arrays[f"intercept_{c}"] = model.intercept_.astype(np.float64)
        return {"name": name, "type": "logistic_stack", "constant": constant}, arrays
    if isinstance(blender, MLPStack):
        mlp = blender.mlp_
        if mlp.activation != "relu" or mlp.out_activation_ != "logistic":
            raise ValueError(f"cannot save an MLP with {mlp.activation}/{mlp.out_activation_} activations")
        arrays = {f"coef_{i}": w for i, w in enumerate(mlp.coefs_)}
        arrays.update({f"intercept_{i}": b for i, b in enumerate(mlp.intercepts_)})
        return {"name": name, "type": "mlp_stack", "layers": len(mlp.coefs_)}, arrays
    raise ValueError(f"cannot save a blender of type {type(blender).__name__}")


class SavedBlender:
    """A blender read back from its settings and arrays; ``predict_proba`` as the fitted one."""

    def __init__(self, settings: dict, arrays: dict[str, np.ndarray]):
        self.settings, self.arrays = settings, arrays
        self.name = settings["name"]

    def predict_proba(self, X) -> np.ndarray:
        X = as_stack(X)
        kind, a = self.settings["type"], self.arrays
        if kind == "mean":
            return MeanBlend(self.settings["kind"]).predict_proba(X)
        if kind == "weighted":
            return weighted_mean(X, a["weights"])
        if kind == "logistic_stack":
            out = np.empty((X.shape[0], X.shape[2]))
            for c, constant in enumerate(self.settings["constant"]):
                if constant is not None:
                    out[:, c] = constant
                else:
                    out[:, c] = expit(logit(X[:, :, c]) @ a[f"coef_{c}"].T + a[f"intercept_{c}"])[:, 0]
            return out
        if kind == "mlp_stack":
            h = logit(X).reshape(len(X), -1)
            layers = self.settings["layers"]
            for i in range(layers):
                h = h @ a[f"coef_{i}"] + a[f"intercept_{i}"]
                h = np.maximum(h, 0) if i < layers - 1 else expit(h)
            return h
        raise DataError(f"unknown saved blender type {kind!r}", hint="re-run the ensemble with this audiotag")


def save_blender(folder: Path, name: str, blender, *, members: list[str]) -> None:
    """Write ``folder/blender.json`` and ``folder/blender.npz`` (the members in the order ``X`` has them)."""
    settings, arrays = blender_state(name, blender)
    with fsutil.atomic_path(folder / "blender.npz") as tmp:
        np.savez(tmp, **arrays)
    fsutil.write_text(folder / "blender.json", json.dumps({"format": FORMAT, **settings, "members": members}, indent=2))


def load_blender(folder: Path) -> tuple[SavedBlender, list[str]]:
    """The blender saved in ``folder`` and the members it blends, in order."""
    meta_path, arrays_path = folder / "blender.json", folder / "blender.npz"
    if not meta_path.is_file() or not arrays_path.is_file():
        raise DataError(f"{folder} has no saved blender (blender.json, blender.npz)",
                        hint="ensembles made before audiotag saved its blenders must be made again: "
                             "re-run `audiotag ensemble` or the pipeline's ensemble stage")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        with np.load(arrays_path, allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"the saved blender in {folder} cannot be read ({type(e).__name__})",
                        hint="re-run the ensemble") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{meta_path} has format {meta.get('format')}, this audiotag reads {FORMAT}",
                        hint="re-run the ensemble with this audiotag")
    return SavedBlender(meta, arrays), list(meta["members"])

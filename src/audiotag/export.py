"""Exporting trained models as ONNX, to run without audiotag or torch (onnxruntime, other languages).

Each fold model becomes ``fold_K.onnx``: input ``features`` float32 ``(batch, channels, bands,
frames)``, output ``probabilities`` ``(batch, labels)`` (the sigmoid of the logits); batch and
frames are dynamic. ``model.json`` beside them says how to make the features and use the outputs:
the front-end settings (the log-mel equals ``librosa.power_to_db(librosa.feature.melspectrogram(...))``
with the listed arguments to within 0.001 dB, stored as ``cache_dtype``), the window length and
hop in frames, how windows and folds are averaged, and the labels in output order. An ensemble
(or a pipeline whose final stage is one) exports each member into its own folder and copies the
fitted blender (``blender.json`` + ``blender.npz``), described in ``ensemble.json``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import torch

from . import fsutil
from .errors import AudiotagError, DataError
from .features.frontend import channel_names
from .inference.predict import inference_spec
from .inference.scorer import RunScorer
from .predictor import BlendScorer, load_predictor

OPSET = 17


class _Probabilities(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(features)["logits"])


def onnx_available() -> str | None:
    """None when ONNX export can run here, else what to install."""
    if importlib.util.find_spec("onnx") is None:
        return "ONNX export needs the onnx package: pip install -e '.[onnx]'"
    return None


def model_card(scorer: RunScorer) -> dict:
    """How to feed the exported fold models and read their outputs."""
    config = scorer.config
    a, f = config.audio, config.features
    spec = inference_spec(config)
    card = {
        "labels": list(scorer.labels),
        "input": {"name": "features", "layout": "batch, channels, bands, frames", "channels": channel_names(f),
                  "bands": f.n_mels, "dtype_in_cache": f.cache_dtype},
        "output": {"name": "probabilities", "layout": "batch, labels", "activation": "sigmoid"},
        "audio": dataclasses.asdict(a),
        "features": dataclasses.asdict(f),
        "windows": {"frames": spec.window, "hop_frames": spec.hop, "aggregate": spec.aggregate,
                    "pad_mode": spec.pad_mode, "tta_views": spec.views, "tta_beta": spec.beta},
        "folds": {"files": [f"fold_{k}.onnx" for k in scorer.run.finished_folds()],
                  "mean": config.predict.fold_mean},
    }
    if f.kind == "logmel":
        card["logmel_reference"] = {
            "call": "librosa.power_to_db(librosa.feature.melspectrogram(y=y, **melspectrogram), **power_to_db)",
            "melspectrogram": {"sr": a.sample_rate, "n_fft": f.n_fft, "hop_length": f.hop_length,
                               "win_length": f.win_length, "n_mels": f.n_mels, "fmin": f.fmin, "fmax": f.fmax,
                               "power": f.power, "htk": f.mel_scale == "htk",
                               "norm": None if f.mel_norm == "none" else "slaney", "center": True,
                               "pad_mode": "constant"},
            "power_to_db": {"ref": "numpy.max" if f.db_reference == "max" else 1.0, "amin": f.amin,
                            "top_db": f.top_db},
            "agreement": "within 0.001 dB of audiotag's front-end; channels other than logmel need audiotag",
        }
    return card


def export_run(scorer: RunScorer, out: Path) -> list[Path]:
    """``fold_K.onnx`` for each finished fold of the scorer's run, and ``model.json``."""
    written = []
    card = model_card(scorer)
    channels, bands = len(card["input"]["channels"]), card["input"]["bands"]
    example = torch.zeros(2, channels, bands, card["windows"]["frames"])
    for k, model in zip(scorer.run.finished_folds(), scorer.models):
        wrapper = _Probabilities(model.to("cpu")).eval()
        path = out / f"fold_{k}.onnx"
        # torch's TorchScript exporter on purpose: its newer one needs onnxscript, a dependency more
        with fsutil.atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, input_names=["features"],
                              output_names=["probabilities"], opset_version=OPSET,
                              dynamic_axes={"features": {0: "batch", 3: "frames"}, "probabilities": {0: "batch"}})
        wrapper.eval()  # the exporter hands the module back in training mode
        written.append(path)
    written.append(fsutil.write_text(out / "model.json", json.dumps(card, indent=2)))
    return written


def export(path: str | Path, *, out: str | Path, fmt: str = "onnx") -> list[Path]:
    """Export a run, an ensemble or a pipeline's final stage into ``out``; returns the files written."""
    if fmt != "onnx":
        raise AudiotagError(f"--format {fmt!r} is not supported", hint="use --format onnx")
    out = fsutil.check_writable(out, folder=True, option="--out")
    scorer = load_predictor(path, device="cpu").scorer  # what is wrong with the inputs is said first
    missing = onnx_available()
    if missing:
        raise AudiotagError(missing, hint="or use the models through audiotag.load_predictor")
    if isinstance(scorer, RunScorer):
        return export_run(scorer, out)
    if not isinstance(scorer, BlendScorer):
        raise DataError(f"{path}: nothing to export")
    written = []
    names = []
    for member, _ in scorer.members:
        name = member.run.dir.name
        names.append(name)
        written += export_run(member, out / name)
    for blender_file in ("blender.json", "blender.npz"):
        written.append(Path(shutil.copy2(scorer.folder / blender_file, out / blender_file)))
    written.append(fsutil.write_text(out / "ensemble.json", json.dumps({
        "members": names, "labels": list(scorer.labels),
        "blend": "blender.json/.npz: the fitted blend of the members' probabilities, stacked (clips, members, "
                 "labels) in the order of `members`; members whose predictions the blend was fitted on from "
                 "6-decimal CSVs are rounded to 6 decimals first",
        "rounded": [from_csv for _, from_csv in scorer.members]}, indent=2)))
    return written

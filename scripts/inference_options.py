"""Re-predict a run's test split with different `predict.*` settings and print each one's lwlrap.

    python scripts/inference_options.py --data DEV --cache-dir CACHE RUN [RUN ...]

Uses the run's fold models (best checkpoint, and the last one with the default settings). The
dataset needs test labels (a make_dataset.py build has them); use a development split, not the
benchmark's test set, to choose settings.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from audiotag.data.layouts import load_dataset
from audiotag.features.cache import build_features
from audiotag.metrics import lwlrap
from audiotag.pipeline.cv import inference_spec, load_fold_model
from audiotag.pipeline.inputs import ClipBank
from audiotag.pipeline.predict import predict_models
from audiotag.pipeline.runs import Run
from audiotag.pipeline.submit import finished_folds

VARIANTS = {"default": {}, "mean over windows": {"aggregate": "mean"}, "no TTA": {"tta_views": 0},
            "4 TTA views": {"tta_views": 4}, "beta 0": {"tta_beta": 0.0}, "75% overlap": {"overlap": 0.75},
            "5 s windows": {"window_seconds": 5.0}, "10 s windows": {"window_seconds": 10.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache-dir", required=True)
    args = parser.parse_args()
    ds = load_dataset(args.data)
    device = torch.device("cpu")
    for folder in args.runs:
        run = Run.open(folder)
        base = run.config
        features = build_features(ds, base, cache_dir=args.cache_dir, splits=("test",), progress=False)
        test = features.dataset.split("test")
        bank, truth = ClipBank.from_features(features, test), ds.label_matrix(test)
        for which in ("best", "last"):
            models = [load_fold_model(run, k, config=base, device=device, which=which) for k in finished_folds(run)]
            for name, change in VARIANTS.items():
                if which == "last" and change:
                    continue
                config = dataclasses.replace(base, predict=dataclasses.replace(base.predict, **change))
                probs, seconds = predict_models(models, bank, inference_spec(config), device=device, precision="fp32",
                                                fold_mean=base.predict.fold_mean)
                print(f"{folder}\t{which}\t{name}\ttest lwlrap {lwlrap(truth, probs):.4f}\t{seconds * 1000:.1f} ms/clip",
                      flush=True)


if __name__ == "__main__":
    main()

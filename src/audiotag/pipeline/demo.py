"""``audiotag demo``: the whole pipeline on the built-in synthetic dataset, no download needed."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from ..config import load_config
from ..data.check import check_dataset
from ..data.layouts import load_dataset
from ..demo import DemoSpec, make_demo_dataset
from ..report.inspect import inspect_dataset
from .runs import DataSpec
from .submit import predict_run, score_submission
from .train import train


def demo_config_path() -> Path:
    return Path(str(resources.files("audiotag") / "configs" / "demo.yaml"))


def run_demo(out: str | Path = "demo", *, seed: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Generate the demo data under ``out/data``, then check -> inspect -> train (K-fold) -> predict
    -> score. Everything it writes stays under ``out`` (the feature cache too)."""
    out = Path(out)
    t0 = time.perf_counter()
    data = make_demo_dataset(out / "data", DemoSpec(seed=seed), overwrite=overwrite)
    print(f"[1/5] demo dataset: {data}")
    ds = load_dataset(data)
    config = load_config(demo_config_path())
    cache = out / "cache"
    report = check_dataset(ds, cache_dir=cache, progress=progress, sample_rate=config.audio.sample_rate)
    print(f"[2/5] check: {report.summary()}")
    summary = inspect_dataset(ds, out / "inspect", config=config, progress=progress)
    print(f"[3/5] inspect: {out / 'inspect' / 'summary.md'}")
    run_dir = out / "run"
    if (run_dir / "run.json").exists():
        from .train import resume

        run = resume(run_dir, progress=progress)
    else:
        run = train(DataSpec(root=str(data)), config, out=run_dir, cache_dir=cache, progress=progress)
    scores = run.scores
    print(f"[4/5] train: {run.dir} (out-of-fold lwlrap {scores['oof_lwlrap']:.3f})")
    submission = out / "submission.csv"
    predicted = predict_run(run.dir, DataSpec(root=str(data)), out=submission, cache_dir=cache, progress=progress)
    score = score_submission(submission, data / "test_labels.csv")
    print(f"[5/5] predict: {submission} ({predicted['seconds_per_clip'] * 1000:.1f} ms per clip)")
    elapsed = time.perf_counter() - t0
    print(f"test lwlrap: {score['lwlrap']:.4f}")
    print(f"demo finished in {elapsed:.0f} s; outputs are under {out}/ (report: {out / 'inspect' / 'summary.md'}, "
          f"submission: {submission})")
    return {"data": data, "report": report, "summary": summary, "run": run, "test_lwlrap": score["lwlrap"],
            "elapsed_s": elapsed}

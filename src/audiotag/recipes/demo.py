"""``audiotag demo``: the whole pipeline on the built-in synthetic dataset, no download needed."""

from __future__ import annotations

import time
from pathlib import Path

from ..data.check import check_dataset
from ..data.layouts import load_dataset
from ..data.synthetic import DemoSpec, make_demo_dataset
from ..inference.score import score_submission
from ..predictor import load_predictor
from ..report.html import build_report
from ..report.inspect import inspect_dataset
from ..runs import DataSpec
from .pipeline import run_pipeline
from .recipe import bundled_recipe, load_recipe


def run_demo(out: str | Path = "demo", *, seed: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Generate the demo data under ``out/data``, then check -> inspect -> the demo pipeline recipe
    (two K-fold models and their blend) -> score -> HTML report. Everything it writes stays under
    ``out`` (the feature cache too); running it again reuses finished stages."""
    out = Path(out)
    t0 = time.perf_counter()
    data = make_demo_dataset(out / "data", DemoSpec(seed=seed), overwrite=overwrite)
    print(f"[1/7] demo dataset: {data}")
    ds = load_dataset(data)
    recipe = load_recipe(bundled_recipe("demo"))
    cache = out / "cache"
    report = check_dataset(ds, cache_dir=cache, progress=progress, sample_rate=16000)
    print(f"[2/7] check: {report.summary()}")
    summary = inspect_dataset(ds, out / "inspect", progress=progress)
    print(f"[3/7] inspect: {out / 'inspect' / 'summary.md'}")
    print(f"[4/7] pipeline: {', '.join(s.name for s in recipe.stages)} (recipe {recipe.source})")
    result = run_pipeline(recipe, DataSpec(root=str(data)), out=out / "pipeline", cache_dir=cache, progress=progress)
    submission = out / "submission.csv"
    submission.write_bytes(Path(result["submission"]).read_bytes())
    score = score_submission(submission, data / "test_labels.csv")
    stages = result["stages"]
    best_single = max((r for r in stages.values() if r["kind"] == "train"), key=lambda r: r["test_lwlrap"])
    print(f"[5/7] score: test lwlrap {score['lwlrap']:.4f} (best single stage {best_single['test_lwlrap']:.4f})")
    page = build_report(out / "pipeline", out / "report", progress=progress)
    print(f"[6/7] report: {page}")
    example = sorted((data / "test").glob("*.wav"))[0]
    predictor = load_predictor(out / "pipeline")
    tags = predictor.predict([example]).iloc[0].sort_values(ascending=False)[:3]
    print(f"[7/7] tag: {example.name} by the {predictor.kind}: "
          + ", ".join(f"{label} {p:.2f}" for label, p in tags.items()))
    elapsed = time.perf_counter() - t0
    print(f"test lwlrap: {score['lwlrap']:.4f}")
    print(f"demo finished in {elapsed:.0f} s; outputs are under {out}/ (report: {page}, submission: {submission})")
    return {"data": data, "report": report, "summary": summary, "pipeline": result, "test_lwlrap": score["lwlrap"],
            "elapsed_s": elapsed}

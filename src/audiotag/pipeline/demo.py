"""``audiotag demo``: the whole pipeline on the built-in synthetic dataset, no download needed."""

from __future__ import annotations

import time
from pathlib import Path

from ..config import Config
from ..data.check import check_dataset
from ..data.layouts import load_dataset
from ..demo import make_demo_dataset
from ..features.cache import build_features
from ..report.inspect import inspect_dataset


def run_demo(out: str | Path = "demo", *, seed: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Generate the demo data under ``out/data`` and run check -> inspect -> features on it.

    Everything it writes stays under ``out`` (the feature cache too), so deleting the folder undoes it.
    """
    from ..demo import DemoSpec

    out = Path(out)
    t0 = time.perf_counter()
    data = make_demo_dataset(out / "data", DemoSpec(seed=seed), overwrite=overwrite)
    print(f"[1/4] demo dataset: {data}")
    ds = load_dataset(data)
    config = Config()
    cache = out / "cache"
    report = check_dataset(ds, cache_dir=cache, progress=progress, sample_rate=config.audio.sample_rate)
    print(f"[2/4] check: {report.summary()}")
    summary = inspect_dataset(ds, out / "inspect", config=config, progress=progress)
    print(f"[3/4] inspect: {out / 'inspect' / 'summary.md'}")
    built = build_features(ds, config, cache_dir=cache, progress=progress)
    print(f"[4/4] features: {len(built.digests)} clips cached in {built.store.dir}")
    elapsed = time.perf_counter() - t0
    print(f"demo finished in {elapsed:.0f} s; outputs are under {out}/")
    return {"data": data, "report": report, "summary": summary, "features": built, "elapsed_s": elapsed}

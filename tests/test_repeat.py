"""The same command on the same machine repeats its result, also while other work loads the cores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import audiotag

from audiotag import cli

from test_train import TINY

BUSY = "import time\nend = time.time() + 120\nwhile time.time() < end:\n    pass\n"


def train(demo_data, cache, out):
    sets = [a for s in [*TINY, "train.precision=auto"] for a in ("--set", s)]
    assert cli.main(["train", "--data", str(demo_data), "--out", str(out), "--cache-dir", str(cache), "-q",
                     *sets]) == 0


def test_the_same_train_command_twice_gives_the_same_bytes_under_load(demo_data, tmp_path, monkeypatch):
    from audiotag.engine import precision

    timed = []

    def loaded_machine(model, x, device, which, steps=3):
        # the first timing finds bf16 faster; under load later, fp32 would look faster
        timed.append(which)
        faster = "bf16" if len(timed) <= 2 else "fp32"
        return 0.1 if which == faster else 1.0

    monkeypatch.setattr(precision, "_time_steps", loaded_machine)
    cache = tmp_path / "cache"
    train(demo_data, cache, tmp_path / "first")
    burners = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]  # both cores busy
    try:
        train(demo_data, cache, tmp_path / "second")
    finally:
        for p in burners:
            p.kill()
            p.wait()
    for name in ("oof_predictions.csv", "test_predictions.csv", "folds.csv"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    first, second = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("first", "second"))
    assert first["precision"] == second["precision"] == "bf16" and timed == ["fp32", "bf16"]  # timed once
    assert first["audiotag"] == audiotag.__version__
    if shutil.which("git") and (Path(audiotag.__file__).parents[2] / ".git").exists():
        assert len(first["git_commit"]) == 40 and first["git_modified"] in (True, False)

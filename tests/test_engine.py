import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from audiotag import fsutil
from audiotag.engine.checkpoint import load_checkpoint, save_checkpoint
from audiotag.engine.precision import resolve_device, resolve_precision
from audiotag.engine.trainer import lr_lambda
from audiotag.errors import AudiotagError


def test_one_cycle_schedule_shape():
    f = lr_lambda("onecycle", total_steps=100, warmup_fraction=0.2)
    values = [f(s) for s in range(101)]
    assert values[0] == pytest.approx(1 / 25) and values[20] == pytest.approx(1.0)
    assert max(values) == pytest.approx(1.0) and values[-1] < 1e-3
    assert all(a <= b for a, b in zip(values[:20], values[1:21]))  # warms up
    assert all(a >= b for a, b in zip(values[20:], values[21:]))  # then anneals
    assert lr_lambda("constant", total_steps=10, warmup_fraction=0.5)(7) == 1.0
    cos = lr_lambda("cosine", total_steps=10, warmup_fraction=0.0)
    assert cos(0) == pytest.approx(1.0) and cos(10) < 1e-3


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoints_round_trip_and_never_run_code(tmp_path):
    state = {"model": {"w": torch.ones(3)}, "epoch": 4, "history": [{"loss": 0.5}], "name": "x"}
    path = save_checkpoint(tmp_path / "a.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 4 and torch.equal(loaded["model"]["w"], torch.ones(3))
    assert not list(tmp_path.glob(".tmp-*"))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(AudiotagError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:50])
    with pytest.raises(AudiotagError, match="damaged"):
        load_checkpoint(tmp_path / "cut.pt")


def test_device_and_precision_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(AudiotagError, match="no CUDA device"):
            resolve_device("cuda")
        with pytest.raises(AudiotagError, match="fp16"):
            resolve_precision("fp16", device=torch.device("cpu"))
    assert resolve_precision("fp32", device=torch.device("cpu")) == "fp32"
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return {"logits": self.net(x)}

    wrapped = Wrap()
    wrapped(torch.zeros(2, 1, 8, 8))
    example = torch.randn(4, 1, 8, 8)
    before = torch.get_rng_state()
    choice = resolve_precision("auto", device=torch.device("cpu"), model=wrapped, example=example)
    assert choice in ("fp32", "bf16") and torch.equal(torch.get_rng_state(), before)


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    # a writer killed mid-write: its temporary file stays behind
    code = ("import sys; from pathlib import Path; from audiotag import fsutil; "
            "p = fsutil.temporary_path(Path(sys.argv[1])); p.write_bytes(b'partial'); print(p)")
    (tmp_path / "fold_0").mkdir()
    dead = subprocess.run([sys.executable, "-c", code, str(tmp_path / "fold_0" / "best.pt")], capture_output=True,
                          text=True, check=True)
    gone = Path(dead.stdout.strip())
    mine = fsutil.temporary_path(tmp_path / "last.pt")
    elsewhere = tmp_path / gone.name.replace("@", "@another_machine.")  # same pid, another host
    legacy = tmp_path / f"{fsutil.TMP_PREFIX}x-last.pt"
    for path in (mine, elsewhere, legacy):
        path.write_bytes(b"partial")
    assert gone.exists() and gone.name.startswith(fsutil.TMP_PREFIX)
    assert fsutil.remove_orphaned_temporaries(tmp_path) == [gone]
    assert not gone.exists() and mine.exists() and elsewhere.exists() and legacy.exists()


def test_auto_precision_is_timed_once_per_machine_and_model_then_remembered(tmp_path, monkeypatch):
    from audiotag.engine import precision as precision_module

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                           torch.nn.Flatten(), torch.nn.Linear(4, 3))

        def forward(self, x):
            return {"logits": self.net(x)}

    model, example, memory = Tiny(), torch.randn(4, 1, 8, 8), tmp_path / "precision.json"
    times = {"fp32": 1.0, "bf16": 0.5}
    timed = []

    def fake_time(model, x, device, precision, steps=3):
        timed.append(precision)
        return times[precision]

    monkeypatch.setattr(precision_module, "_time_steps", fake_time)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", device=cpu, model=model, example=example, memory=memory) == "bf16"
    assert timed == ["fp32", "bf16"] and memory.exists()
    times["bf16"] = 2.0  # a loaded machine would now time bf16 slower: the remembered choice holds
    assert resolve_precision("auto", device=cpu, model=model, example=example, memory=memory) == "bf16"
    assert len(timed) == 2
    # another input shape is another question, timed and remembered beside the first
    assert resolve_precision("auto", device=cpu, model=model, example=torch.randn(4, 1, 16, 8),
                             memory=memory) == "fp32"
    assert len(timed) == 4 and len(json.loads(memory.read_text())) == 2
    # an unreadable memory is timed again and written anew, never trusted
    memory.write_text("{not json")
    assert resolve_precision("auto", device=cpu, model=model, example=example, memory=memory) == "fp32"
    assert len(timed) == 6 and json.loads(memory.read_text())
    # without a memory every call times
    resolve_precision("auto", device=cpu, model=model, example=example)
    assert len(timed) == 8

"""The command's launcher (audiotag.launch): OpenMP threads that sleep soon after their work ends."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# CPU seconds spent across 100 short matrix products, each followed by 2 ms of idleness: idle
# threads that spin burn CPU in those pauses, threads that sleep do not.
SPIN_PROBE = r"""
import sys, time
if sys.argv[1] == "launcher":
    from audiotag.launch import share_cores_fairly
    assert share_cores_fairly()
import torch
torch.set_num_threads(2)
x = torch.randn(256, 256)
for _ in range(5):
    x @ x
start = time.process_time()
for _ in range(100):
    x @ x
    time.sleep(0.002)
print(time.process_time() - start)
"""

# Which GOMP_SPINCOUNT the process had at the moment it first imported torch.
ORDER_PROBE = r"""
import importlib.abc, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("GOMP_SPINCOUNT"))
sys.meta_path.insert(0, Watch())
sys.argv = ["audiotag", "config", "--help"]
from audiotag.launch import entry_point
try:
    entry_point()
except SystemExit:
    pass
print("torch imported with GOMP_SPINCOUNT", seen)
"""


def run(code: str, *args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-c", code, *args], env={**clean, **env}, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_importing_audiotag_loads_no_torch_so_the_launcher_is_in_time():
    loaded = run("import sys, audiotag, audiotag.launch; print('torch' in sys.modules, 'sklearn' in sys.modules)")
    assert loaded == "False False"


def test_the_command_sets_the_spin_count_before_torch_loads_and_respects_the_environment():
    assert run(ORDER_PROBE).endswith("['1000']")
    assert run(ORDER_PROBE, GOMP_SPINCOUNT="5").endswith("['5']")
    assert run(ORDER_PROBE, OMP_WAIT_POLICY="active").endswith("[None]")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["audiotag"] == "audiotag.launch:entry_point"
    assert "launch import entry_point" in (ROOT / "src/audiotag/__main__.py").read_text()


def test_it_does_nothing_once_torch_is_loaded(monkeypatch):
    from audiotag.launch import share_cores_fairly

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert "torch" in sys.modules and not share_cores_fairly() and "GOMP_SPINCOUNT" not in os.environ


@pytest.mark.skipif("OpenMP" not in torch.__config__.parallel_info(), reason="torch is not built with OpenMP")
def test_idle_threads_stop_burning_cpu():
    spinning = float(run(SPIN_PROBE, "plain", GOMP_SPINCOUNT="300000"))  # libgomp's own default
    launched = float(run(SPIN_PROBE, "launcher"))
    assert launched < 0.5 * spinning, (launched, spinning)  # measured here: 0.05 s against 0.25 s

"""MKL's kernel choice on AMD CPUs (audiotag/mkl.py). Each case runs in a fresh interpreter: the
switch only works before MKL's first call in a process."""

import json
import os
import subprocess
import sys
import pytest
import torch

from audiotag import mkl
from audiotag.config import AudioConfig, FeatureConfig
from audiotag.features.cache import feature_key

PROBE = """
import ctypes, json, sys
from pathlib import Path
import numpy as np
import torch
if "--mkl-first" in sys.argv:
    torch.ones(8, 8) @ torch.ones(8, 8)
import audiotag
from audiotag import mkl
if "--import-only" not in sys.argv:
    audiotag.use_fast_mkl()
lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
x = np.random.default_rng(0).standard_normal((300, 1024)).astype(np.float32)
a = np.random.default_rng(1).standard_normal((257, 300)).astype(np.float32)
spec = torch.fft.rfft(torch.from_numpy(x)).numpy()
product = (torch.from_numpy(a) @ torch.from_numpy(x)).numpy()
fft_error = float(np.abs(spec - np.fft.rfft(x.astype(np.float64))).max() / np.abs(spec).max())
matmul_error = float(np.abs(product - a.astype(np.float64) @ x).max() / np.abs(product).max())
print(json.dumps({"dispatch": mkl.dispatch(), "why": mkl.explanation(), "answer": lib.mkl_serv_intel_cpu_true(),
                  "fft_error": fft_error, "matmul_error": matmul_error}))
"""


def probe(*args: str, **env: str) -> dict:
    inherited = {k: v for k, v in os.environ.items() if k != mkl.ENV}  # a user's opt-out must not decide the test
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120,
                         env={**inherited, **env}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def amd_with_avx2() -> bool:
    vendor, flags = mkl._cpu_flags()
    return vendor == "AuthenticAMD" and "avx2" in flags and sys.platform.startswith("linux")


needs_mkl = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch without MKL")


@needs_mkl
def test_importing_audiotag_leaves_mkl_as_it_found_it():
    result = probe("--import-only")
    assert (result["dispatch"], result["why"]) == ("by-vendor", "not attempted")
    if amd_with_avx2():
        assert result["answer"] == 0  # MKL's own answer: not an Intel CPU


@needs_mkl
def test_the_cli_makes_mkl_choose_by_instruction_set(tmp_path):
    # `audiotag config` goes through cli.main, which opts in before anything computes
    code = ("import sys, json; from audiotag import cli, mkl; cli.main(['config']); "
            "print(json.dumps({'dispatch': mkl.dispatch(), 'why': mkl.explanation()}))")
    inherited = {k: v for k, v in os.environ.items() if k != mkl.ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=inherited,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["why"] != "not attempted"
    assert result["dispatch"] == ("by-isa" if amd_with_avx2() else "by-vendor")


@needs_mkl
def test_use_fast_mkl_chooses_by_instruction_set_on_amd_and_leaves_other_cpus_alone():
    result = probe()
    if amd_with_avx2():
        assert (result["dispatch"], result["answer"]) == ("by-isa", 1), result["why"]
    else:
        assert result["dispatch"] == "by-vendor" and result["why"].startswith(("CPU vendor", "the CPU has no"))
    # Whichever kernels MKL runs, they compute the transform and the product (float32 rounding).
    assert result["fft_error"] < 1e-5 and result["matmul_error"] < 1e-5


@needs_mkl
def test_the_switch_can_be_turned_off():
    result = probe(**{mkl.ENV: "off"})
    assert result["dispatch"] == "by-vendor" and result["why"] == f"{mkl.ENV}=off"
    if amd_with_avx2():
        assert result["answer"] == 0  # MKL's own answer: not an Intel CPU


@needs_mkl
@pytest.mark.skipif(not amd_with_avx2(), reason="only AMD CPUs are switched")
def test_mkl_used_before_import_keeps_its_choice():
    # Kernels chosen before the switch stay chosen: switching then would mix code paths.
    result = probe("--mkl-first")
    assert result == {**result, "dispatch": "by-vendor", "answer": 0}
    assert "already in use" in result["why"]


def test_the_feature_cache_keeps_the_two_code_paths_apart(monkeypatch):
    # They round differently in the last bits: entries of one are not served for the other.
    monkeypatch.setattr(mkl, "_state", "by-vendor")
    vendor_key = feature_key(AudioConfig(), FeatureConfig())
    monkeypatch.setattr(mkl, "_state", "by-isa")
    assert feature_key(AudioConfig(), FeatureConfig()) != vendor_key


@pytest.mark.parametrize("rows, n", [(1, 1024), (7, 1024), (376, 1024), (33, 512), (5, 2048)])
def test_in_place_real_ffts_give_torchs_bits(rows, n):
    """The front-end's FFTs go through MKL's DFTI in place; torch.fft.rfft calls the same MKL."""
    if mkl.real_fft_in_place._lib is None:
        pytest.skip("this torch build has no MKL DFTI to call")
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(rows))
    buffer = torch.zeros(rows, n + 2)
    buffer[:, :n] = x
    assert mkl.real_fft_in_place(buffer.numpy(), n)
    assert torch.equal(torch.view_as_complex(buffer.reshape(rows, n // 2 + 1, 2)), torch.fft.rfft(x))


def test_in_place_real_ffts_refuse_arrays_they_cannot_take():
    import numpy as np

    fft = mkl.real_fft_in_place
    good = np.zeros((4, 1026), dtype=np.float32)
    assert not fft(good, 1024 + 2)  # rows are not n + 2 long
    assert not fft(good.astype(np.float64), 1024)
    assert not fft(np.zeros((4, 2052), dtype=np.float32)[:, ::2], 1024)  # not contiguous
    assert not fft(np.zeros((0, 1026), dtype=np.float32), 1024)
    assert not fft(np.zeros((4, 1027), dtype=np.float32), 1025)  # odd lengths: not in this layout
    readonly = good.copy()
    readonly.flags.writeable = False
    assert not fft(readonly, 1024)


def test_the_front_end_gives_the_same_features_without_mkl(monkeypatch):
    """Where DFTI cannot be called, torch.fft.rfft computes the same bits."""
    import numpy as np

    from audiotag.features.cache import compute_features
    from audiotag.features.frontend import FrontEnd

    front = FrontEnd(AudioConfig(), FeatureConfig(channels=["logmel", "chroma"]))
    clips = [np.random.default_rng(i).uniform(-0.5, 0.5, n).astype(np.float32)
             for i, n in enumerate((100, 16000, 200000))]
    calls = []
    real = mkl.real_fft_in_place
    monkeypatch.setattr(mkl, "real_fft_in_place", lambda rows, n: calls.append(len(rows)) or real(rows, n))
    with_mkl = [compute_features(y, front) for y in clips]
    assert len(calls) == 1 + 1 + 2  # one chunk, one chunk, two chunks of 313 frames
    monkeypatch.setattr(mkl, "real_fft_in_place", lambda rows, n: False)
    for y, expected in zip(clips, with_mkl):
        np.testing.assert_array_equal(compute_features(y, front), expected)

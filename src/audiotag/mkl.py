"""Let torch's Intel MKL choose its kernels by instruction set on AMD processors too; and real
FFTs in place through the same MKL (:data:`real_fft_in_place`).

torch's CPU build links MKL into libtorch_cpu for FFTs and float32 matrix products. MKL picks
kernels by CPU vendor before instruction set: on a CPU that does not identify as "GenuineIntel" it
runs its generic code path, whatever the CPU supports: on AMD Zen 4 FFTs take twice as long
(BENCHMARKS.md has the figures).

MKL asks one function, ``mkl_serv_intel_cpu_true``, which keeps its answer in a static int that
starts at -1 ("not asked yet"). Setting that int to 1 before MKL's first call is the in-process
form of the widely used ``LD_PRELOAD`` shim that redefines the function to return 1: MKL then
selects kernels by the instruction sets it detects, as it does on Intel CPUs.

Importing audiotag changes nothing: :func:`unlock` (``audiotag.use_fast_mkl()``; the CLI calls
it first thing) does it, once, and only when everything is as expected: Linux on x86-64, an AMD CPU
with AVX2, the function exported by libtorch_cpu and starting with the instruction this reads the
int's address from, and the int still at -1. Once MKL has answered, some of its kernels are
already chosen, and changing the answer would mix code paths in one process, so an MKL call made
before :func:`unlock` leaves things as they are (correct, only slower). ``AUDIOTAG_MKL_AMD=off`` turns it off. :func:`dispatch` says which case holds; the feature
cache keys entries by it, since the two code paths round differently in the last bits.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from pathlib import Path

import numpy as np
import torch

ENV = "AUDIOTAG_MKL_AMD"
_state = "by-vendor"  # MKL's own choice: fast on Intel, generic on AMD
_reason = "not attempted"


def _cpu_flags() -> tuple[str, set[str]]:
    vendor, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
            if vendor and flags:
                break
    except OSError:
        pass
    return vendor, flags


def _answer_cell() -> ctypes.c_int | None:
    """The static int behind ``mkl_serv_intel_cpu_true``, or None when the function is not
    there or does not start with ``mov eax, [rip + disp32]; test eax, eax; js ...; ret``."""
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        address = ctypes.cast(lib.mkl_serv_intel_cpu_true, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    code = ctypes.string_at(address, 11)
    if code[:2] != b"\x8b\x05" or code[6:9] != b"\x85\xc0\x78" or code[10] != 0xC3:
        return None
    return ctypes.c_int.from_address(address + 6 + int.from_bytes(code[2:6], "little", signed=True))


def unlock() -> str:
    """Make MKL pick kernels by instruction set on this AMD CPU when it safely can; returns :func:`dispatch`."""
    global _state, _reason
    if _reason != "not attempted":
        return _state
    vendor, flags = _cpu_flags()
    if os.environ.get(ENV, "").lower() in ("0", "off", "false", "no"):
        _reason = f"{ENV}={os.environ[ENV]}"
    elif not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        _reason = "not Linux on x86-64"
    elif vendor != "AuthenticAMD":
        _reason = f"CPU vendor {vendor or 'unknown'}"
    elif "avx2" not in flags:
        _reason = "the CPU has no AVX2"
    elif not torch.backends.mkl.is_available():
        _reason = "torch is built without MKL"
    else:
        cell = _answer_cell()
        if cell is None:
            _reason = "this torch build's MKL is not the expected one"
        elif cell.value != -1:
            _reason = "MKL was already in use before audiotag.use_fast_mkl() was called"
        else:
            cell.value = 1
            _state, _reason = "by-isa", "AMD CPU: MKL chooses kernels by instruction set"
    return _state


def dispatch() -> str:
    """``"by-isa"`` when :func:`unlock` switched MKL to choosing by instruction set, else ``"by-vendor"``."""
    return _state


def explanation() -> str:
    return _reason


# ----------------------------------------------------------------------------- in-place real FFTs

# DFTI's configuration parameters and values (mkl_dfti.h).
_NUMBER_OF_TRANSFORMS, _CONJUGATE_EVEN_STORAGE, _PLACEMENT = 7, 10, 11
_INPUT_DISTANCE, _OUTPUT_DISTANCE, _THREAD_LIMIT = 14, 15, 27
_REAL, _COMPLEX_COMPLEX, _INPLACE = 33, 39, 43
_MAX_PLANS = 2048  # a front-end needs one per chunk length it meets (at most 384 for its default settings)


class _InPlaceRealFFT:
    """Forward real FFTs of float32 rows, in place, through the DFTI interface of torch's own MKL,
    with one committed descriptor ("plan") kept per (rows, length).

    ``torch.fft.rfft`` calls the same MKL and gives the same bits, but it writes a new array and
    creates and commits a descriptor at every call. In place, a chunk of frames and its spectrum
    share one buffer, half the memory traffic of the out-of-place transform (BENCHMARKS.md).
    """

    def __init__(self):
        self._lib = None
        self._plans: dict[tuple[int, int, int], ctypes.c_void_p] = {}
        self._lock = threading.Lock()
        if not torch.backends.mkl.is_available():
            return
        try:
            lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
            for name in ("DftiCreateDescriptor_s_1d", "DftiSetValue", "DftiCommitDescriptor", "DftiComputeForward"):
                getattr(lib, name).restype = ctypes.c_long
            lib.DftiCreateDescriptor_s_1d.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_long]
            lib.DftiCommitDescriptor.argtypes = [ctypes.c_void_p]
            lib.DftiComputeForward.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        except (OSError, AttributeError):
            return
        self._lib = lib

    def _plan(self, rows: int, n: int) -> ctypes.c_void_p | None:
        key = (os.getpid(), rows, n)  # a descriptor is not carried over a fork
        try:
            return self._plans[key]
        except KeyError:
            pass
        with self._lock:
            if key in self._plans or len(self._plans) >= _MAX_PLANS:
                return self._plans.get(key)
            lib, plan, long_ = self._lib, ctypes.c_void_p(), ctypes.c_long
            settings = ((_PLACEMENT, ctypes.c_int(_INPLACE)), (_CONJUGATE_EVEN_STORAGE, ctypes.c_int(_COMPLEX_COMPLEX)),
                        (_NUMBER_OF_TRANSFORMS, long_(rows)), (_INPUT_DISTANCE, long_(n + 2)),
                        (_OUTPUT_DISTANCE, long_(n // 2 + 1)), (_THREAD_LIMIT, long_(1)))
            ok = (lib.DftiCreateDescriptor_s_1d(ctypes.byref(plan), _REAL, n) == 0
                  and all(lib.DftiSetValue(plan, name, value) == 0 for name, value in settings)
                  and lib.DftiCommitDescriptor(plan) == 0)
            self._plans[key] = plan if ok else None  # a shape MKL refused is not tried again
            return self._plans[key]

    def __call__(self, rows: np.ndarray, n: int) -> bool:
        """Transform ``rows`` ``[shape=(R, n + 2)]``, C-contiguous float32, whose first ``n`` values of
        each row are the input: afterwards each row holds the ``n // 2 + 1`` complex values (real,
        imaginary, ...). False, with ``rows`` untouched, where this cannot be done here."""
        if (self._lib is None or rows.ndim != 2 or rows.shape[1] != n + 2 or n % 2 or rows.dtype != np.float32
                or not rows.flags.c_contiguous or not rows.flags.writeable or not len(rows)):
            return False
        plan = self._plan(len(rows), n)
        return plan is not None and self._lib.DftiComputeForward(plan, rows.ctypes.data) == 0


real_fft_in_place = _InPlaceRealFFT()

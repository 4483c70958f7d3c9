"""Let torch's Intel MKL choose its kernels by instruction set on AMD processors too.

torch's CPU build links MKL into libtorch_cpu for FFTs and float32 matrix products. MKL picks
kernels by CPU vendor before instruction set: on a CPU that does not identify as "GenuineIntel" it
runs its generic code path, whatever the CPU supports. Measured on an AMD EPYC Zen 4 (AVX-512): a
470 x 1024 rfft 0.36 ms on the generic path, 0.18 ms on the AVX-512 one; a 1024 x 1024 float32
matrix product 74 against 105 GFLOP/s on one core; a clip's log-mel 30% less time.

MKL asks one function, ``mkl_serv_intel_cpu_true``, which keeps its answer in a static int that
starts at -1 ("not asked yet"). Setting that int to 1 before MKL's first call is the in-process
form of the widely used ``LD_PRELOAD`` shim that redefines the function to return 1: MKL then
selects kernels by the instruction sets it detects, as it does on Intel CPUs.

It is done once, when ``audiotag`` is imported, and only when everything is as expected: Linux on
x86-64, an AMD CPU with AVX2, the function exported by libtorch_cpu and starting with the
instruction this reads the int's address from, and the int still at -1. Once MKL has answered,
some of its kernels are already chosen, and changing the answer would mix code paths in one
process, so an MKL call made before ``import audiotag`` leaves things as they are (correct, only
slower). ``AUDIOTAG_MKL_AMD=off`` turns it off. :func:`dispatch` says which case holds; the feature
cache keys entries by it, since the two code paths round differently in the last bits.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

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
            _reason = "MKL was already in use before audiotag was imported"
        else:
            cell.value = 1
            _state, _reason = "by-isa", "AMD CPU: MKL chooses kernels by instruction set"
    return _state


def dispatch() -> str:
    """``"by-isa"`` when :func:`unlock` switched MKL to choosing by instruction set, else ``"by-vendor"``."""
    return _state


def explanation() -> str:
    return _reason

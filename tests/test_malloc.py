"""In-process allocator settings (audiotag.malloc), read back from glibc's own accounting."""

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json
import numpy as np
from audiotag import malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def where_a_large_block_goes():
    before = libc.mallinfo2()
    a = np.ones(64 * 2**20 // 8)  # 64 MiB, above glibc's sliding mmap threshold
    mapped = libc.mallinfo2().hblkhd - before.hblkhd  # bytes in blocks served by their own mmap
    del a
    return {"mapped": mapped, "kept_free": libc.mallinfo2().fordblks - before.fordblks}  # freed bytes kept

plain = where_a_large_block_goes()
changed = malloc.keep_freed_memory()
print(json.dumps({"plain": plain, "tuned": where_a_large_block_goes(), "changed": changed}))
"""

MIB = 2**20


def probe(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "AUDIOTAG_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_large_blocks_come_from_the_heap_and_stay_there_once_freed():
    try:
        result = probe()
    except subprocess.CalledProcessError as e:
        pytest.skip(f"no glibc >= 2.33 mallinfo2 to read back: {e.stderr.strip().splitlines()[-1]}")
    assert result["changed"]
    assert result["plain"]["mapped"] >= 64 * MIB and result["plain"]["kept_free"] < 4 * MIB  # mapped, given back
    assert result["tuned"]["mapped"] < MIB and result["tuned"]["kept_free"] > 60 * MIB  # heap, kept for reuse
    opted_out = probe(AUDIOTAG_MALLOC="default")
    assert not opted_out["changed"] and opted_out["tuned"]["mapped"] >= 64 * MIB
    from_environment = probe(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="100000000000")
    assert not from_environment["changed"] and from_environment["plain"]["mapped"] < MIB

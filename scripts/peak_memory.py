"""Run a command and report the peak resident memory of its whole process tree (workers included).

    python scripts/peak_memory.py -- audiotag features .bench/small --cache-dir /tmp/c -q

GNU time's "maximum resident set size" covers one process; audiotag's feature workers and the
trainer run side by side, so this samples the sum over the tree from /proc every 0.1 s (Linux).
It reports the total and, separately, the anonymous part: cache entries are read memory-mapped,
and their pages count towards RSS while the kernel can drop them at any time, so the anonymous
part is the memory a run really holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def tree_rss_bytes(root: int) -> tuple[int, int]:
    """(resident, anonymous resident) bytes of ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, tuple[int, int]] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            statm = (entry / "statm").read_text().split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        resident, shared = int(statm[1]) * page, int(statm[2]) * page  # shared = file-backed pages
        rss[pid] = (resident, resident - shared)
    total, anon, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        resident, private = rss.get(pid, (0, 0))
        total, anon = total + resident, anon + private
        stack += children.get(pid, [])
    return total, anon


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print(__doc__)
        return 2
    start = time.perf_counter()
    proc = subprocess.Popen(args)
    peak = peak_anon = 0
    while proc.poll() is None:
        total, anon = tree_rss_bytes(proc.pid)
        peak, peak_anon = max(peak, total), max(peak_anon, anon)
        time.sleep(0.1)
    print(f"peak RSS of the process tree: {peak / 2**20:.0f} MiB (anonymous: {peak_anon / 2**20:.0f} MiB); "
          f"wall {time.perf_counter() - start:.1f} s; exit {proc.returncode}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

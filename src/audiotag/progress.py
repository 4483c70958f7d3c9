"""Progress bars for long stages: live on a terminal, an occasional plain line in a log file."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True):
    interactive = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=interactive,
                mininterval=0.5 if interactive else 30.0, ascii=not interactive, file=sys.stderr)

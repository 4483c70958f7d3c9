"""The ``audiotag`` command's first step: a setting that only takes effect before torch is imported.

torch's CPU build runs its threads with GNU OpenMP, whose idle threads spin for up to 300,000
iterations before they sleep. On a machine with another busy process that spinning takes the core
the other threads wait for: on 2 cores a busy loop cut training from ~314 to ~103 clips/s, and two
training runs at once fell to 31-66 clips/s each. With a spin count of 1,000 the same cases train
at ~159 and ~155+155 clips/s, a fair share, while a run alone keeps its speed (BENCHMARKS.md).
The wait policy changes no result: threads split the work the same way whether they spin or sleep.

libgomp reads ``GOMP_SPINCOUNT`` once, when torch loads it, so the command sets it before its
first import of torch; an explicit ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` in the environment
wins. Importing audiotag changes nothing: Python API users set the variable themselves.
"""

from __future__ import annotations

import os
import sys

SPIN_COUNT = "1000"


def share_cores_fairly() -> bool:
    """Make OpenMP's idle threads sleep soon; False when the environment already chose, or when
    torch (and with it libgomp) is already loaded and the setting would have no effect."""
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT  # inherited by fold jobs and feature workers too
    return True


def entry_point() -> None:
    """Console script and ``python -m audiotag``."""
    share_cores_fairly()
    from .cli import main

    sys.exit(main())

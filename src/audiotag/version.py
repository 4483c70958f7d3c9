"""The package version, and the code a run was made with (recorded in every run.json)."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def code_version() -> dict:
    """``{"audiotag": version}``, plus the git commit (and whether files differ from it) when the
    package is imported from a git checkout."""
    out = {"audiotag": __version__}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "."],
                                    capture_output=True, text=True, timeout=10)
            out["git_modified"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass  # no git on this machine: the version alone
    return out

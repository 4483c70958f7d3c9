"""Complete, safely loadable checkpoints.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, saved atomically and
loaded with ``torch.load(weights_only=True)``: loading one can never execute code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import fsutil
from ..errors import AudiotagError


def save_checkpoint(path: str | Path, state: dict) -> Path:
    with fsutil.atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AudiotagError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged or unsafe files
        raise AudiotagError(f"checkpoint {path} cannot be loaded safely: {type(e).__name__}: {str(e).splitlines()[0]}",
                            hint="it is damaged or was not written by audiotag; delete it to retrain that fold") from None


def rng_state() -> dict:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])

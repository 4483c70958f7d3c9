"""Several processes training one model: PyTorch's own distributed runtime, started by ``torchrun``.

``torchrun --nproc_per_node N -m audiotag train ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
:func:`setup` joins the process group (NCCL on CUDA, gloo on CPUs). The design keeps one process's
semantics: ``train.batch_size`` is the *global* batch, every rank draws the same batch and the same
augmentation and trains on its share of it, and the loss is weighted so the averaged gradient is the
gradient of the whole batch's mean loss. Results therefore do not depend on the number of processes
except through batch-norm statistics (each rank normalises its own share) and summation order.

Only rank 0 writes (run folder, checkpoints, predictions, logs); the others compute the same things
and meet it at barriers before reading what it wrote.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import torch
import torch.distributed as dist

from .. import fsutil
from ..errors import AudiotagError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True when this process was started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> None:
    """Join the process group when launched with several processes; idempotent; a no-op otherwise."""
    if not launched() or dist.is_initialized():
        return
    if not dist.is_available():
        raise AudiotagError("this PyTorch build has no torch.distributed", hint="run without torchrun")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # Rank 0 may spend hours building the feature cache while the others wait at a barrier.
    minutes = float(os.environ.get("AUDIOTAG_DIST_TIMEOUT_MIN", "720"))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes))
    if rank() != 0:
        fsutil.set_writes_enabled(False)


def local_device(device: torch.device) -> torch.device:
    """Each process's own GPU under torchrun; unchanged on CPUs."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def teardown(*, failed: bool = False) -> None:
    """Leave the process group; after a failure without waiting for the others (they may never come)."""
    if dist.is_available() and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()
        fsutil.set_writes_enabled(True)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(array: np.ndarray, op: str = "sum") -> np.ndarray:
    """Element-wise sum or max of a numpy array over ranks (float64 kept exact for sums of zeros)."""
    if world_size() == 1:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array)).to(_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.cpu().numpy()


def mean(value: float) -> float:
    return float(all_reduce(np.array([value], dtype=np.float64))[0] / world_size())


def shard(n: int) -> slice:
    """This rank's contiguous share of ``n`` items (shares differ in size by at most one)."""
    w, r = world_size(), rank()
    return slice(r * n // w, (r + 1) * n // w)


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank, so evaluation and
    checkpoints see one model."""
    if world_size() == 1:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)
